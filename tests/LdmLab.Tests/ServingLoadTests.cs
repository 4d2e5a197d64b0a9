using LdmLab.Runtime;
using LdmLab.Serving;
using LdmLab.Serving.Load;

namespace LdmLab.Tests;

/// <summary>
/// The load driver (<see cref="LoadDriver"/>): its bookkeeping on made-up runs (lost and duplicated answers, the
/// fault counts, percentiles), then short bounded runs against the tiny pipeline's server in this process — valid
/// requests among malformed ones, and requests dropped mid-generation.
/// </summary>
public class ServingLoadTests
{
    static LoadRecord Answered(long seed, string? job, string? sha, string final = "succeeded", double latency = 1,
        long? answeredSeed = null) => new(seed, 0, RequestKind.Valid)
        {
            Status = 202, JobId = job, ImageSha256 = sha, Final = final, SentAt = 0, AnsweredAt = latency,
            AnsweredSeed = answeredSeed ?? seed,
        };

    [Fact]
    public void The_ledger_finds_lost_duplicated_and_misrouted_answers_and_counts_the_faults()
    {
        var steps = MalformedCase.All.First(c => c.Field == "steps");
        var records = new List<LoadRecord>
        {
            Answered(1, "j1", "a", latency: 2),
            Answered(2, "j2", "b", latency: 4),
            Answered(3, null, null, final: null!),                                   // lost: no final state
            Answered(4, "j4", "d"), Answered(5, "j4", "e"),                          // one job for two requests
            Answered(6, "j6", "f"), Answered(7, "j7", "f"),                          // one image for two seeds
            Answered(8, "j8", "h", answeredSeed: 80),                                // an answer naming another seed
            Answered(9, "j9", "i", final: "failed"),
            new(10, 0, RequestKind.Kill) { JobId = "k1", Final = "cancelled", KillHow = "close" },
            new(11, 0, RequestKind.Kill) { JobId = "k2", Final = "succeeded", KillHow = "delete" },
            new(12, 0, RequestKind.Kill) { JobId = "k3", Final = null, KillHow = "delete" },
            new(13, 0, RequestKind.Malformed) { Case = steps, Status = 400, ErrorField = "steps" },
            new(14, 0, RequestKind.Malformed) { Case = steps, Status = 400, ErrorField = "prompt" },  // wrong field
            new(15, 0, RequestKind.Malformed) { Case = steps, Status = 500, ErrorField = null },
        };
        records[2].Final = null;
        var ledger = new LoadLedger(records);
        Assert.Equal(15, ledger.Sent);
        Assert.Equal(9, ledger.Valid);
        Assert.Equal(7, ledger.Succeeded);
        Assert.Equal(1, ledger.Failed);
        Assert.Equal(1, ledger.Lost);
        Assert.Equal(5, ledger.Duplicated);                                  // seeds 4, 5, 6, 7 and the misrouted 8
        Assert.Equal(new long[] { 8 }, ledger.Misrouted.Select(r => r.Seed));
        Assert.Equal((3, 1, 1, 1), (ledger.Killed, ledger.KilledCancelled, ledger.KilledCompleted, ledger.KilledOther));
        Assert.Equal((3, 1), (ledger.Malformed, ledger.MalformedAsExpected));
        Assert.Equal([("steps out of range", 400, "steps", 3, 1)], ledger.MalformedByCase);
        Assert.Equal(7, ledger.Latencies.Length);
        Assert.Equal(7 / 4.0, ledger.Throughput, 12);                     // 7 images from t = 0 to the last at 4 s

        var clean = new LoadLedger([Answered(1, "j1", "a"), Answered(2, "j2", "b")]);
        Assert.Equal((0, 0), (clean.Lost, clean.Duplicated));
    }

