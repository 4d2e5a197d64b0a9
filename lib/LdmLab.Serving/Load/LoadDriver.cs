using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;

namespace LdmLab.Serving.Load;

/// <summary>
/// Runs a <see cref="LoadPlan"/> against a server on loopback: the plan's clients send requests one after another
/// (a valid one is POSTed, its event stream read to the final event, its job read back; a killed one is dropped
/// after its first progress event; a malformed one only needs its 4xx), while the server's RSS is sampled. Then it
/// waits for the worker to go idle, sends one probe request (the worker is free), and sends a sample of the
/// succeeded requests again one at a time to compare their bytes. Everything is bounded: no request starts after
/// the plan's duration, each has its timeout, and the whole run is cancelled past duration + timeout + 30 s.
/// </summary>
public static partial class LoadDriver
{
    /// <summary>The run's report (<see cref="LoadReport"/>). <paramref name="server"/> must be a loopback address
    /// (127.0.0.0/8, ::1 or localhost): a load run is not a tool to point at other machines.</summary>
    public static async Task<LoadReport> Run(Uri server, LoadPlan plan, int? maxBatch = null,
        CancellationToken ct = default)
    {
        plan.Validate();
        RequireLoopback(server);
        using var http = Client(server);
        var clock = Stopwatch.StartNew();
        double Now() => clock.Elapsed.TotalSeconds;
        var before = await Counters(http, ct);
        var rss = new RssSampler();
        using var stopRss = new CancellationTokenSource();
        var sampling = rss.Run(http, plan.RssEvery, Now, stopRss.Token);

        using var hard = CancellationTokenSource.CreateLinkedTokenSource(ct);
        hard.CancelAfter(plan.Duration + plan.RequestTimeout + TimeSpan.FromSeconds(30));
        var records = new List<LoadRecord>();
        long next = -1;
        await Task.WhenAll(Enumerable.Range(0, plan.Clients).Select(c => Task.Run(async () =>
        {
            while (Now() < plan.Duration.TotalSeconds && !hard.IsCancellationRequested)
            {
                long n = Interlocked.Increment(ref next);
                if (n >= plan.MaxRequests) break;
                var record = await One(http, plan, n, c, Now, hard.Token);
                lock (records) records.Add(record);
            }
        }, CancellationToken.None)));
        double loadSeconds = Now();

        var (idle, settleSeconds) = await Settle(http, plan.SettleTimeout, ct);
        var probe = await One(http, plan with { KillFraction = 0, MalformedFraction = 0 }, plan.MaxRequests + 1, -1,
            Now, ct);
        await rss.SampleOnce(http, Now, ct);
        await stopRss.CancelAsync();
        await sampling;
        var after = await Counters(http, ct);
        var verification = await Verify(http, plan, records, Now, ct);
        var ledger = new LoadLedger(records.OrderBy(r => r.Seed).ToList());
        return LoadReport.From(plan, maxBatch, ledger, loadSeconds, RssSampler.Summarise(rss.Samples), rss.Samples,
            idle && probe.Final == "succeeded", settleSeconds, Delta(before, after), verification);
    }

    static HttpClient Client(Uri server) => new(new SocketsHttpHandler
    {
        MaxConnectionsPerServer = 4096,
        MaxResponseDrainSize = 0,               // a dropped event stream closes its connection at once (the kill)
        PooledConnectionIdleTimeout = TimeSpan.FromSeconds(30),
    })
    {
        BaseAddress = server, Timeout = Timeout.InfiniteTimeSpan,
    };

    /// <summary>Throws an <see cref="ArgumentException"/> unless <paramref name="server"/> is on loopback.</summary>
    public static void RequireLoopback(Uri server)
    {
        bool loopback = server.IsLoopback
                        || (IPAddress.TryParse(server.Host.Trim('[', ']'), out var ip) && IPAddress.IsLoopback(ip));
        if (!server.IsAbsoluteUri || server.Scheme is not ("http" or "https") || !loopback)
            throw new ArgumentException($"server '{server}': expected http://127.0.0.1:PORT or another loopback " +
                                        "address (load runs stay on this machine)", nameof(server));
    }

    /// <summary>The JSON body of a valid request.</summary>
    public static string ValidBody(LoadPlan plan, long seed) => new JsonObject
    {
        ["prompt"] = plan.Prompt, ["steps"] = plan.Steps, ["guidance"] = plan.Guidance, ["seed"] = seed,
        ["preview_every"] = 0,
    }.ToJsonString();

