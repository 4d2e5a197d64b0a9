using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using LdmLab.Data;
using LdmLab.Viz;

namespace LdmLab.Cli;

/// <summary>A cell that produced an error output: its 0-based index, id, error name and message, and its stderr.</summary>
public sealed record CellError(int Index, string? CellId, string Name, string Message, string Stderr)
{
    public override string ToString() =>
        $"cell {Index}{(CellId is null ? "" : $" (id {CellId})")}: {Name}: {Message}{(Stderr.Trim().Length > 0 ? "\n      " + Stderr.Trim().Replace("\n", "\n      ") : "")}";
}

/// <param name="PeakBytes">The kernel's peak resident memory (<see cref="PeakMemory"/>), null off Linux.</param>
public sealed record NotebookResult(string Notebook, string? OutputPath, TimeSpan Elapsed, IReadOnlyList<CellError> Errors,
    string? RunnerError, long? PeakBytes = null)
{
    public bool Ok => RunnerError is null && Errors.Count == 0;
    string Measured => $"{Elapsed.TotalSeconds:F0} s{(PeakBytes is long b ? $", peak {b / 1e9:F1} GB" : "")}";
    public override string ToString() => Ok
        ? $"PASS {Notebook} ({Measured})"
        : $"FAIL {Notebook} ({Measured})\n  " + (RunnerError ?? string.Join("\n  ", Errors));
}

/// <summary>
/// Executes .ipynb files headless in the real .NET Interactive kernel through Jupyter's nbconvert, one notebook per
/// kernel, with a repo-local kernelspec (--http-local-only). Every error output of any cell fails the notebook;
/// the report names the notebook, the cell and the message (for compile errors, the cell's stderr).
/// </summary>
public sealed partial class NotebookRunner
{
    public required string NotebooksDir { get; init; }
    public required string OutDir { get; init; }
    public string Profile { get; init; } = "quick";
    public int CellTimeoutSeconds { get; init; } = 900;
    public Action<string> Log { get; init; } = Console.WriteLine;

    public static string? FindRepoRoot(string start) => Runtime.Lab.FindRepoRoot(start);

