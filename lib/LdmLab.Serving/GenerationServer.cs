using System.Diagnostics;
using System.Net;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using LdmLab.Pipelines;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Prometheus;

namespace LdmLab.Serving;

/// <summary>
/// <c>ldmlab serve</c>: one model behind an HTTP API (<see cref="ImagesApi"/>), a bounded queue, one worker that
/// batches same-shape requests (<see cref="GenerationWorker"/>), a result cache, /healthz, /readyz, Prometheus
/// /metrics and structured logs with a request id. Kestrel on loopback unless told otherwise; no configuration is
/// read from the environment (everything is in <see cref="ServeOptions"/>). Stopping (SIGTERM, Ctrl+C,
/// <see cref="StopAsync"/>) refuses new requests with 503, lets queued and running jobs finish within
/// <see cref="ServeOptions.DrainTimeout"/>, cancels what is left, then closes the listener.
/// </summary>
public sealed partial class GenerationServer : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly CancellationTokenSource _stopWorker = new();
    Task? _worker;
    volatile bool _ready, _draining;

    public ServeOptions Options { get; }
    public IBatchGenerator Generator { get; }
    public ServerMetrics Metrics { get; }
    public JobStore Jobs { get; }
    public JobQueue Queue { get; }
    public ResultCache Cache { get; }
    /// <summary>Identical requests being computed (a second one shares the first's compute).</summary>
    public InFlightRequests InFlight { get; } = new();
    public GenerationWorker Worker { get; }
    public ILogger Logger { get; }

    /// <summary>The server over a pipeline (<see cref="PipelineBatchGenerator"/>; its text-encoding cache is turned
    /// on). <paramref name="nativeSize"/>: the model's own image size when it is not the U-Net's square sample size
    /// (the lab's 28×56 canvases).</summary>
    public static GenerationServer Create(StableDiffusionPipeline pipeline, ServeOptions options,
        Action<ILoggingBuilder>? logging = null, (int Height, int Width)? nativeSize = null) =>
        new(new PipelineBatchGenerator(pipeline, options.ModelName, options.TextCacheCapacity, nativeSize,
            options.Adapters), options, logging);

    /// <param name="logging">Where the logs go (default: nowhere); <c>ldmlab serve</c> writes JSON lines with
    /// scopes (the request id) to the console.</param>
    public GenerationServer(IBatchGenerator generator, ServeOptions options, Action<ILoggingBuilder>? logging = null)
    {
        var ip = options.Validate();
        Options = options;
        Generator = generator;
        Metrics = new ServerMetrics(options.MaxBatch);
        Jobs = new JobStore(options.JobHistory);
        Queue = new JobQueue(options.QueueCapacity, generator.Model);
        Cache = new ResultCache(options.ResultCacheCapacity);

        var builder = WebApplication.CreateEmptyBuilder(new WebApplicationOptions
        {
            ApplicationName = typeof(GenerationServer).Assembly.GetName().Name,
        });
        builder.WebHost.UseKestrelCore().ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
            if (ip is not null) k.Listen(ip, options.Port);
            else if (options.Host is "localhost") k.ListenLocalhost(options.Port);
            else k.ListenAnyIP(options.Port);
        });
        builder.Services.AddRoutingCore();
        builder.Services.AddLogging(l => logging?.Invoke(l));
        builder.Services.Configure<HostOptions>(h =>
            h.ShutdownTimeout = options.DrainTimeout + TimeSpan.FromSeconds(10));
        builder.Services.AddSingleton<IHostedService>(new DrainOnStop(this));
        _app = builder.Build();
        Logger = _app.Services.GetRequiredService<ILoggerFactory>().CreateLogger("LdmLab.Serving");
        Worker = new GenerationWorker(generator, Queue, Cache, Metrics, options, Logger);
        Metrics.Registry.AddBeforeCollectCallback(() => Metrics.QueueDepth.Set(Queue.Count));

        _app.Use(WithRequestId);
        _app.Use(new AccessGuard(options).Invoke);
        _app.UseRouting();
        _app.MapGet("/healthz", ctx => ImagesApi.Json(ctx, 200, new JsonObject { ["status"] = "ok" }));
        _app.MapGet("/readyz", ctx => ImagesApi.Json(ctx, _ready && !_draining ? 200 : 503, new JsonObject
        {
            ["status"] = _draining ? "draining" : _ready ? "ready" : "starting", ["model"] = generator.Model.Name,
            ["adapters"] = new JsonArray(generator.Model.Adapters.Select(a => (JsonNode)a).ToArray()),
        }));
        _app.MapMetrics("/metrics", Metrics.Registry);
        _app.MapGet("/", Page);
        ImagesApi.Map(_app, this);
    }

    /// <summary>The web page (wwwroot/index.html, embedded): prompt and settings, the live strip of previews, the
    /// image, and the history of this page's images.</summary>
    static async Task Page(HttpContext ctx)
    {
        await using var page = typeof(GenerationServer).Assembly.GetManifestResourceStream("LdmLab.Serving.index.html")
                               ?? throw new InvalidOperationException("the page is not embedded in LdmLab.Serving");
        ctx.Response.ContentType = "text/html; charset=utf-8";
        ctx.Response.Headers["X-Content-Type-Options"] = "nosniff";
        ctx.Response.Headers["Content-Security-Policy"] =
            "default-src 'self'; img-src 'self' data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'";
        await page.CopyToAsync(ctx.Response.Body);
    }

    /// <summary>Where it listens (the port the OS chose when <see cref="ServeOptions.Port"/> is 0).</summary>
    public Uri Address { get; private set; } = null!;

    /// <summary>True from the end of the self-check until shutdown starts.</summary>
    public bool Ready => _ready && !_draining;

    /// <summary>False once shutdown has started: POST /v1/images answers 503.</summary>
    public bool Accepting => !_draining;

    /// <summary>Listens, runs the self-check (one 1-step image), starts the worker; then /readyz says ready.</summary>
    public async Task StartAsync(CancellationToken ct = default)
    {
        await _app.StartAsync(ct);
        var addresses = _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!;
        Address = new Uri(addresses.Addresses.First().Replace("[::]", "localhost", StringComparison.Ordinal));
        if (Options.SelfCheck) SelfCheck();
        _worker = Worker.Start(_stopWorker.Token);
        _ready = true;
        Logger.LogInformation("serving {Model} at {Address} (max batch {MaxBatch}, queue {Queue})",
            Generator.Model.Name, Address, Options.MaxBatch, Options.QueueCapacity);
    }

    void SelfCheck()
    {
        var m = Generator.Model;
        var request = new ImageRequest("self-check", "", 1, 7.5, 0, m.NativeWidth, m.NativeHeight, "default", 0);
        var clock = Stopwatch.StartNew();
        using var scope = TorchSharp.torch.NewDisposeScope();
        var output = Generator.Generate([request], _ => { });
        if (!output.Latents.isfinite().all().item<bool>())
            throw new InvalidOperationException($"self-check: the model {m.Name} made NaN or infinite latents");
        Logger.LogInformation("self-check passed in {Ms} ms", clock.ElapsedMilliseconds);
    }

    /// <summary>Drains (see the class) and stops listening.</summary>
    public Task StopAsync(CancellationToken ct = default) => _app.StopAsync(ct);

    /// <summary>Completes when the host has shut down (SIGTERM, Ctrl+C or <see cref="StopAsync"/>).</summary>
    public Task WaitForShutdownAsync(CancellationToken ct = default) => _app.WaitForShutdownAsync(ct);

    public async ValueTask DisposeAsync()
    {
        if (!_draining) await StopAsync();
        await _app.DisposeAsync();
        _stopWorker.Dispose();
    }

    /// <summary>Cancels a queued or running job (out of the queue, or out of its batch at the next step).</summary>
    public bool CancelJob(Job job, string reason)
    {
        if (!job.Cancel(reason)) return false;
        Queue.Remove(job);
        Metrics.Cancelled.Inc();
        return true;
    }

    /// <summary>Queues a job again on its own (the identical request it followed was cancelled): behind another
    /// leader of the same request if one came meanwhile, else in the queue; false when the queue is full.</summary>
    internal bool Requeue(Job job)
    {
        if (InFlight.LeaderOf(job) is { } leader)
        {
            job.SharedWith = leader.Id;
            _ = InFlightRequests.Follow(job, leader, Requeue);
            return true;
        }
        if (Queue.TryEnqueue(job)) return true;
        InFlight.Release(job);
        return false;
    }

    /// <summary>Refuses new jobs, waits for the ones there are (at most the drain timeout), cancels the rest and
    /// stops the worker.</summary>
    async Task DrainAsync(CancellationToken ct)
    {
        _draining = true;
        var pending = Jobs.Unfinished();
        Logger.LogInformation("shutting down: draining {Count} jobs (at most {Seconds} s)", pending.Count,
            Options.DrainTimeout.TotalSeconds);
        var all = Task.WhenAll(pending.Select(j => j.Finished));
        try { await all.WaitAsync(Options.DrainTimeout, ct); }
        catch (Exception e) when (e is TimeoutException or OperationCanceledException)
        {
            foreach (var job in Queue.TakeAll().Concat(Jobs.Unfinished()))
                CancelJob(job, "the server shut down before the job finished");
            Logger.LogWarning("drain deadline passed: cancelled what was left");
        }
        _stopWorker.Cancel();
        if (_worker is { } worker) await worker.WaitAsync(TimeSpan.FromSeconds(10), CancellationToken.None);
    }

    sealed class DrainOnStop(GenerationServer server) : IHostedLifecycleService
    {
        public Task StoppingAsync(CancellationToken ct) => server.DrainAsync(ct);
        public Task StartAsync(CancellationToken ct) => Task.CompletedTask;
        public Task StopAsync(CancellationToken ct) => Task.CompletedTask;
        public Task StartingAsync(CancellationToken ct) => Task.CompletedTask;
        public Task StartedAsync(CancellationToken ct) => Task.CompletedTask;
        public Task StoppedAsync(CancellationToken ct) => Task.CompletedTask;
    }

    // ---- request ids ----

    [GeneratedRegex("^[A-Za-z0-9._-]{1,64}$")]
    private static partial Regex SafeId();

    /// <summary>The request's id: the client's X-Request-Id when it is a safe token, else a fresh one.</summary>
    public static string RequestId(HttpContext ctx) => (string)ctx.Items["RequestId"]!;

    /// <summary>Gives every request an id (echoed in X-Request-Id) and a logging scope carrying it.</summary>
    async Task WithRequestId(HttpContext ctx, Func<Task> next)
    {
        var given = ctx.Request.Headers["X-Request-Id"].ToString();
        var id = SafeId().IsMatch(given) ? given : Guid.NewGuid().ToString("N")[..16];
        ctx.Items["RequestId"] = id;
        ctx.Response.Headers["X-Request-Id"] = id;
        using var _ = Logger.BeginScope(new Dictionary<string, object> { ["RequestId"] = id });
        var clock = Stopwatch.StartNew();
        await next();
        Logger.LogInformation("{Method} {Path} → {Status} in {Ms} ms", ctx.Request.Method, ctx.Request.Path,
            ctx.Response.StatusCode, clock.ElapsedMilliseconds);
    }
}