    [Theory]
    [InlineData(new[] { 1.0, 2, 3, 4, 5 }, 0.50, 3.0)]
    [InlineData(new[] { 1.0, 2, 3, 4, 5 }, 0.95, 4.8)]        // numpy.percentile([1, 2, 3, 4, 5], 95)
    [InlineData(new[] { 1.0, 2, 3, 4, 5 }, 0.99, 4.96)]
    [InlineData(new[] { 10.0, 20 }, 0.25, 12.5)]
    [InlineData(new[] { 7.0 }, 0.99, 7.0)]
    [InlineData(new[] { 0.5, 0.7, 0.9, 1.5, 2.5, 4.0, 9.0 }, 0.90, 6.0)]   // h = 5.4: 4 + 0.4 · 5
    public void Percentiles_interpolate_between_ranks_as_numpy_does(double[] sorted, double p, double expected)
    {
        Assert.Equal(expected, LoadLedger.Percentile(sorted, p), 12);
    }

    [Fact]
    public void Percentiles_of_nothing_are_nan_and_p_must_lie_in_0_1()
    {
        Assert.True(double.IsNaN(LoadLedger.Percentile([], 0.5)));
        Assert.Throws<ArgumentOutOfRangeException>(() => LoadLedger.Percentile([1.0], 1.5));
    }

    [Fact]
    public void Plans_are_bounded_repeatable_and_keep_to_loopback()
    {
        var plan = new LoadPlan { MalformedFraction = 0.3, KillFraction = 0.2 };
        var kinds = Enumerable.Range(0, 2000).Select(n => plan.KindOf(n)).ToList();
        Assert.Equal(kinds, Enumerable.Range(0, 2000).Select(n => plan.KindOf(n)));          // the same every time
        Assert.InRange(kinds.Count(k => k == RequestKind.Malformed) / 2000.0, 0.25, 0.35);
        Assert.InRange(kinds.Count(k => k == RequestKind.Kill) / 2000.0, 0.15, 0.25);
        Assert.Contains("kill fraction", Assert.Throws<ArgumentException>(() =>
            (plan with { KillFraction = 1.5 }).Validate()).Message);
        Assert.Contains("whose sum", Assert.Throws<ArgumentException>(() =>
            (plan with { KillFraction = 0.8 }).Validate()).Message);
        Assert.Contains("loopback", Assert.Throws<ArgumentException>(() =>
            LoadDriver.RequireLoopback(new Uri("http://example.com:7860"))).Message);
        LoadDriver.RequireLoopback(new Uri("http://127.0.0.1:7860"));
        LoadDriver.RequireLoopback(new Uri("http://[::1]:7860"));
    }

    /// <summary>The tiny pipeline's server, each denoising step held <paramref name="perStepMs"/> so that a request
    /// is long enough to be dropped mid-generation.</summary>
    static async Task<GenerationServer> Server(int maxBatch, int perStepMs = 0)
    {
        TorchRuntime.Setup();
        IBatchGenerator generator = new PipelineBatchGenerator(PipelineTests.Tiny(), "tiny");
        if (perStepMs > 0) generator = new SlowGenerator(generator, perStepMs);
        var server = new GenerationServer(generator, LoadSweep.ServerOptions(maxBatch, ServingFixture.Defaults));
        await server.StartAsync();
        return server;
    }

    sealed class SlowGenerator(IBatchGenerator inner, int perStepMs) : IBatchGenerator
    {
        public ModelInfo Model => inner.Model;
        public (long Hits, long Misses) TextCacheCounts => inner.TextCacheCounts;

        public BatchImages Generate(IReadOnlyList<ImageRequest> batch, Action<BatchStep> onStep) =>
            inner.Generate(batch, s =>
            {
                onStep(s);
                Thread.Sleep(perStepMs);
            });
    }

