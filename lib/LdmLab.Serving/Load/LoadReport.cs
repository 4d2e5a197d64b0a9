using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace LdmLab.Serving.Load;

/// <summary>
/// One load run in numbers: the plan (clients, seconds, kill and malformed shares, the server's max batch), the
/// ledger's counts (<see cref="LoadLedger"/>), latency percentiles and throughput, the server's RSS, whether the
/// worker was free afterwards, the server's own counters over the run, and the one-by-one check.
/// <see cref="Markdown"/> and <see cref="Json"/> write a list of them.
/// </summary>
public sealed record LoadReport
{
    public required string Label { get; init; }
    public int? MaxBatch { get; init; }
    public int Clients { get; init; }
    public double Seconds { get; init; }
    public int Steps { get; init; }
    public double KillFraction { get; init; }
    public double MalformedFraction { get; init; }

    public int Sent { get; init; }
    public int Valid { get; init; }
    public int Succeeded { get; init; }
    public int Failed { get; init; }
    public int Refused { get; init; }
    public int Lost { get; init; }
    public int Duplicated { get; init; }
    public int Killed { get; init; }
    public int KilledCancelled { get; init; }
    public int KilledCompleted { get; init; }
    public int KilledOther { get; init; }
    public int Malformed { get; init; }
    public int MalformedAsExpected { get; init; }
    public IReadOnlyList<MalformedCount> MalformedByCase { get; init; } = [];

    public double ImagesPerSecond { get; init; }
    public double P50 { get; init; }
    public double P95 { get; init; }
    public double P99 { get; init; }
    /// <summary>Requests per denoiser batch over the run (the server's ldmlab_batch_size histogram).</summary>
    public double MeanBatch { get; init; }
    /// <summary>The server's cancel counter over the run (to compare with the killed requests seen cancelled).
    /// </summary>
    public double ServerCancelled { get; init; }

    public required RssSummary Rss { get; init; }
    [JsonIgnore] public IReadOnlyList<(double Seconds, long Bytes)> RssSamples { get; init; } = [];
    /// <summary>After the run: no job running or queued, and one more request succeeded.</summary>
    public bool WorkerFreed { get; init; }
    public double SettleSeconds { get; init; }
    public required Verification Verification { get; init; }

    public static LoadReport From(LoadPlan plan, int? maxBatch, LoadLedger ledger, double seconds, RssSummary rss,
        IReadOnlyList<(double, long)> rssSamples, bool workerFreed, double settleSeconds,
        IReadOnlyDictionary<string, double> counters, Verification verification)
    {
        var latencies = ledger.Latencies;
        double batches = counters.GetValueOrDefault("ldmlab_batch_size_count");
        return new LoadReport
        {
            Label = plan.Label, MaxBatch = maxBatch, Clients = plan.Clients, Seconds = seconds, Steps = plan.Steps,
            KillFraction = plan.KillFraction, MalformedFraction = plan.MalformedFraction,
            Sent = ledger.Sent, Valid = ledger.Valid, Succeeded = ledger.Succeeded, Failed = ledger.Failed,
            Refused = ledger.Records.Count(r => r.Kind == RequestKind.Valid && r.Final?.StartsWith("refused",
                StringComparison.Ordinal) == true),
            Lost = ledger.Lost, Duplicated = ledger.Duplicated, Killed = ledger.Killed,
            KilledCancelled = ledger.KilledCancelled, KilledCompleted = ledger.KilledCompleted,
            KilledOther = ledger.KilledOther, Malformed = ledger.Malformed,
            MalformedAsExpected = ledger.MalformedAsExpected,
            MalformedByCase = ledger.MalformedByCase.Select(c => new MalformedCount(c.Case, c.Status, c.Field, c.Sent,
                c.AsExpected)).ToList(),
            ImagesPerSecond = ledger.Throughput,
            P50 = LoadLedger.Percentile(latencies, 0.50), P95 = LoadLedger.Percentile(latencies, 0.95),
            P99 = LoadLedger.Percentile(latencies, 0.99),
            MeanBatch = batches > 0 ? counters.GetValueOrDefault("ldmlab_batch_size_sum") / batches : double.NaN,
            ServerCancelled = counters.GetValueOrDefault("ldmlab_jobs_cancelled_total"),
            Rss = rss, RssSamples = rssSamples, WorkerFreed = workerFreed, SettleSeconds = settleSeconds,
            Verification = verification,
        };
    }

    static string F(double x, string format) =>
        double.IsNaN(x) ? "—" : x.ToString(format, CultureInfo.InvariantCulture);

