namespace LdmLab.Tests;

static class TestPaths
{
    public static string RepoRoot { get; } = LdmLab.Cli.NotebookRunner.FindRepoRoot(AppContext.BaseDirectory)
        ?? throw new InvalidOperationException("tests must run inside the LdmLab checkout (LdmLab.sln not found above " + AppContext.BaseDirectory + ")");

    public static string TempDir(string name)
    {
        var d = Path.Combine(Path.GetTempPath(), "ldmlab-tests", name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>Runs <paramref name="f"/> with an environment variable set, then restores it.</summary>
    public static T WithEnvironment<T>(string name, string? value, Func<T> f)
    {
        var saved = Environment.GetEnvironmentVariable(name);
        Environment.SetEnvironmentVariable(name, value);
        try { return f(); }
        finally { Environment.SetEnvironmentVariable(name, saved); }
    }
}
