using LdmLab.Interop;

namespace LdmLab.Cli;

static class ParityCommand
{
    public static int Run(string[] dirs)
    {
        if (dirs.Length == 0) throw new CliArgumentException("parity: give at least one fixture folder (e.g. ../shared/fixtures/schedulers)");
        int passed = 0, failed = 0;
        foreach (var dir in dirs)
        {
            IReadOnlyList<ParityCheck> checks;
            try { checks = Parity.CheckFolder(dir); }
            catch (Exception e) when (e is ParityFormatException or NotSupportedException or Data.DatasetException or IOException or ArgumentException or FormatException or InvalidOperationException or KeyNotFoundException)
            {
                Console.WriteLine($"FAIL {dir} {e.Message}");
                failed++;
                continue;
            }
            foreach (var c in checks)
            {
                Console.WriteLine(c);
                if (c.Passed) passed++; else failed++;
            }
        }
        Console.WriteLine($"{passed} passed, {failed} failed");
        return failed == 0 ? 0 : 1;
    }
}