    /// <summary>A markdown table, one row per run.</summary>
    public static string Markdown(IEnumerable<LoadReport> reports)
    {
        var md = new StringBuilder();
        md.AppendLine("| run | max batch | clients | s | sent | valid ok | lost | dup | killed: cancelled / " +
                      "completed | malformed: as expected | images/s | mean batch | p50 s | p95 s | p99 s | " +
                      "RSS first / last / max MB | worker freed | one-by-one: same bytes, max Δ |");
        md.AppendLine("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | " +
                      "---: | ---: | ---: | --- | --- |");
        foreach (var r in reports)
            md.AppendLine(string.Join(" | ", "", r.Label, r.MaxBatch?.ToString(CultureInfo.InvariantCulture) ?? "—",
                r.Clients, F(r.Seconds, "F0"), r.Sent, $"{r.Succeeded}/{r.Valid}", r.Lost, r.Duplicated,
                r.Killed == 0 ? "—" : $"{r.KilledCancelled} / {r.KilledCompleted} of {r.Killed}",
                r.Malformed == 0 ? "—" : $"{r.MalformedAsExpected} of {r.Malformed}",
                F(r.ImagesPerSecond, "F2"), F(r.MeanBatch, "F2"), F(r.P50, "F2"), F(r.P95, "F2"), F(r.P99, "F2"),
                $"{F(r.Rss.FirstMb, "F0")} / {F(r.Rss.LastMb, "F0")} / {F(r.Rss.MaxMb, "F0")}",
                r.WorkerFreed ? "yes" : "NO",
                r.Verification.Checked == 0 ? "—"
                    : $"{r.Verification.IdenticalBytes} of {r.Verification.Checked}, " +
                      $"{r.Verification.MaxPixelDifference}/255", "").Trim());
        return md.ToString();
    }

    static readonly JsonSerializerOptions JsonOptions = new()
    {
        WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower,
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static string Json(IEnumerable<LoadReport> reports) => JsonSerializer.Serialize(reports, JsonOptions);

    /// <summary>
    /// What a set of runs says, computed from them (notebook 13's takeaway): per run whether every valid request
    /// got its own image (none lost or duplicated), the throughput ratio of the largest max batch to max batch 1 at
    /// the same clients, the latency that batching costs or saves, RSS growth, and the fault runs' counts.
    /// </summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<LoadReport> reports)
    {
        var points = new List<string>();
        if (reports.Count == 0) return points;
        int valid = reports.Sum(r => r.Valid), ok = reports.Sum(r => r.Succeeded);
        int lost = reports.Sum(r => r.Lost), dup = reports.Sum(r => r.Duplicated);
        points.Add(lost == 0 && dup == 0
            ? $"Every valid request got exactly its own image: {ok} of {valid} succeeded, none lost, none duplicated " +
              $"over {reports.Count} runs."
            : $"{lost} valid requests were lost and {dup} answers duplicated over {reports.Count} runs: the server " +
              "mixed up or dropped work.");
        foreach (var group in reports.Where(r => r.MaxBatch is not null && r.Succeeded > 0).GroupBy(r => r.Clients))
        {
            var one = group.FirstOrDefault(r => r.MaxBatch == 1);
            var best = group.MaxBy(r => r.MaxBatch!.Value);
            if (one is null || best is null || best.MaxBatch == 1 || one.ImagesPerSecond <= 0) continue;
            double ratio = best.ImagesPerSecond / one.ImagesPerSecond;
            points.Add(FormattableString.Invariant(
                $"With {group.Key} clients, max batch {best.MaxBatch} made {ratio:F1}× the images per second of max ") +
                FormattableString.Invariant($"batch 1 ({best.ImagesPerSecond:F2} against {one.ImagesPerSecond:F2}; ") +
                FormattableString.Invariant($"mean batch {best.MeanBatch:F1}), and its median latency was ") +
                FormattableString.Invariant($"{best.P50:F2} s against {one.P50:F2} s: ") +
                (ratio > 1.1 ? "one denoiser call over several rows costs less than the rows one by one."
                    : "batching did not pay here (too few clients to fill a batch, or a machine already busy)."));
        }
        var soak = reports.Where(r => r.Rss.Samples >= 8).MaxBy(r => r.Seconds);
        if (soak is not null)
            points.Add(FormattableString.Invariant(
                $"RSS over the longest run ({soak.Label}, {soak.Seconds:F0} s): {soak.Rss.FirstMb:F0} MB first, ") +
                FormattableString.Invariant(
                    $"{soak.Rss.LastMb:F0} MB last, {soak.Rss.MaxMb:F0} MB at most; the last quarter's median is ") +
                FormattableString.Invariant($"{soak.Rss.GrowthMb:+0;-0;0} MB from the first quarter's") +
                (Math.Abs(soak.Rss.GrowthMb) <= 0.1 * soak.Rss.FirstMb ? " (flat)." : " (it moved: look for a leak)."));
        foreach (var r in reports.Where(r => r.Killed > 0))
            points.Add($"{r.Label}: of {r.Killed} requests dropped mid-generation, {r.KilledCancelled} were " +
                       "cancelled " +
                       $"and {r.KilledCompleted} had finished first; the worker was " +
                       (r.WorkerFreed ? "free afterwards (nothing running or queued, a new request succeeded)."
                           : "NOT free afterwards."));
        foreach (var r in reports.Where(r => r.Malformed > 0))
            points.Add($"{r.Label}: {r.MalformedAsExpected} of {r.Malformed} malformed requests got their 4xx naming " +
                       $"the field, while {r.Succeeded} of {r.Valid} valid ones among them succeeded.");
        return points;
    }
}

/// <summary>One malformed case in a run: its expected status and field, sent, answered as expected.</summary>
public sealed record MalformedCount(string Case, int Status, string Field, int Sent, int AsExpected);
