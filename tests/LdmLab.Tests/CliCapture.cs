using LdmLab.Cli;

namespace LdmLab.Tests;

/// <summary>Runs the <c>ldmlab</c> command line in process, as a user's shell would, capturing what it prints.
/// </summary>
static class CliCapture
{
    public static int Run(out string stdout, out string stderr, params string[] args)
    {
        var (o, e) = (new StringWriter(), new StringWriter());
        var (savedOut, savedError) = (Console.Out, Console.Error);
        Console.SetOut(o);
        Console.SetError(e);
        try { return Commands.Run(args); }
        finally
        {
            Console.SetOut(savedOut);
            Console.SetError(savedError);
            (stdout, stderr) = (o.ToString(), e.ToString());
        }
    }
}
