namespace LdmLab.Tests;

/// <summary>
/// Lines are at most 120 characters (.editorconfig). Files written before the rule keep a budget of long lines that
/// may only shrink (long-lines-budget.txt: "count path" per line); every other file has none.
/// </summary>
public class CodeStyleTests
{
    const int MaxLength = 120;
    static readonly string[] Roots = ["lib", "tests"];

    static IEnumerable<string> SourceFiles() => Roots
        .SelectMany(r => Directory.EnumerateFiles(Path.Combine(TestPaths.RepoRoot, r), "*.cs",
            SearchOption.AllDirectories))
        .Where(f => !f.Contains($"{Path.DirectorySeparatorChar}obj{Path.DirectorySeparatorChar}")
                    && !f.Contains($"{Path.DirectorySeparatorChar}bin{Path.DirectorySeparatorChar}"));

    static int LongLines(string file) => File.ReadLines(file).Count(l => l.Length > MaxLength);

    [Fact]
    public void Long_lines_stay_within_each_files_budget()
    {
        var budget = File.ReadLines(Path.Combine(TestPaths.RepoRoot, "tests", "LdmLab.Tests", "long-lines-budget.txt"))
            .Where(l => l.Trim().Length > 0 && !l.StartsWith('#'))
            .Select(l => l.Split(' ', 2))
            .ToDictionary(p => p[1].Trim(), p => int.Parse(p[0]));
        var over = new List<string>();
        int total = 0;
        foreach (var file in SourceFiles())
        {
            var relative = Path.GetRelativePath(TestPaths.RepoRoot, file).Replace('\\', '/');
            int n = LongLines(file);
            total += n;
            int allowed = budget.GetValueOrDefault(relative);
            if (n > allowed)
                over.Add($"{relative}: {n} lines over {MaxLength} characters (budget {allowed}); wrap the new ones");
        }
        Assert.True(over.Count == 0, string.Join("\n", over));
        Assert.True(total <= budget.Values.Sum(), "the budget's total must not grow");
    }
}
