using System.Net;
using System.Reflection;
using System.Runtime.Loader;
using System.Text.Json;

namespace LdmLab.Viz;

/// <summary>One line/point series of a chart.</summary>
public sealed record Series(string Name, double[] X, double[] Y, string[]? Text = null)
{
    public static Series Of(string name, IEnumerable<double> y) { var ys = y.ToArray(); return new(name, Enumerable.Range(0, ys.Length).Select(i => (double)i).ToArray(), ys); }
}

/// <summary>A horizontal reference line (e.g. the −20 dB SNR target).</summary>
public sealed record HLine(double Y, string? Label = null);

/// <summary>How plotly.js reaches the page: inline once per process (default, works offline), inline in every chart, or a CDN tag.</summary>
public enum PlotlyJsMode { OncePerProcess, EveryChart, Cdn }

/// <summary>A rendered Plotly.NET chart; notebooks display it inline as text/html.</summary>
[TypeFormatterSource(typeof(HtmlFormatterSource), PreferredMimeTypes = ["text/html"])]
public sealed class ChartHtml(string chartHtml, string title) : IHtmlContent
{
    /// <summary>The chart's own div + script, without plotly.js.</summary>
    public string ChartOnly { get; } = chartHtml;
    public string Title { get; } = title;
    public string ToHtml() => Charts.WithLibrary(ChartOnly);
    public override string ToString() => $"[chart: {Title}]";
}

/// <summary>
/// Plotly.NET charts behind a BCL-typed facade. Plotly.NET (and FSharp.Core 10.1) are loaded from the plotly/
/// folder beside LdmLab.dll into a private AssemblyLoadContext, so the host's own FSharp.Core is never replaced.
/// </summary>
public static class Charts
{
    public const string LibraryScriptMarker = "data-ldmlab-plotlyjs";
    public static PlotlyJsMode JsMode { get; set; } = PlotlyJsMode.OncePerProcess;
    static int _libraryEmitted;
    static readonly Lazy<(Func<string, string> render, Func<string> js)> Host = new(LoadHost);
    static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.CamelCase };

    public static ChartHtml Lines(string title, IEnumerable<Series> series, string? xTitle = null, string? yTitle = null,
        bool logY = false, IEnumerable<HLine>? hlines = null, string mode = "lines", bool logX = false) =>
        Render(new
        {
            kind = mode, title, xTitle, yTitle, logY, logX, series = Wire(series),
            hLines = hlines?.Select(h => new { y = h.Y, label = h.Label }).ToArray() ?? [],
        }, title);

    public static ChartHtml Scatter(string title, IEnumerable<Series> series, string? xTitle = null, string? yTitle = null) =>
        Lines(title, series, xTitle, yTitle, mode: "markers");

    public static ChartHtml Histogram(string title, IEnumerable<(string name, double[] values)> samples, string? xTitle = null) =>
        Render(new { kind = "histogram", title, xTitle, yTitle = "count", series = samples.Select(s => new { name = s.name, x = s.values, y = Array.Empty<double>() }).ToArray() }, title);

    public static ChartHtml Bars(string title, string[] keys, double[] values, string? yTitle = null) =>
        Render(new { kind = "bars", title, yTitle, series = new[] { new { name = title, x = Array.Empty<double>(), y = values, text = keys } } }, title);

    public static ChartHtml Heatmap(string title, double[,] z, string[]? xLabels = null, string[]? yLabels = null, string? xTitle = null, string? yTitle = null)
    {
        var rows = Enumerable.Range(0, z.GetLength(0)).Select(r => Enumerable.Range(0, z.GetLength(1)).Select(c => z[r, c]).ToArray()).ToArray();
        return Render(new { kind = "heatmap", title, xTitle, yTitle, z = rows, xLabels, yLabels, width = 560, height = 500 }, title);
    }

    /// <summary>plotly.js (2.28, bundled in Plotly.NET) for pages that hold several charts.</summary>
    public static string PlotlyJs() => Host.Value.js();

    /// <summary>A script tag that defines window.Plotly even under require.js (classic Jupyter).</summary>
    public static string LibraryScript() =>
        $"<script {LibraryScriptMarker}=\"1\">var __ldmDefine = window.define; window.define = undefined;</script>" +
        $"<script {LibraryScriptMarker}=\"1\">{Host.Value.js()}</script>" +
        $"<script {LibraryScriptMarker}=\"1\">window.define = __ldmDefine;</script>";

    internal static string WithLibrary(string chartOnly) => JsMode switch
    {
        PlotlyJsMode.EveryChart => LibraryScript() + chartOnly,
        PlotlyJsMode.Cdn => $"<script {LibraryScriptMarker}=\"1\" src=\"https://cdn.plot.ly/plotly-2.28.0.min.js\"></script>" + chartOnly,
        _ => Interlocked.Exchange(ref _libraryEmitted, 1) == 0 ? LibraryScript() + chartOnly : chartOnly,
    };

    static object[] Wire(IEnumerable<Series> series) =>
        series.Select(s => (object)new { name = s.Name, x = s.X, y = s.Y, text = s.Text }).ToArray();

    static ChartHtml Render(object spec, string title)
    {
        var json = JsonSerializer.Serialize(spec, Json);
        return new ChartHtml(Host.Value.render(json), WebUtility.HtmlEncode(title));
    }

    static (Func<string, string>, Func<string>) LoadHost()
    {
        var dir = Path.Combine(Path.GetDirectoryName(typeof(Charts).Assembly.Location)!, "plotly");
        var entryDll = Path.Combine(dir, "LdmLab.PlotlyHost.dll");
        if (!File.Exists(entryDll))
            throw new FileNotFoundException($"Plotly host not found at {entryDll}; build LdmLab (it stages lib/LdmLab.PlotlyHost into plotly/).", entryDll);
        var alc = new PlotlyLoadContext(dir);
        var entry = alc.LoadFromAssemblyPath(entryDll).GetType("LdmLab.PlotlyHost.Entry", throwOnError: true)!;
        var render = entry.GetMethod("Render", BindingFlags.Public | BindingFlags.Static)!.CreateDelegate<Func<string, string>>();
        var js = entry.GetMethod("PlotlyJs", BindingFlags.Public | BindingFlags.Static)!.CreateDelegate<Func<string>>();
        var cachedJs = new Lazy<string>(js);
        return (render, () => cachedJs.Value);
    }

    // Resolves every assembly that exists in plotly/ from there (FSharp.Core 10.1 included); the rest from the host.
    sealed class PlotlyLoadContext(string dir) : AssemblyLoadContext("ldmlab-plotly")
    {
        protected override Assembly? Load(AssemblyName name)
        {
            var path = Path.Combine(dir, name.Name + ".dll");
            return File.Exists(path) ? LoadFromAssemblyPath(path) : null;
        }
    }
}