    /// <summary>The dotnet-interactive executable: LDMLAB_DOTNET_INTERACTIVE, the repo's .tools, or PATH.</summary>
    public string FindKernelTool()
    {
        if (Environment.GetEnvironmentVariable("LDMLAB_DOTNET_INTERACTIVE") is { Length: > 0 } env)
            return File.Exists(env) ? env : throw new CliArgumentException($"LDMLAB_DOTNET_INTERACTIVE={env} does not exist.");
        var root = FindRepoRoot(NotebooksDir) ?? FindRepoRoot(Directory.GetCurrentDirectory());
        var local = root is null ? null : Path.Combine(root, ".tools", "dotnet-interactive", "dotnet-interactive");
        if (local is not null && File.Exists(local)) return local;
        var onPath = (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Select(p => Path.Combine(p, "dotnet-interactive")).FirstOrDefault(File.Exists);
        return onPath ?? throw new CliArgumentException(
            "dotnet-interactive 1.0.712001 not found: run ./lab setup (installs it into .tools/), or set LDMLAB_DOTNET_INTERACTIVE.");
    }

    /// <summary>Writes the kernelspec under OutDir/.jupyter and returns the JUPYTER_PATH to use.</summary>
    public string WriteKernelSpec()
    {
        var tool = FindKernelTool();
        var jupyterPath = Path.Combine(Path.GetFullPath(OutDir), ".jupyter");
        var spec = new JsonObject
        {
            ["argv"] = new JsonArray(tool, "jupyter", "--default-kernel", "csharp", "--http-local-only", "{connection_file}"),
            ["display_name"] = ".NET (C#)",
            ["language"] = "C#",
        };
        AtomicFile.WriteAllText(Path.Combine(jupyterPath, "kernels", ".net-csharp", "kernel.json"), spec.ToJsonString());
        return jupyterPath;
    }

    public IReadOnlyList<string> Discover(IEnumerable<string>? only = null)
    {
        if (!Directory.Exists(NotebooksDir)) throw new CliArgumentException($"--dir {NotebooksDir}: folder not found.");
        var all = Directory.GetFiles(NotebooksDir, "*.ipynb").Order(StringComparer.Ordinal).ToList();
        if (only is null) return all;
        var wanted = only.Select(o => o.EndsWith(".ipynb") ? o : o + ".ipynb").ToList();
        var missing = wanted.Where(w => all.All(a => Path.GetFileName(a) != w)).ToList();
        if (missing.Count > 0) throw new CliArgumentException($"--only: no such notebook(s) in {NotebooksDir}: {string.Join(", ", missing)}");
        return all.Where(a => wanted.Contains(Path.GetFileName(a))).ToList();
    }

    public IReadOnlyList<NotebookResult> RunAll(IReadOnlyList<string> notebooks)
    {
        Directory.CreateDirectory(OutDir);
        var jupyterPath = WriteKernelSpec();
        var results = new List<NotebookResult>();
        foreach (var nb in notebooks)
        {
            Log($"executing {Path.GetFileName(nb)} (profile {Profile}) ...");
            var r = Run(nb, jupyterPath);
            Log(r.ToString());
            results.Add(r);
        }
        return results;
    }

    public NotebookResult Run(string notebook, string jupyterPath)
    {
        var sw = Stopwatch.StartNew();
        var name = Path.GetFileName(notebook);
        var staging = Path.Combine(Path.GetFullPath(OutDir), ".staging");
        Directory.CreateDirectory(staging);
        var psi = new ProcessStartInfo("jupyter")
        {
            WorkingDirectory = Path.GetDirectoryName(Path.GetFullPath(notebook))!,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        // --allow-errors keeps the executed notebook (with each cell's stderr); errors are then judged here, cell by cell.
        foreach (var a in new[] { "nbconvert", "--to", "notebook", "--execute", "--allow-errors",
                     "--ExecutePreprocessor.kernel_name=.net-csharp", $"--ExecutePreprocessor.timeout={CellTimeoutSeconds}",
                     "--output-dir", staging, Path.GetFullPath(notebook) })
            psi.ArgumentList.Add(a);
        psi.Environment["JUPYTER_PATH"] = jupyterPath;
        psi.Environment["LDMLAB_PROFILE"] = Profile;
        psi.Environment["DOTNET_INTERACTIVE_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        Process p;
        try { p = Process.Start(psi)!; }
        catch (System.ComponentModel.Win32Exception e)
        {
            return new NotebookResult(name, null, sw.Elapsed, [], $"cannot start jupyter ({e.Message}): apt-get install jupyter-nbconvert jupyter-client, or run ./lab setup");
        }
        using var memory = new PeakMemory(p.Id);
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEndAsync();
        p.WaitForExit();
        var peak = memory.PeakBytes;
        var staged = Path.Combine(staging, name);
        if (p.ExitCode != 0 || !File.Exists(staged))
        {
            var tail = string.Join("\n", stderr.Result.Split('\n').Where(l => !l.StartsWith("info:") && !l.StartsWith("      ")).TakeLast(15));
            return new NotebookResult(name, null, sw.Elapsed, [], $"nbconvert exited with {p.ExitCode}:\n{tail}", peak);
        }
        var final = Path.Combine(Path.GetFullPath(OutDir), name);
        var executed = File.ReadAllText(staged);
        var errors = FindErrors(executed);
        AtomicFile.WriteAllText(final, CleanOutputs(executed));
        File.Delete(staged);
        return new NotebookResult(name, final, sw.Elapsed, errors, null, peak);
    }

    /// <summary>
    /// What a reader of the saved notebook should not see, removed after errors were judged: the kernel's probe script
    /// (a hidden div and a script the kernel sends with the first output, for its HTTP frontend) and its "Loading
    /// extensions from …" notes, compiler warnings in
    /// stderr (TorchSharp's CS1701 binding notes, CS8632 nullable notes; errors stay), and live progress bars, which a
    /// saved notebook keeps in their first state (Jupyter's executor does not apply the kernel's display updates;
    /// <see cref="Viz.Progress"/> writes the final state as a line of its own).
    /// </summary>
    public static string CleanOutputs(string ipynbJson)
    {
        var nb = JsonNode.Parse(ipynbJson) ?? throw new InvalidDataException("empty notebook");
        foreach (var cell in nb["cells"]?.AsArray() ?? [])
        {
            if (cell?["outputs"] is not JsonArray outputs) continue;
            var kept = new JsonArray();
            foreach (var o in outputs.ToList())
            {
                var html = Text(o?["data"]?["text/html"]);
                if (html.Contains("dotnet-interactive-this-cell") || html.Contains("<progress ")) continue;
                if (Text(o?["data"]?["text/plain"]).StartsWith("Loading extensions from ")) continue;   // kernel chatter
                if ((string?)o?["output_type"] == "stream" && (string?)o?["name"] == "stderr")
                {
                    var lines = Text(o!["text"]).Split('\n').Where(l => !CompilerWarning().IsMatch(l)).ToList();
                    var text = string.Join("\n", lines);
                    if (text.Trim().Length == 0) continue;
                    o["text"] = text;
                }
                outputs.Remove(o);
                kept.Add(o);
            }
            cell["outputs"] = kept;
        }
        return nb.ToJsonString(new System.Text.Json.JsonSerializerOptions
        {
            WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        });
    }

    [GeneratedRegex(@"^\s*(\(\d+,\d+\): )?warning CS\d{4}:")]
    private static partial Regex CompilerWarning();

    /// <summary>Every cell with an error output, with the text the cell wrote to stderr.</summary>
    public static IReadOnlyList<CellError> FindErrors(string ipynbJson)
    {
        var nb = JsonNode.Parse(ipynbJson) ?? throw new InvalidDataException("empty notebook");
        var errors = new List<CellError>();
        var cells = nb["cells"]?.AsArray() ?? [];
        for (int i = 0; i < cells.Count; i++)
        {
            var outputs = cells[i]?["outputs"]?.AsArray();
            if (outputs is null) continue;
            var err = outputs.FirstOrDefault(o => (string?)o?["output_type"] == "error");
            if (err is null) continue;
            var stderrText = string.Concat(outputs.Where(o => (string?)o?["output_type"] == "stream" && (string?)o?["name"] == "stderr")
                .Select(o => Text(o!["text"])));
            var message = ((string?)err["evalue"] ?? "").Split('\n')[0];
            errors.Add(new CellError(i, (string?)cells[i]?["id"], (string?)err["ename"] ?? "Error", message, stderrText));
        }
        return errors;
    }

    static string Text(JsonNode? n) => n switch
    {
        JsonArray a => string.Concat(a.Select(x => (string?)x)),
        null => "",
        _ => (string?)n ?? "",
    };

    /// <summary>Writes OutDir/index.html: every figure (PNG images, Plotly charts) of every executed notebook.</summary>
    public string WriteReport(IReadOnlyList<NotebookResult> results)
    {
        var sb = new StringBuilder();
        sb.Append("<!doctype html><html><head><meta charset=\"utf-8\"><title>LdmLab notebooks</title>")
          .Append("<style>body{font-family:sans-serif;max-width:1100px;margin:auto} .fail{color:#b00} figure{display:inline-block;margin:8px;vertical-align:top} pre{background:#f4f4f4;padding:6px;overflow:auto}</style>");
        bool anyChart = false;
        var body = new StringBuilder();
        body.Append($"<h1>LdmLab notebooks — profile {WebUtility.HtmlEncode(Profile)}</h1><ul>");
        foreach (var r in results)
            body.Append($"<li><a href=\"#{Anchor(r.Notebook)}\">{WebUtility.HtmlEncode(r.Notebook)}</a> — {(r.Ok ? "ok" : "<span class=fail>FAILED</span>")}, {r.Elapsed.TotalSeconds:F0} s" +
                        (r.PeakBytes is long b ? $", peak {b / 1e9:F1} GB" : "") + "</li>");
        body.Append("</ul>");
        foreach (var r in results)
        {
            body.Append($"<h2 id=\"{Anchor(r.Notebook)}\">{WebUtility.HtmlEncode(r.Notebook)}</h2>");
            if (!r.Ok) body.Append($"<pre class=fail>{WebUtility.HtmlEncode(r.ToString())}</pre>");
            if (r.OutputPath is null) continue;
            body.Append($"<p><a href=\"{WebUtility.HtmlEncode(Path.GetFileName(r.OutputPath))}\">executed notebook</a></p>");
            var cells = JsonNode.Parse(File.ReadAllText(r.OutputPath))?["cells"]?.AsArray() ?? [];
            int figure = 0;
            foreach (var (cell, idx) in cells.Select((c, i) => (c, i)))
                foreach (var o in cell?["outputs"]?.AsArray() ?? [])
                {
                    var data = o?["data"];
                    if (data is null) continue;
                    if (data["image/png"] is { } png)
                    {
                        figure++;
                        var caption = Regex.Match(Text(data["text/html"]), "<figcaption>(.*?)</figcaption>", RegexOptions.Singleline);
                        body.Append($"<figure><img src=\"data:image/png;base64,{Text(png).Replace("\n", "")}\"/><figcaption>" +
                                    (caption.Success ? caption.Groups[1].Value + " " : "") + $"(cell {idx}, figure {figure})</figcaption></figure>");
                    }
                    else if (data["text/html"] is { } html && Text(html).Contains("Plotly.newPlot"))
                    {
                        figure++;
                        anyChart = true;
                        body.Append($"<figure>{StripLibrary(Text(html))}<figcaption>cell {idx}, figure {figure}</figcaption></figure>");
                    }
                }
        }
        if (anyChart)
        {
            AtomicFile.WriteAllText(Path.Combine(OutDir, "plotly.min.js"), Charts.PlotlyJs());
            sb.Append("<script src=\"plotly.min.js\"></script>");
        }
        sb.Append("</head><body>").Append(body).Append("</body></html>");
        var index = Path.Combine(OutDir, "index.html");
        AtomicFile.WriteAllText(index, sb.ToString());
        return index;
    }

    static string Anchor(string name) => Regex.Replace(name, "[^A-Za-z0-9]", "-");

    static string StripLibrary(string html) =>
        Regex.Replace(html, $"<script {Charts.LibraryScriptMarker}=\"1\"[^>]*>.*?</script>", "", RegexOptions.Singleline);
}
