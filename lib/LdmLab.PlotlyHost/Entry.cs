using System.Text.Json;
using Plotly.NET;
using Plotly.NET.LayoutObjects;
using CS = Plotly.NET.CSharp;

namespace LdmLab.PlotlyHost;

/// <summary>Entry point called through reflection from the facade: JSON spec in, chart HTML (no plotly.js) out.</summary>
public static class Entry
{
    static readonly JsonSerializerOptions Json = new() { PropertyNameCaseInsensitive = true };

    public static string Render(string specJson)
    {
        var spec = JsonSerializer.Deserialize<ChartSpec>(specJson, Json) ?? throw new ArgumentException("empty chart spec");
        GenericChart chart = spec.Kind switch
        {
            "heatmap" => Heatmap(spec),
            "histogram" => Combine(spec.Series.Select(s => CS.Chart.Histogram<double, double, string>(X: s.X, Name: s.Name ?? "", Opacity: spec.Series.Count > 1 ? 0.6 : 1.0))),
            "bars" => Combine(spec.Series.Select(s => CS.Chart.Column<double, string, string>(values: s.Y, Keys: s.Text ?? s.X.Select(v => v.ToString("G4")).ToArray(), Name: s.Name ?? ""))),
            _ => Combine(spec.Series.Select(s => CS.Chart.Scatter<double, double, string>(
                    x: s.X, y: s.Y, mode: spec.Kind switch { "markers" => StyleParam.Mode.Markers, "lines+markers" => StyleParam.Mode.Lines_Markers, _ => StyleParam.Mode.Lines },
                    Name: s.Name ?? "", MultiText: s.Text is null ? default : new CS.Optional<IEnumerable<string>>(s.Text, true)))),
        };
        foreach (var h in spec.HLines)
        {
            double x0 = spec.Series.SelectMany(s => s.X).DefaultIfEmpty(0).Min(), x1 = spec.Series.SelectMany(s => s.X).DefaultIfEmpty(1).Max();
            chart = Plotly.NET.Chart.combine(new[] { chart, CS.Chart.Line<double, double, string>(x: new[] { x0, x1 }, y: new[] { h.Y, h.Y }, Name: h.Label ?? $"y = {h.Y}",
                LineDash: StyleParam.DrawingStyle.Dash, LineColor: Color.fromString("black")) });
        }
        chart = CS.GenericChartExtensions.WithSize(chart, spec.Width, spec.Height);
        if (spec.XTitle is not null || spec.LogX)
            chart = CS.GenericChartExtensions.WithXAxisStyle<double, double, string>(chart,
                TitleText: spec.XTitle ?? "",
                AxisType: spec.LogX ? StyleParam.AxisType.Log : StyleParam.AxisType.Linear);
        if (spec.YTitle is not null || spec.LogY)
            chart = CS.GenericChartExtensions.WithYAxisStyle<double, double, string>(chart, TitleText: spec.YTitle ?? "",
                AxisType: spec.LogY ? StyleParam.AxisType.Log : StyleParam.AxisType.Linear);
        // Title and bar mode through the layout's dynamic members (the F# helpers take every option positionally).
        var layout = GenericChart.getLayout(chart);
        if (spec.Title is not null) { var t = new Title(); t.SetProperty("text", spec.Title); layout.SetProperty("title", t); }
        if (spec.Kind == "histogram" && spec.Series.Count > 1) layout.SetProperty("barmode", "overlay");
        return GenericChart.toChartHTML(GenericChart.setLayout(layout, chart));
    }

    /// <summary>The plotly.js bundled inside Plotly.NET (included once per page by the facade).</summary>
    public static string PlotlyJs()
    {
        var asm = typeof(GenericChart).Assembly;
        var name = asm.GetManifestResourceNames().First(n => n.EndsWith(".min.js", StringComparison.Ordinal));
        using var s = asm.GetManifestResourceStream(name)!;
        using var r = new StreamReader(s);
        return r.ReadToEnd();
    }

    static GenericChart Combine(IEnumerable<GenericChart> charts) => Plotly.NET.Chart.combine(charts.ToArray());

    static GenericChart Heatmap(ChartSpec spec)
    {
        var z = spec.Z ?? throw new ArgumentException("heatmap needs Z");
        int rows = z.Length, cols = rows > 0 ? z[0].Length : 0;
        var x = spec.XLabels ?? Enumerable.Range(0, cols).Select(i => i.ToString()).ToArray();
        var y = spec.YLabels ?? Enumerable.Range(0, rows).Select(i => i.ToString()).ToArray();
        return CS.Chart.Heatmap<double, string, string, string>(zData: z, X: x, Y: y,
            ColorScale: StyleParam.Colorscale.NewCustom(new[] { Tuple.Create(0.0, Color.fromString("#0d0887")), Tuple.Create(0.5, Color.fromString("#cc4778")), Tuple.Create(1.0, Color.fromString("#f0f921")) }),
            ReverseYAxis: true);
    }
}
