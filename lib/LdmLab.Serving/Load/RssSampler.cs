using System.Globalization;

namespace LdmLab.Serving.Load;

/// <summary>
/// The server's resident memory over a run: <c>process_working_set_bytes</c> from its /metrics (prometheus-net's
/// process metrics; the working set is the RSS on Linux), read every <c>every</c> until stopped. Works for a server
/// in this process and for one in another.
/// </summary>
public sealed class RssSampler
{
    readonly List<(double Seconds, long Bytes)> _samples = [];

    public IReadOnlyList<(double Seconds, long Bytes)> Samples
    {
        get { lock (_samples) return _samples.ToList(); }
    }

    /// <summary>Samples until <paramref name="stop"/> is cancelled.</summary>
    public async Task Run(HttpClient client, TimeSpan every, Func<double> clock, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            await SampleOnce(client, clock, stop);
            try { await Task.Delay(every, stop); }
            catch (OperationCanceledException) { break; }
        }
    }

    public async Task SampleOnce(HttpClient client, Func<double> clock, CancellationToken ct = default)
    {
        try
        {
            var text = await client.GetStringAsync("/metrics", ct);
            if (Metric(text, "process_working_set_bytes") is { } bytes)
                lock (_samples) _samples.Add((clock(), (long)bytes));
        }
        catch (Exception e) when (e is HttpRequestException or OperationCanceledException) { }
    }

    /// <summary>The value of an unlabelled metric in Prometheus' text format; null when absent.</summary>
    public static double? Metric(string exposition, string name)
    {
        foreach (var line in exposition.Split('\n'))
            if (line.StartsWith(name + " ", StringComparison.Ordinal)
                && double.TryParse(line[(name.Length + 1)..].Trim(), NumberStyles.Float, CultureInfo.InvariantCulture,
                    out var v))
                return v;
        return null;
    }

    /// <summary>First, last and largest sample in MB, and the growth: the median of the last quarter of the samples
    /// minus the median of the first quarter (a flat RSS grows by about 0).</summary>
    public static RssSummary Summarise(IReadOnlyList<(double Seconds, long Bytes)> samples)
    {
        if (samples.Count == 0) return new RssSummary(0, double.NaN, double.NaN, double.NaN, double.NaN);
        const double mb = 1 << 20;
        int q = Math.Max(1, samples.Count / 4);
        double Median(IEnumerable<long> xs)
        {
            var s = xs.Order().ToArray();
            return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2.0;
        }
        return new RssSummary(samples.Count, samples[0].Bytes / mb, samples[^1].Bytes / mb,
            samples.Max(s => s.Bytes) / mb,
            (Median(samples.TakeLast(q).Select(s => s.Bytes)) - Median(samples.Take(q).Select(s => s.Bytes))) / mb);
    }
}

/// <summary>The server's RSS over a run, in MB (<see cref="RssSampler.Summarise"/>).</summary>
public sealed record RssSummary(int Samples, double FirstMb, double LastMb, double MaxMb, double GrowthMb);
