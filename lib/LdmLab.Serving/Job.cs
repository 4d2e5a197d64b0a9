using System.Runtime.CompilerServices;
using System.Text.Json.Nodes;

namespace LdmLab.Serving;

public enum JobState { Queued, Running, Succeeded, Failed, Cancelled }

/// <summary>One server-sent event of a job: its name (state, progress, preview, succeeded, failed, cancelled) and
/// its JSON data.</summary>
public sealed record JobEvent(string Name, JsonObject Data);

/// <summary>
/// One image request on its way through the server: queued → running → succeeded | failed | cancelled, each move made
/// once under a lock (a cancel racing the worker's finish has one winner). Every event is kept in order, so a client
/// that connects to the event stream late is replayed what it missed; the stream ends with the terminal event.
/// </summary>
public sealed class Job
{
    readonly object _gate = new();
    readonly List<JobEvent> _events = [];
    readonly CancellationTokenSource _cancel = new();
    readonly TaskCompletionSource _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
    TaskCompletionSource _changed = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public string Id { get; } = Guid.NewGuid().ToString("N");
    public ImageRequest Request { get; }
    /// <summary>The X-Request-Id of the POST that made it (the logs carry it).</summary>
    public string RequestId { get; }
    public string CacheKey { get; }
    public DateTimeOffset CreatedAt { get; } = DateTimeOffset.UtcNow;
    public DateTimeOffset? StartedAt { get; private set; }
    public DateTimeOffset? FinishedAt { get; private set; }
    public JobState State { get; private set; } = JobState.Queued;
    /// <summary>Denoising steps done.</summary>
    public int Step { get; private set; }
    /// <summary>How many requests shared its denoiser calls (1 when it ran alone).</summary>
    public int BatchSize { get; private set; }
    /// <summary>True when the image came from the result cache.</summary>
    public bool Cached { get; private set; }
    public string? Error { get; private set; }
    /// <summary>The PNG, once it succeeded.</summary>
    public byte[]? Png { get; private set; }

    public Job(ImageRequest request, string requestId, string cacheKey)
    {
        Request = request; RequestId = requestId; CacheKey = cacheKey;
        Publish("state", new JsonObject { ["state"] = "queued" });
    }

    /// <summary>Cancelled when the job is: the worker checks it between denoising steps.</summary>
    public CancellationToken Cancellation => _cancel.Token;
    public bool IsFinished => State is JobState.Succeeded or JobState.Failed or JobState.Cancelled;
    /// <summary>Completes when the job reaches a terminal state.</summary>
    public Task Finished => _finished.Task;

    /// <summary>Queued → running; false when it was cancelled while it waited.</summary>
    public bool TryStart(int batchSize)
    {
        lock (_gate)
        {
            if (State != JobState.Queued) return false;
            State = JobState.Running; StartedAt = DateTimeOffset.UtcNow; BatchSize = batchSize;
            Publish("state", new JsonObject { ["state"] = "running", ["batch_size"] = batchSize });
            return true;
        }
    }

    /// <summary>Step <paramref name="step"/> of <paramref name="steps"/> is done.</summary>
    public void Progress(int step, int steps)
    {
        lock (_gate)
        {
            if (State != JobState.Running) return;
            Step = step;
            Publish("progress", new JsonObject { ["step"] = step, ["steps"] = steps });
        }
    }

    /// <summary>The id of the identical request in flight whose compute this job shares
    /// (<see cref="InFlightRequests"/>); null when it has its own.</summary>
    public string? SharedWith { get; internal set; }

    /// <summary>A leader's preview event, relayed as it is (<see cref="InFlightRequests.Follow"/>).</summary>
    internal void Relay(JobEvent e)
    {
        lock (_gate)
            if (State == JobState.Running) Publish(e.Name, (JsonObject)e.Data.DeepClone());
    }

    /// <summary>Running (behind a leader that was cancelled) → queued again, to be computed on its own; false when
    /// it had finished.</summary>
    internal bool Requeue()
    {
        lock (_gate)
        {
            if (IsFinished) return false;
            if (State == JobState.Queued) return true;
            State = JobState.Queued; Step = 0; StartedAt = null; SharedWith = null;
            Publish("state", new JsonObject { ["state"] = "queued" });
            return true;
        }
    }

