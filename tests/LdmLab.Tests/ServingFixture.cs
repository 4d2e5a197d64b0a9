using System.Collections.Concurrent;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json.Nodes;
using LdmLab.Runtime;
using LdmLab.Serving;
using Microsoft.Extensions.Logging;

namespace LdmLab.Tests;

/// <summary>
/// The real tiny pipeline (tests/fixtures: 16×16 images, a 2-level U-Net) behind a generator the tests can hold and
/// break: <see cref="Close"/> makes the worker wait after each denoising step until <see cref="Open"/> (so requests
/// pile up in the queue, or a job is provably mid-compute), a prompt "raise an exception" makes the denoiser call
/// throw, and a prompt "nan latents" gets NaN latents back. Every step of every batch is counted.
/// </summary>
sealed class ControlledGenerator(IBatchGenerator inner) : IBatchGenerator
{
    readonly ManualResetEventSlim _gate = new(true);
    volatile TaskCompletionSource _blocked = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ModelInfo Model => inner.Model;
    public (long Hits, long Misses) TextCacheCounts => inner.TextCacheCounts;
    /// <summary>Steps run by each batch, and its size, in order.</summary>
    public List<(int Size, int StepsRun)> Batches { get; } = [];

    public void Close()
    {
        _blocked = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _gate.Reset();
    }

    public void Open() => _gate.Set();

    /// <summary>Completes once the worker waits at the closed gate (a step of a batch has been done).</summary>
    public Task Blocked => _blocked.Task.WaitAsync(TimeSpan.FromSeconds(10));

    public BatchImages Generate(IReadOnlyList<ImageRequest> batch, Action<BatchStep> onStep)
    {
        if (batch.Any(r => r.Prompt == "raise an exception"))
            throw new InvalidOperationException("the denoiser blew up (a test fault)");
        int steps = 0;
        lock (Batches) Batches.Add((batch.Count, 0));
        int index = Batches.Count - 1;
        var output = inner.Generate(batch, step =>
        {
            lock (Batches) Batches[index] = (batch.Count, ++steps);
            onStep(step);
            if (_gate.IsSet) return;
            _blocked.TrySetResult();
            if (!_gate.Wait(TimeSpan.FromSeconds(10))) throw new TimeoutException("the test never opened the gate");
        });
        for (int i = 0; i < batch.Count; i++)
            if (batch[i].Prompt == "nan latents") output.Latents[i].fill_(double.NaN);
        return output;
    }
}

/// <summary>A started server over <see cref="ControlledGenerator"/> on 127.0.0.1 (a free port), and a client.
/// </summary>
public sealed class ServingFixture : IAsyncLifetime
{
    internal ControlledGenerator Generator { get; private set; } = null!;
    public GenerationServer Server { get; private set; } = null!;
    public HttpClient Client { get; private set; } = null!;
    public ServeOptions Options { get; init; } = Defaults;
    internal CapturedLogs Logs { get; } = new();

    public static readonly ServeOptions Defaults = new()
    {
        Port = 0, MaxBatch = 4, QueueCapacity = 4, DefaultSteps = 4, MaxSteps = 60, DefaultPreviewEvery = 0,
        MaxBodyBytes = 4096, DrainTimeout = TimeSpan.FromSeconds(10), ModelName = "tiny",
    };

    public async Task InitializeAsync()
    {
        TorchRuntime.Setup();
        Generator = new ControlledGenerator(new PipelineBatchGenerator(PipelineTests.Tiny(), "tiny",
            adapters: Options.Adapters));
        Server = new GenerationServer(Generator, Options, logs => logs.AddProvider(Logs));
        await Server.StartAsync();
        Client = new HttpClient { BaseAddress = Server.Address, Timeout = TimeSpan.FromSeconds(20) };
    }

    public async Task DisposeAsync()
    {
        Generator.Open();
        Client.Dispose();
        await Server.DisposeAsync();
    }

    public static StringContent Body(string json, string type = "application/json") =>
        new(json, Encoding.UTF8, new MediaTypeHeaderValue(type));

    /// <summary>POST /v1/images → (status, JSON body).</summary>
    public async Task<(int Status, JsonObject Json)> Post(string json)
    {
        using var response = await Client.PostAsync("/v1/images", Body(json));
        return ((int)response.StatusCode, JsonNode.Parse(await response.Content.ReadAsStringAsync())!.AsObject());
    }

    /// <summary>A job posted, expected queued (202); its id.</summary>
    public async Task<string> Submit(string json)
    {
        var (status, body) = await Post(json);
        Assert.True(status == 202, $"expected 202, got {status}: {body}");
        return (string)body["id"]!;
    }

    /// <summary>The job once it has finished (at most 10 s), as GET /v1/jobs/{id} reports it.</summary>
    public async Task<JsonObject> Finished(string id)
    {
        await Server.Jobs.Find(id)!.Finished.WaitAsync(TimeSpan.FromSeconds(10));
        return await Job(id);
    }

    /// <summary>Every event of a job's stream, read to its end (the terminal event).</summary>
    public async Task<List<(string Name, JsonObject Data)>> Events(string id)
    {
        var events = new List<(string Name, JsonObject Data)>();
        using var stream = await Client.GetStreamAsync($"/v1/jobs/{id}/events");
        using var reader = new StreamReader(stream);
        string? name = null;
        while (await reader.ReadLineAsync() is { } line)
            if (line.StartsWith("event: ", StringComparison.Ordinal)) name = line[7..];
            else if (line.StartsWith("data: ", StringComparison.Ordinal))
                events.Add((name!, JsonNode.Parse(line[6..])!.AsObject()));
        return events;
    }

    public async Task<JsonObject> Job(string id) =>
        JsonNode.Parse(await Client.GetStringAsync($"/v1/jobs/{id}"))!.AsObject();

    /// <summary>The value of a metric line (name with labels, as exposed) in GET /metrics; 0 when absent.</summary>
    public async Task<double> Metric(string name)
    {
        var text = await Client.GetStringAsync("/metrics");
        var line = text.Split('\n').FirstOrDefault(l => l.StartsWith(name + " ", StringComparison.Ordinal));
        return line is null ? 0
            : double.Parse(line[(name.Length + 1)..], System.Globalization.CultureInfo.InvariantCulture);
    }
}

/// <summary>Every log line with the values of its scopes (RequestId, JobId).</summary>
sealed class CapturedLogs : ILoggerProvider, ISupportExternalScope
{
    IExternalScopeProvider _scopes = new LoggerExternalScopeProvider();

    public ConcurrentQueue<(string Message, Dictionary<string, object?> Scope)> Lines { get; } = new();

    public ILogger CreateLogger(string category) => new Logger(this);
    public void SetScopeProvider(IExternalScopeProvider scopes) => _scopes = scopes;
    public void Dispose() { }

    sealed class Logger(CapturedLogs owner) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => owner._scopes.Push(state);
        public bool IsEnabled(LogLevel level) => true;

        public void Log<TState>(LogLevel level, EventId id, TState state, Exception? e,
            Func<TState, Exception?, string> format)
        {
            var scope = new Dictionary<string, object?>();
            owner._scopes.ForEachScope((s, d) =>
            {
                if (s is IEnumerable<KeyValuePair<string, object>> pairs)
                    foreach (var (k, v) in pairs) d[k] = v;
            }, scope);
            owner.Lines.Enqueue((format(state, e), scope));
        }
    }
}
