using System.Runtime.Loader;
using LdmLab.Viz;

namespace LdmLab.Tests;

public class ChartsTests
{
    [Fact]
    public void Plotly_charts_render_from_a_private_load_context()
    {
        var chart = Charts.Lines("SNR", [new Series("linear", [0, 1, 2], [10, 0, -10])], "t", "dB", hlines: [new HLine(-20, "target")]);
        Assert.Contains("Plotly.newPlot", chart.ChartOnly);
        Assert.Contains("\"linear\"", chart.ChartOnly);
        Assert.Contains("target", chart.ChartOnly);
        var heat = Charts.Heatmap("h", new double[,] { { 1, 2 }, { 3, 4 } }, ["a", "b"], ["c", "d"]);
        Assert.Contains("heatmap", heat.ChartOnly);
        Assert.Contains("histogram", Charts.Histogram("hist", [("x", [1.0, 2, 2, 3])]).ChartOnly);
        // a log step axis (training steps 20, 40, 1,000 on one chart): the x axis, and only it, is logarithmic
        var steps = Charts.Lines("FD", [new Series("cosine", [20, 40, 1000], [30, 20, 2])], "steps", "FD", logX: true);
        Assert.Matches("\"xaxis\":\\{(\\{[^{}]*\\}|[^{}])*\"type\":\"log\"", steps.ChartOnly);
        Assert.DoesNotMatch("\"yaxis\":\\{(\\{[^{}]*\\}|[^{}])*\"type\":\"log\"", steps.ChartOnly);
        Assert.DoesNotContain("\"type\":\"log\"", chart.ChartOnly);

        // FSharp.Core 10.1 lives in the plotly context only; the host's default context never sees it.
        var plotly = Assert.Single(AssemblyLoadContext.All, c => c.Name == "ldmlab-plotly");
        var fs = Assert.Single(plotly.Assemblies, a => a.GetName().Name == "FSharp.Core");
        Assert.True(fs.GetName().Version >= new Version(10, 1));
        Assert.DoesNotContain(AssemblyLoadContext.Default.Assemblies, a => a.GetName().Name is "FSharp.Core" or "Plotly.NET");
    }

    [Fact]
    public void Library_script_defines_plotly_even_under_requirejs()
    {
        var lib = Charts.LibraryScript();
        Assert.Contains("window.define = undefined", lib);
        Assert.True(lib.Length > 1_000_000, "plotly.js should be inlined for offline viewing");
    }
}