    [Fact]
    public async Task A_short_soak_with_malformed_requests_loses_and_duplicates_nothing()
    {
        await using var server = await Server(maxBatch: 4);
        var plan = new LoadPlan
        {
            Clients = 4, Duration = TimeSpan.FromSeconds(2), MaxRequests = 30, Steps = 2, MalformedFraction = 0.3,
            MaxBodyBytes = ServingFixture.Defaults.MaxBodyBytes, VerifySample = 2,
            RssEvery = TimeSpan.FromMilliseconds(200),
        };
        var report = await LoadDriver.Run(server.Address, plan, maxBatch: 4);
        Assert.True(report.Valid >= 5, $"only {report.Valid} valid requests were sent");
        Assert.True(report.Malformed >= 3, $"only {report.Malformed} malformed requests were sent");
        Assert.Equal(report.Valid, report.Succeeded);
        Assert.Equal(0, report.Lost);
        Assert.Equal(0, report.Duplicated);
        Assert.Equal(report.Malformed, report.MalformedAsExpected);             // each its 400/413/415 and field
        Assert.All(report.MalformedByCase, c => Assert.Equal(c.Sent, c.AsExpected));
        Assert.True(report.WorkerFreed);
        Assert.True(report.P50 > 0 && report.P50 <= report.P95 && report.P95 <= report.P99);
        Assert.True(report.Rss.Samples >= 2 && report.Rss.MaxMb > 0);
        Assert.True(report.MeanBatch > 1, $"4 clients never shared a batch (mean {report.MeanBatch})");
        Assert.Equal(2, report.Verification.Checked);                           // computed again, one at a time
        Assert.True(report.Verification.MaxPixelDifference <= 1,
            $"one by one differs from under load by {report.Verification.MaxPixelDifference}/255");
        Assert.Contains("| b", LoadReport.Markdown([report with { Label = "b4" }]));
        Assert.Contains("\"malformed_as_expected\"", LoadReport.Json([report]));
    }

    [Fact]
    public async Task Requests_dropped_midway_are_cancelled_and_free_the_worker()
    {
        await using var server = await Server(maxBatch: 2, perStepMs: 15);
        var plan = new LoadPlan
        {
            Clients = 3, Duration = TimeSpan.FromSeconds(2), MaxRequests = 9, Steps = 30, KillFraction = 0.6,
            VerifySample = 0, RssEvery = TimeSpan.FromMilliseconds(200),
        };
        var report = await LoadDriver.Run(server.Address, plan, maxBatch: 2);
        Assert.True(report.Killed >= 2, $"only {report.Killed} requests were dropped");
        Assert.True(report.KilledCancelled >= 1, "no dropped request was cancelled");
        Assert.Equal(0, report.KilledOther);                             // every drop ended cancelled or completed
        Assert.Equal(report.KilledCancelled, (int)report.ServerCancelled);  // the server counted the same cancels
        Assert.Equal(report.Valid, report.Succeeded);                      // the others in their batches went on
        Assert.Equal(0, report.Lost);
        Assert.True(report.WorkerFreed, "the worker was still busy after the run");
        Assert.Empty(server.Jobs.Unfinished());                            // no job left behind
        for (int i = 0; i < 100 && server.InFlight.Count > 0; i++) await Task.Delay(10);
        Assert.Equal(0, server.InFlight.Count);
    }

    [Fact]
    public void Takeaways_follow_the_numbers()
    {
        LoadReport Row(int batch, double rate, double p50, int lost = 0) => new()
        {
            Label = $"b{batch}", MaxBatch = batch, Clients = 4, Seconds = 10, Valid = 12, Succeeded = 12 - lost,
            Lost = lost, ImagesPerSecond = rate, P50 = p50, MeanBatch = batch,
            Rss = new RssSummary(10, 500, 510, 520, 8), Verification = new Verification(0, 0, 0, 0),
        };
        var points = LoadReport.Takeaways([Row(1, 2.0, 1.5), Row(4, 5.0, 0.6)]);
        Assert.Contains(points, p => p.StartsWith("Every valid request got exactly its own image: 24 of 24"));
        Assert.Contains(points, p => p.Contains("max batch 4 made 2.5× the images per second")
                                     && p.Contains("costs less"));
        Assert.Contains(points, p => p.Contains("+8 MB") && p.Contains("(flat)"));
        var slow = LoadReport.Takeaways([Row(1, 2.0, 1.5), Row(4, 2.1, 1.4, lost: 2)]);
        Assert.Contains(slow, p => p.StartsWith("2 valid requests were lost"));
        Assert.Contains(slow, p => p.Contains("did not pay"));
        var leaky = LoadReport.Takeaways([Row(1, 2, 1) with { Rss = new RssSummary(10, 500, 900, 900, 400) }]);
        Assert.Contains(leaky, p => p.Contains("look for a leak"));
    }
}
