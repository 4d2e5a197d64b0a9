using static TorchSharp.torch;

namespace LdmLab.Metrics;

/// <summary>
/// The gradient across tile or window borders against an image's ordinary gradient: <see cref="Border"/> is the
/// mean |x[…, c] − x[…, c − 1]| over border columns c (and |x[…, r, :] − x[…, r − 1, :]| over border rows r),
/// <see cref="Ordinary"/> the same mean over every other neighbour pair in the same direction(s) (of the reference
/// image when one was given).
/// A visible seam is a border gradient well above the ordinary one: <see cref="Ratio"/> ≈ 1 or below shows none.
/// </summary>
public sealed record SeamReport(double Border, double Ordinary)
{
    /// <summary>Border / Ordinary (NaN when the ordinary gradient is zero).</summary>
    public double Ratio => Ordinary > 0 ? Border / Ordinary : double.NaN;
}

/// <summary>The seam measure of tiled decoding and of MultiDiffusion's windows (<see cref="SeamReport"/>).</summary>
public static class SeamMeasure
{
    /// <summary>
    /// Measures images [B, C, H, W] at the given borders (a border b is the pair of columns b − 1 | b; each must
    /// lie in 1 … W − 1, rows likewise). <paramref name="reference"/> [B, C, H, W] (e.g. the untiled decode) gives
    /// the ordinary gradient instead of the images themselves.
    /// </summary>
    public static SeamReport Of(Tensor images, IReadOnlyList<int> columnBorders, IReadOnlyList<int>? rowBorders = null,
        Tensor? reference = null)
    {
        if (images.dim() != 4)
            throw new ArgumentException($"images must be [B, C, H, W], got [{string.Join(", ", images.shape)}]",
                nameof(images));
        if (reference is not null && !reference.shape.SequenceEqual(images.shape))
            throw new ArgumentException($"reference must have the images' shape [{string.Join(", ", images.shape)}]",
                nameof(reference));
        rowBorders ??= [];
        Check(columnBorders, images.shape[3], nameof(columnBorders));
        Check(rowBorders, images.shape[2], nameof(rowBorders));
        if (columnBorders.Count + rowBorders.Count == 0)
            throw new ArgumentException("give at least one border", nameof(columnBorders));
        using var _ = no_grad();
        var (borderSum, borderCount) = Sums(images, columnBorders, rowBorders, atBorders: true);
        var (ordinarySum, ordinaryCount) = Sums(reference ?? images, columnBorders, rowBorders, atBorders: false);
        return new SeamReport(borderSum / borderCount, ordinaryCount > 0 ? ordinarySum / ordinaryCount : 0);
    }

    static void Check(IReadOnlyList<int> borders, long size, string name)
    {
        foreach (int b in borders)
            if (b < 1 || b >= size)
                throw new ArgumentOutOfRangeException(name, b, $"a border must lie in 1 … {size - 1}");
    }

    /// <summary>Σ |Δx| and the number of pairs, at the borders or away from them, over both directions.</summary>
    static (double sum, long count) Sums(Tensor x, IReadOnlyList<int> columns, IReadOnlyList<int> rows,
        bool atBorders)
    {
        var dx = (x.narrow(3, 1, x.shape[3] - 1) - x.narrow(3, 0, x.shape[3] - 1)).abs();   // [B, C, H, W − 1]
        var dy = (x.narrow(2, 1, x.shape[2] - 1) - x.narrow(2, 0, x.shape[2] - 1)).abs();   // [B, C, H − 1, W]
        // like with like: horizontal differences where there are column borders, vertical where there are rows
        var (sx, nx) = columns.Count > 0 ? Select(dx, 3, columns, atBorders) : (0, 0);
        var (sy, ny) = rows.Count > 0 ? Select(dy, 2, rows, atBorders) : (0, 0);
        return (sx + sy, nx + ny);
    }

    /// <summary>The differences whose pair index (border − 1) is, or is not, among the borders.</summary>
    static (double sum, long count) Select(Tensor diffs, int dim, IReadOnlyList<int> borders, bool atBorders)
    {
        var set = borders.Select(b => b - 1).ToHashSet();
        var picked = Enumerable.Range(0, (int)diffs.shape[dim]).Where(i => set.Contains(i) == atBorders)
            .Select(i => (long)i).ToArray();
        if (picked.Length == 0) return (0, 0);
        var chosen = diffs.index_select(dim, tensor(picked, device: diffs.device));
        return (chosen.sum().to_type(ScalarType.Float64).item<double>(), chosen.numel());
    }
}
