namespace LdmLab.PlotlyHost;

// The wire format between LdmLab.Viz.Charts (BCL only) and this host; the facade writes the same JSON shape.
public sealed class ChartSpec
{
    public string Kind { get; set; } = "lines";          // lines | markers | lines+markers | heatmap | histogram | bars
    public string? Title { get; set; }
    public string? XTitle { get; set; }
    public string? YTitle { get; set; }
    public bool LogY { get; set; }
    public bool LogX { get; set; }
    public int Width { get; set; } = 640;
    public int Height { get; set; } = 420;
    public List<SeriesSpec> Series { get; set; } = new();
    public double[][]? Z { get; set; }
    public string[]? XLabels { get; set; }
    public string[]? YLabels { get; set; }
    public string? ColorScale { get; set; }
    public List<LineMark> HLines { get; set; } = new();
}

public sealed class SeriesSpec
{
    public string? Name { get; set; }
    public double[] X { get; set; } = [];
    public double[] Y { get; set; } = [];
    public string[]? Text { get; set; }
}

public sealed class LineMark
{
    public double Y { get; set; }
    public string? Label { get; set; }
}
