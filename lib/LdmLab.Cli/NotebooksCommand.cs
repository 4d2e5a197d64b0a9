namespace LdmLab.Cli;

static class NotebooksCommand
{
    public static int Run(string[] args)
    {
        string dir = "notebooks", outDir = "out", profile = Environment.GetEnvironmentVariable("LDMLAB_PROFILE") ?? "quick";
        int timeout = 900;
        List<string>? only = null;
        for (int i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new CliArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--dir": dir = Next(); break;
                case "--out": outDir = Next(); break;
                case "--profile": profile = Next(); break;
                case "--only": (only ??= []).AddRange(Next().Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)); break;
                case "--timeout":
                    var t = Next();
                    if (!int.TryParse(t, out timeout) || timeout <= 0) throw new CliArgumentException($"--timeout {t}: expected a positive number of seconds");
                    break;
                default: throw new CliArgumentException($"notebooks: unknown option '{args[i]}'");
            }
        }
        LdmLab.Runtime.Lab.ParseProfile(profile);
        var runner = new NotebookRunner { NotebooksDir = dir, OutDir = outDir, Profile = profile, CellTimeoutSeconds = timeout };
        var results = runner.RunAll(runner.Discover(only));
        var index = runner.WriteReport(results);
        int failed = results.Count(r => !r.Ok);
        Console.WriteLine($"report: {index}");
        Console.WriteLine($"{results.Count - failed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }
}
