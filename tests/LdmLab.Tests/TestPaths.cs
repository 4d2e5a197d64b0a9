using LdmLab.Runtime;

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

    /// <summary>Runs <paramref name="f"/> with the run settings changed (<see cref="RunSettings.Apply"/>), then
    /// restores them.</summary>
    public static T WithSettings<T>(Func<RunSettings, RunSettings> change, Func<T> f) => change(Lab.Settings).Apply(f);
}