    static async Task<LoadRecord> One(HttpClient http, LoadPlan plan, long n, int client, Func<double> now,
        CancellationToken ct)
    {
        long seed = plan.SeedBase + n;
        var kind = plan.KindOf(n);
        var record = new LoadRecord(seed, client, kind)
        {
            Case = kind == RequestKind.Malformed ? MalformedCase.For(n) : null,
            KillHow = kind == RequestKind.Kill ? (n % 2 == 0 ? "close" : "delete") : null,
        };
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(plan.RequestTimeout);
        var token = timeout.Token;
        record.SentAt = now();
        try
        {
            var (body, type) = record.Case is { } bad ? bad.Make(plan, seed) : (ValidBody(plan, seed),
                "application/json");
            using var post = new HttpRequestMessage(HttpMethod.Post, "/v1/images")
            {
                Content = new StringContent(body, Encoding.UTF8, new MediaTypeHeaderValue(type)),
            };
            post.Headers.Add("X-Request-Id", record.RequestId);
            using var response = await http.SendAsync(post, token);
            record.Status = (int)response.StatusCode;
            var answer = await response.Content.ReadAsStringAsync(token);
            JsonNode? json = null;
            try { json = JsonNode.Parse(answer); }
            catch (System.Text.Json.JsonException) { }
            if (record.Status >= 400)
            {
                record.ErrorField = (string?)json?["error"]?["field"];
                record.AnsweredAt = now();
                if (kind != RequestKind.Malformed) record.Final = $"refused {record.Status}";
                return record;
            }
            record.JobId = (string?)json?["id"];
            record.Reused = json?["cached"]?.GetValue<bool>() == true || json?["shared_with"] is not null;
            if (record.JobId is null) throw new InvalidDataException($"no job id in the answer: {answer}");
            if (kind == RequestKind.Kill) await Kill(http, record, token);
            else await Follow(http, record, token);
            record.AnsweredAt = now();
            if (record.Final is not null && kind == RequestKind.Valid) await ReadBack(http, record, token);
        }
        catch (OperationCanceledException)
        {
            record.ClientError = $"no answer within {plan.RequestTimeout.TotalSeconds:F0} s";
            record.Final = null;
        }
        catch (Exception e) when (e is HttpRequestException or IOException or InvalidDataException)
        {
            record.ClientError = e.Message;
            record.Final = null;
        }
        return record;
    }

