using System.Text.Json.Nodes;
using LdmLab.Cli;

namespace LdmLab.Tests;

/// <summary>Executes notebooks in the real .NET Interactive kernel (dotnet-interactive 1.0.712001 via Jupyter).</summary>
[Trait("Category", "Slow")]
public class NotebookTests
{
    static string NotebooksDir => Path.Combine(TestPaths.RepoRoot, "notebooks");

    public static TheoryData<string> Notebooks()
    {
        var data = new TheoryData<string>();
        foreach (var f in Directory.GetFiles(Path.Combine(TestPaths.RepoRoot, "notebooks"), "*.ipynb").Order()) data.Add(Path.GetFileName(f));
        return data;
    }

    static NotebookRunner Runner(string dir, string outDir) =>
        new() { NotebooksDir = dir, OutDir = outDir, Profile = "quick", CellTimeoutSeconds = 1800, Log = _ => { } };

    [Theory]
    [MemberData(nameof(Notebooks))]
    public void Notebook_runs_without_errors_in_the_real_kernel(string name)
    {
        EnsureReleaseLibrary();
        var outDir = Path.Combine(TestPaths.RepoRoot, "out", "test-notebooks");
        var runner = Runner(NotebooksDir, outDir);
        var result = runner.Run(Path.Combine(NotebooksDir, name), runner.WriteKernelSpec());
        Assert.True(result.Ok, result.ToString());
        // the memory budget of ./lab run (README, contributing): no kernel's peak above 4 GB in the quick profile
        if (result.PeakBytes is long peak)
            Assert.True(peak <= 4_000_000_000, $"{name}: the kernel's peak resident memory {peak / 1e9:F2} GB is over 4 GB");
        var outputs = JsonNode.Parse(File.ReadAllText(result.OutputPath!))!["cells"]!.AsArray()
            .SelectMany(c => c!["outputs"]?.AsArray() ?? []).ToList();
        Assert.NotEmpty(outputs);
        // what a reader sees: no compiler warnings or kernel bootstrap in the saved outputs, every picture captioned,
        // every training loop's final state written
        string Everything(JsonNode? o) => o?.ToJsonString() ?? "";
        Assert.DoesNotContain(outputs, o => System.Text.RegularExpressions.Regex.IsMatch(Everything(o), @"warning CS\d{4}"));
        Assert.DoesNotContain(outputs, o => Everything(o).Contains("dotnet-interactive-this-cell"));
        foreach (var png in outputs.Where(o => o?["data"]?["image/png"] is not null))
        {
            var html = png!["data"]!["text/html"] switch
            {
                JsonArray lines => string.Concat(lines.Select(l => (string?)l)),
                var v => (string?)v ?? "",
            };
            var caption = System.Text.RegularExpressions.Regex.Match(html, "<figcaption>(.+?)</figcaption>",
                System.Text.RegularExpressions.RegexOptions.Singleline);
            Assert.True(caption.Success && caption.Groups[1].Value.Trim().Length > 3, $"{name}: an image without a caption");
        }
        var source = File.ReadAllText(Path.Combine(NotebooksDir, name));
        // a loop that ran wrote its final state; a model that did not train says where it came from
        if (source.Contains("new Progress("))
            Assert.Contains(outputs, o => (string?)o?["output_type"] == "stream" && o?["text"]?.ToString() is { } t
                                          && ((t.Contains("done: ") && t.Contains("(100 %)")) || t.Contains("loaded checkpoint data/checkpoints/")));
        var cells = JsonNode.Parse(File.ReadAllText(result.OutputPath!))!["cells"]!.AsArray();
        string StreamText(JsonNode? cell) => string.Concat((cell?["outputs"]?.AsArray() ?? [])
            .Where(o => (string?)o?["output_type"] == "stream").Select(o => o?["text"] switch
            {
                JsonArray lines => string.Concat(lines.Select(l => (string?)l)),
                var v => (string?)v ?? "",
            }));
        if (name is "01-pixel-vs-latent.ipynb" or "02-autoencoders.ipynb" or "03-latent-statistics-and-snr.ipynb"
            or "04-noise-schedules.ipynb" or "09-diagnostics.ipynb"
            or "05-conditioning-and-cross-attention.ipynb" or "06-end-to-end-sampling.ipynb" or "06b-samplers.ipynb"
            or "06c-quality-modes.ipynb" or "08-fine-tuning.ipynb" or "10-compression-and-deployment.ipynb"
            or "11-resolution.ipynb" or "12-words-to-places.ipynb" or "13-serving.ipynb")
        {
            // each ends with a takeaway computed from its own numbers: the last code cell prints them as bullets
            var takeaway = StreamText(cells.Last(c => (string?)c?["cell_type"] == "code"));
            Assert.True(takeaway.Split('•').Length >= 4, $"{name}: the takeaway cell printed no computed points: {takeaway}");
        }
        // 04's claims (every schedule's converged row, SD's schedule ≥ 80 % intended-class accuracy, the ranking) are
        // tested where they are computed: ScheduleStudyTests
        // 09's claim (the shipped denoiser at w = 3, DDIM 25 steps, 200 samples: ≥ 80 % intended-class accuracy) is
        // 04's: ScheduleStudyTests.The_shipped_scaled_linear_denoiser_draws_the_class_it_is_asked_for
        // 05's claims (the nouns' maps point into their half above chance, both items often right, a layout map by
        // concatenation places items, FiLM cannot say where) are tested where they are computed:
        // ShippedConditioningClaimsTests; its takeaways on hand-made results: ConditioningStudyTests
        // 06's and 06c's claims (guided prompts draw the asked class, a negative prompt removes what it names, the draft
        // mode is recognisable and the modes' cost falls from draft to quality) are tested where they are computed:
        // ShippedSamplingClaimsTests; their takeaways on hand-made tables: SamplingStudyTests
        // 02's claims — the quick table within 2 dB of the full one, the best photo model ≥ 2 dB above a flat crop of
        // each crop's mean colour, the judge on originals — are tested where they are computed:
        // ShippedJudgeAndAutoencoderTests
        // 07's numbers are tested where they are computed: SD 1.5's and the SD family's counts against diffusers'
        // manifests (UNetTests, AutoencoderTests, TextPathTests, SdFamilyTests), the tiny pipeline (PipelineTests)
        if (name == "07-stable-diffusion-architecture.ipynb")
            Assert.Contains(outputs, o => o?["data"]?["image/png"] is not null);
        if (name == "00-tour.ipynb")
        {
            // the chapter map names every section and exercise of the chapter
            var sections = new[] { "10.1.1", "10.1.2", "10.1.3", "10.1.4", "10.1.5", "10.1.6", "Ex. 10.1", "10.2.1", "10.2.2",
                "10.2.3", "10.2.4", "10.2.5", "10.2.6", "Ex. 10.2", "10.3.1", "10.3.2", "10.3.3", "10.3.4", "10.3.5", "10.3.6",
                "Ex. 10.3", "10.4.1–10.4.4", "10.4.5", "10.4.6", "10.4.7", "10.4.8", "10.4.9", "10.4.10", "Ex. 10.4",
                "10.5.1–10.5.6", "comprehensive exercise" };
            Assert.All(sections, id => Assert.Contains($"| {id} |", source));
            Assert.Contains(outputs, o => o?["data"]?["image/png"] is not null);
            Assert.Contains(outputs, o => o?["data"]?["text/html"]?.ToString().Contains("Plotly.newPlot") == true);
            Assert.Contains(outputs, o => o?["text"]?.ToString() is { } t && t.Contains("oneDNN (mkldnn) for CPU: ") && t.Contains("self-check"));
        }
    }

