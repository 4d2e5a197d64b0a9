namespace LdmLab.Serving.Load;

/// <summary>
/// The bookkeeping of one run, from its <see cref="LoadRecord"/>s alone (so it is tested on made-up runs):
/// <list type="bullet">
/// <item><b>lost</b>: a valid request with no final state (no answer, a broken stream, a timeout);</item>
/// <item><b>duplicated</b>: an answer given to more than one request — a job id two requests got, the same image
/// bytes for two different seeds (each seed makes its own image), or an answer naming another request's seed or
/// request id (misrouted);</item>
/// <item>killed requests: cancelled, or completed because the drop came after the image;</item>
/// <item>malformed requests: answered with the expected status and field, or not.</item>
/// </list>
/// Latency percentiles are over the valid requests that succeeded (POST to the final event), throughput is those
/// images over the time from the first POST to the last answer.
/// </summary>
public sealed class LoadLedger(IReadOnlyList<LoadRecord> records)
{
    public IReadOnlyList<LoadRecord> Records { get; } = records;

    IEnumerable<LoadRecord> Of(RequestKind kind) => Records.Where(r => r.Kind == kind);

    public int Sent => Records.Count;
    public int Valid => Of(RequestKind.Valid).Count();
    public int Succeeded => Of(RequestKind.Valid).Count(r => r.Final == "succeeded");
    /// <summary>Valid requests the server failed (an answer, but no image).</summary>
    public int Failed => Of(RequestKind.Valid).Count(r => r.Final is "failed");
    /// <summary>Valid requests cancelled by someone else than their client (e.g. a shutdown).</summary>
    public int CancelledValid => Of(RequestKind.Valid).Count(r => r.Final is "cancelled");
    public int Lost => Of(RequestKind.Valid).Count(r => r.Final is null);

    /// <summary>Requests whose answer was also another request's, or named another request.</summary>
    public int Duplicated
    {
        get
        {
            var bad = new HashSet<LoadRecord>();
            foreach (var group in Records.Where(r => r.JobId is not null).GroupBy(r => r.JobId))
                if (group.Count() > 1) bad.UnionWith(group);
            foreach (var group in Records.Where(r => r.ImageSha256 is not null).GroupBy(r => r.ImageSha256))
                if (group.Select(r => r.Seed).Distinct().Count() > 1) bad.UnionWith(group);
            bad.UnionWith(Misrouted);
            return bad.Count;
        }
    }

    /// <summary>Answers that name another seed or request id than the request's own.</summary>
    public IEnumerable<LoadRecord> Misrouted => Records.Where(r =>
        (r.AnsweredSeed is { } s && s != r.Seed) || (r.AnsweredRequestId is { } id && id != r.RequestId));

    public int Killed => Of(RequestKind.Kill).Count();
    public int KilledCancelled => Of(RequestKind.Kill).Count(r => r.Final == "cancelled");
    public int KilledCompleted => Of(RequestKind.Kill).Count(r => r.Final == "succeeded");
    /// <summary>Killed requests that ended neither cancelled nor completed (failed, or never seen to end).</summary>
    public int KilledOther => Killed - KilledCancelled - KilledCompleted;

    public int Malformed => Of(RequestKind.Malformed).Count();
    /// <summary>Malformed requests answered with their case's status and field.</summary>
    public int MalformedAsExpected => Of(RequestKind.Malformed).Count(r =>
        r.Case is { } c && r.Status == c.Status && r.ErrorField == c.Field);
    /// <summary>Each malformed case: sent, answered as expected.</summary>
    public IReadOnlyList<(string Case, int Status, string Field, int Sent, int AsExpected)> MalformedByCase =>
        Of(RequestKind.Malformed).Where(r => r.Case is not null).GroupBy(r => r.Case!)
            .Select(g => (g.Key.Name, g.Key.Status, g.Key.Field, g.Count(),
                g.Count(r => r.Status == g.Key.Status && r.ErrorField == g.Key.Field)))
            .OrderBy(c => c.Name, StringComparer.Ordinal).ToList();

    /// <summary>Seconds POST → final event of the valid requests that succeeded, sorted.</summary>
    public double[] Latencies => Of(RequestKind.Valid)
        .Where(r => r.Final == "succeeded" && r.LatencySeconds is not null).Select(r => r.LatencySeconds!.Value)
        .Order().ToArray();

    /// <summary>Succeeded valid images per second, from the first POST to the last answer of any request.</summary>
    public double Throughput
    {
        get
        {
            var answered = Records.Where(r => r.AnsweredAt is not null).ToList();
            if (Succeeded == 0 || answered.Count == 0) return 0;
            double span = answered.Max(r => r.AnsweredAt!.Value) - Records.Min(r => r.SentAt);
            return span > 0 ? Succeeded / span : 0;
        }
    }

    /// <summary>
    /// The p-th quantile (p in [0, 1]) of sorted values by linear interpolation between the closest ranks (numpy's
    /// default, Hyndman and Fan's type 7): h = (n − 1)·p, x[⌊h⌋] + (h − ⌊h⌋)·(x[⌊h⌋ + 1] − x[⌊h⌋]). NaN for none.
    /// </summary>
    public static double Percentile(IReadOnlyList<double> sorted, double p)
    {
        if (p is < 0 or > 1 || double.IsNaN(p)) throw new ArgumentOutOfRangeException(nameof(p), p, "expected [0, 1]");
        if (sorted.Count == 0) return double.NaN;
        double h = (sorted.Count - 1) * p;
        int lo = (int)Math.Floor(h);
        return lo + 1 >= sorted.Count ? sorted[lo] : sorted[lo] + (h - lo) * (sorted[lo + 1] - sorted[lo]);
    }
}