    /// <summary>Reads the job's event stream to its final event; keeps the image of a succeeded one.</summary>
    static async Task Follow(HttpClient http, LoadRecord record, CancellationToken ct)
    {
        var (name, data) = await Events(http, record.JobId!, atProgress: null, ct);
        if (name is not ("succeeded" or "failed" or "cancelled"))
            throw new InvalidDataException($"the event stream ended without a final event (last: {name})");
        record.Final = name;
        if (name == "succeeded" && (string?)data?["image"] is { } url)
        {
            record.Png = Convert.FromBase64String(url[(url.IndexOf(',') + 1)..]);
            record.ImageSha256 = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(record.Png));
        }
    }

    /// <summary>Drops the request mid-generation: after its first progress event the stream is closed (the server
    /// cancels the job) or DELETE is sent; then the job's final state is read back.</summary>
    static async Task Kill(HttpClient http, LoadRecord record, CancellationToken ct)
    {
        // DELETE while the stream is still open (so that it, not the closing, cancels); then the stream is closed
        Func<Task> drop = record.KillHow == "delete"
            ? async () => (await http.DeleteAsync($"/v1/jobs/{record.JobId}", ct)).Dispose()
            : () => Task.CompletedTask;
        await Events(http, record.JobId!, drop, ct);
        for (int i = 0; i < 500; i++)
        {
            var job = JsonNode.Parse(await http.GetStringAsync($"/v1/jobs/{record.JobId}", ct))!;
            var state = (string?)job["state"];
            if (state is "succeeded" or "failed" or "cancelled")
            {
                record.Final = state;
                return;
            }
            await Task.Delay(20, ct);
        }
    }

    /// <summary>The job as the server reports it: the seed and request id it names, checked against the PNG's own
    /// parameters chunk (A1111's "Seed: N").</summary>
    static async Task ReadBack(HttpClient http, LoadRecord record, CancellationToken ct)
    {
        var job = JsonNode.Parse(await http.GetStringAsync($"/v1/jobs/{record.JobId}", ct))!;
        long seed = (long)job["parameters"]!["seed"]!;
        record.AnsweredRequestId = (string?)job["request_id"];
        record.Reused |= job["cached"]?.GetValue<bool>() == true || job["shared_with"] is not null;
        if (record.Png is { } png)
        {
            var m = PngSeed().Match(Encoding.Latin1.GetString(png));
            if (!m.Success || long.Parse(m.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture) != seed)
                seed = -1;
        }
        record.AnsweredSeed = seed;
    }

    [GeneratedRegex(@"Seed: (\d+)")]
    private static partial Regex PngSeed();

    /// <summary>Reads a job's events to the final one, or with <paramref name="atProgress"/> to the first progress
    /// event, where it runs it and stops (closing the stream); the last event's name and data.</summary>
    static async Task<(string? Name, JsonNode? Data)> Events(HttpClient http, string id, Func<Task>? atProgress,
        CancellationToken ct)
    {
        using var response = await http.GetAsync($"/v1/jobs/{id}/events", HttpCompletionOption.ResponseHeadersRead,
            ct);
        response.EnsureSuccessStatusCode();
        await using var stream = await response.Content.ReadAsStreamAsync(ct);
        using var reader = new StreamReader(stream);
        string? name = null;
        JsonNode? data = null;
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            if (line.StartsWith("event: ", StringComparison.Ordinal)) name = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
            {
                data = JsonNode.Parse(line[6..]);
                if (name is "succeeded" or "failed" or "cancelled") return (name, data);
                if (name == "progress" && atProgress is not null)
                {
                    await atProgress();
                    return (name, data);
                }
            }
        }
        return (name, data);
    }

    /// <summary>Waits until the server has no job running and none queued; (idle, seconds waited).</summary>
    static async Task<(bool Idle, double Seconds)> Settle(HttpClient http, TimeSpan limit, CancellationToken ct)
    {
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < limit)
        {
            var text = await http.GetStringAsync("/metrics", ct);
            if (RssSampler.Metric(text, "ldmlab_jobs_running") == 0
                && RssSampler.Metric(text, "ldmlab_queue_depth") == 0)
                return (true, clock.Elapsed.TotalSeconds);
            await Task.Delay(50, ct);
        }
        return (false, clock.Elapsed.TotalSeconds);
    }

    static readonly string[] CounterNames =
    [
        "ldmlab_images_total", "ldmlab_batch_size_sum", "ldmlab_batch_size_count", "ldmlab_jobs_cancelled_total",
        "ldmlab_requests_deduplicated_total", "ldmlab_result_cache_hits_total",
    ];

    static async Task<Dictionary<string, double>> Counters(HttpClient http, CancellationToken ct)
    {
        var text = await http.GetStringAsync("/metrics", ct);
        return CounterNames.ToDictionary(n => n, n => RssSampler.Metric(text, n) ?? 0);
    }

    static Dictionary<string, double> Delta(Dictionary<string, double> a, Dictionary<string, double> b) =>
        a.Keys.ToDictionary(k => k, k => b[k] - a[k]);

    /// <summary>Up to <see cref="LoadPlan.VerifySample"/> succeeded valid requests, evenly spread over the run, sent
    /// again one at a time: how many came back with identical bytes, and the largest pixel difference (of 255).
    /// </summary>
    static async Task<Verification> Verify(HttpClient http, LoadPlan plan, List<LoadRecord> records,
        Func<double> now, CancellationToken ct)
    {
        var done = records.Where(r => r.Kind == RequestKind.Valid && r.Png is not null && !r.Reused)
            .OrderBy(r => r.Seed).ToList();
        int k = Math.Min(plan.VerifySample, done.Count);
        int identical = 0, worst = 0, reused = 0, checkedCount = 0;
        for (int i = 0; i < k; i++)
        {
            var original = done[i * done.Count / k];
            var again = new LoadRecord(original.Seed, -1, RequestKind.Valid);
            using var content = new StringContent(ValidBody(plan, original.Seed), Encoding.UTF8, "application/json");
            using var response = await http.PostAsync("/v1/images", content, ct);
            var json = JsonNode.Parse(await response.Content.ReadAsStringAsync(ct))!;
            if (json["cached"]?.GetValue<bool>() == true || json["shared_with"] is not null)
            {
                reused++;                       // the result cache answered: not a one-by-one run (serve --cache 0)
                continue;
            }
            again.JobId = (string)json["id"]!;
            await Follow(http, again, ct);
            if (again.Png is null) continue;
            checkedCount++;
            if (again.Png.AsSpan().SequenceEqual(original.Png)) identical++;
            worst = Math.Max(worst, MaxPixelDifference(original.Png!, again.Png));
        }
        return new Verification(checkedCount, identical, worst, reused);
    }

    /// <summary>The largest |Δ| over the pixels and channels of two PNGs of one size (of 255).</summary>
    public static int MaxPixelDifference(byte[] a, byte[] b)
    {
        using var x = Image.Load<Rgb24>(a);
        using var y = Image.Load<Rgb24>(b);
        if (x.Width != y.Width || x.Height != y.Height) return 255;
        int worst = 0;
        for (int r = 0; r < x.Height; r++)
            for (int c = 0; c < x.Width; c++)
            {
                var (p, q) = (x[c, r], y[c, r]);
                worst = Math.Max(worst, Math.Max(Math.Abs(p.R - q.R), Math.Max(Math.Abs(p.G - q.G),
                    Math.Abs(p.B - q.B))));
            }
        return worst;
    }
}

/// <summary>Requests sent again one at a time after a run: how many were compared, how many came back with the very
/// bytes they got under load, the largest pixel difference (of 255), and how many the result cache answered (not
/// compared).</summary>
public sealed record Verification(int Checked, int IdenticalBytes, int MaxPixelDifference, int AnsweredFromCache);