    [Fact]
    public void A_failing_cell_fails_the_run_naming_notebook_cell_and_message()
    {
        var dir = TestPaths.TempDir("failing-nb");
        var cells = new JsonArray(
            Cell("ok", "Console.WriteLine(\"fine\");"),
            Cell("compile", "int y = \"not an int\";"),
            Cell("throws", "throw new InvalidOperationException(\"boom\");"));
        var nb = new JsonObject
        {
            ["cells"] = cells,
            ["metadata"] = new JsonObject { ["kernelspec"] = new JsonObject { ["name"] = ".net-csharp", ["language"] = "C#", ["display_name"] = ".NET (C#)" } },
            ["nbformat"] = 4, ["nbformat_minor"] = 5,
        };
        File.WriteAllText(Path.Combine(dir, "broken.ipynb"), nb.ToJsonString());

        // through the CLI, as the README's commands run it: exit code 1 and the cells named
        var outDir = Path.Combine(dir, "out");
        var stdout = new StringWriter();
        var saved = Console.Out;
        Console.SetOut(stdout);
        int rc;
        try { rc = Commands.Run(["notebooks", "--dir", dir, "--out", outDir]); }
        finally { Console.SetOut(saved); }
        var text = stdout.ToString();
        Assert.Equal(1, rc);
        Assert.Contains("FAIL broken.ipynb", text);
        Assert.Contains("cell 1 (id compile)", text);
        Assert.Contains("CS0029", text);               // the real compiler message, from the cell's stderr
        Assert.Contains("cell 2 (id throws)", text);
        Assert.Contains("boom", text);
        Assert.Contains("0 passed, 1 failed", text);
        Assert.True(File.Exists(Path.Combine(outDir, "index.html")));
    }

    [Fact]
    public void Unknown_notebook_and_option_are_clear_errors()
    {
        Assert.Equal(2, Commands.Run(["notebooks", "--only", "nope"]));
        Assert.Equal(2, Commands.Run(["notebooks", "--bogus"]));
        Assert.Equal(2, Commands.Run(["notebooks", "--timeout", "x"]));
    }

    static JsonObject Cell(string id, string source) => new()
    {
        ["cell_type"] = "code", ["id"] = id, ["metadata"] = new JsonObject(), ["execution_count"] = null,
        ["outputs"] = new JsonArray(), ["source"] = source,
    };

    static readonly Lazy<bool> ReleaseBuilt = new(() =>
    {
        // Notebooks reference lib/LdmLab/bin/Release; when these tests run from another configuration, build it.
        var cfg = typeof(NotebookTests).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyConfigurationAttribute), false)
            .OfType<System.Reflection.AssemblyConfigurationAttribute>().FirstOrDefault()?.Configuration;
        if (cfg == "Release") return true;
        var p = System.Diagnostics.Process.Start(new System.Diagnostics.ProcessStartInfo("dotnet",
            ["build", Path.Combine(TestPaths.RepoRoot, "lib", "LdmLab", "LdmLab.csproj"), "-c", "Release", "-v", "q"]))!;
        p.WaitForExit();
        return p.ExitCode == 0 ? true : throw new InvalidOperationException("dotnet build lib/LdmLab -c Release failed");
    });

    static void EnsureReleaseLibrary() => _ = ReleaseBuilt.Value;
}