    public void Preview(int step, byte[] png)
    {
        lock (_gate)
        {
            if (State != JobState.Running) return;
            Publish("preview", new JsonObject { ["step"] = step, ["image"] = DataUrl(png) });
        }
    }

    /// <summary>One grey PNG per prompt word (white: most attention), in the prompt's order, when the request
    /// asked for attention maps; set before <see cref="Succeed"/>.</summary>
    public IReadOnlyList<(string Word, byte[] Png)>? AttentionMaps { get; private set; }

    public void SetAttentionMaps(IReadOnlyList<(string Word, byte[] Png)> maps)
    {
        lock (_gate) AttentionMaps = maps;
    }

    public bool Succeed(byte[] png, bool cached = false) => Finish(JobState.Succeeded, () =>
    {
        Png = png; Cached = cached; Step = Request.Steps;
        var json = new JsonObject
        {
            ["state"] = "succeeded", ["cached"] = cached, ["image"] = DataUrl(png),
            ["image_url"] = $"/v1/jobs/{Id}/image",
        };
        if (AttentionMaps is not null) json["attention_maps"] = MapsJson();
        return json;
    });

    /// <summary>[{word, image: a data URL of the word's grey map, the image's size}].</summary>
    JsonArray MapsJson() =>
        new(AttentionMaps!.Select(m => (JsonNode)new JsonObject { ["word"] = m.Word, ["image"] = DataUrl(m.Png) })
            .ToArray());

    public bool Fail(string error) => Finish(JobState.Failed, () =>
    {
        Error = error;
        return new JsonObject { ["state"] = "failed", ["error"] = error };
    });

    /// <summary>Queued or running → cancelled (the worker stops its compute at the next step); false when it had
    /// already finished.</summary>
    public bool Cancel(string reason)
    {
        bool done = Finish(JobState.Cancelled, () =>
        {
            Error = reason;
            return new JsonObject { ["state"] = "cancelled", ["reason"] = reason };
        });
        if (done) _cancel.Cancel();
        return done;
    }

    bool Finish(JobState state, Func<JsonObject> data)
    {
        lock (_gate)
        {
            if (IsFinished) return false;
            State = state; FinishedAt = DateTimeOffset.UtcNow;
            Publish(state.ToString().ToLowerInvariant(), data());
        }
        _finished.TrySetResult();
        return true;
    }

    void Publish(string name, JsonObject data)
    {
        lock (_gate)
        {
            _events.Add(new JobEvent(name, data));
            var changed = _changed;
            _changed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            changed.TrySetResult();
        }
    }

    /// <summary>Every event from the first, then each new one as it happens, until the terminal event.</summary>
    public async IAsyncEnumerable<JobEvent> Events([EnumeratorCancellation] CancellationToken ct = default)
    {
        for (int next = 0; ;)
        {
            JobEvent[] fresh;
            Task changed;
            bool finished;
            lock (_gate)
            {
                fresh = _events.Skip(next).ToArray();
                next = _events.Count;
                changed = _changed.Task;
                finished = IsFinished;
            }
            foreach (var e in fresh) yield return e;
            if (finished) yield break;
            await changed.WaitAsync(ct);
        }
    }

    /// <summary>GET /v1/jobs/{id}: state, parameters, progress, and the image once there is one.</summary>
    public JsonObject ToJson()
    {
        lock (_gate)
        {
            var json = new JsonObject
            {
                ["id"] = Id, ["state"] = State.ToString().ToLowerInvariant(), ["request_id"] = RequestId,
                ["parameters"] = Request.ToJson(),
                ["progress"] = new JsonObject { ["step"] = Step, ["steps"] = Request.Steps },
                ["batch_size"] = BatchSize, ["cached"] = Cached,
                ["created_at"] = CreatedAt, ["started_at"] = StartedAt, ["finished_at"] = FinishedAt,
                ["events_url"] = $"/v1/jobs/{Id}/events",
            };
            if (Error is not null) json["error"] = Error;
            if (SharedWith is not null) json["shared_with"] = SharedWith;
            if (Png is not null)
            {
                json["image_url"] = $"/v1/jobs/{Id}/image";
                json["image"] = DataUrl(Png);
            }
            if (AttentionMaps is not null) json["attention_maps"] = MapsJson();
            return json;
        }
    }

    static string DataUrl(byte[] png) => "data:image/png;base64," + Convert.ToBase64String(png);
}
