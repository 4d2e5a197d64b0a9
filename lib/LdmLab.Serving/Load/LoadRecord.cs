namespace LdmLab.Serving.Load;

/// <summary>
/// What happened to one request of a load run, filled in by its client: what was sent (seed, kind, the malformed
/// case), what came back (status, the error's field, the job, its final state and the seed the answer names), when,
/// and the SHA-256 of the image. <see cref="LoadLedger"/> reads a run's records.
/// </summary>
public sealed class LoadRecord(long seed, int client, RequestKind kind)
{
    public long Seed { get; } = seed;
    public int Client { get; } = client;
    public RequestKind Kind { get; } = kind;
    /// <summary>The malformed case sent (Kind = Malformed).</summary>
    public MalformedCase? Case { get; init; }
    /// <summary>How a killed request was dropped: "close" (the event stream) or "delete".</summary>
    public string? KillHow { get; init; }

    /// <summary>The POST's HTTP status; 0 when none came (connection refused, timeout).</summary>
    public int Status { get; set; }
    /// <summary>The error's field of a 4xx answer.</summary>
    public string? ErrorField { get; set; }
    public string? JobId { get; set; }
    /// <summary>The job's final state: succeeded, failed, cancelled; null when the client never saw one (lost).
    /// </summary>
    public string? Final { get; set; }
    /// <summary>The seed the answer names (the job's parameters, and the PNG's parameters chunk); -1 if they
    /// disagree.</summary>
    public long? AnsweredSeed { get; set; }
    /// <summary>The X-Request-Id the job carries.</summary>
    public string? AnsweredRequestId { get; set; }
    public string? ImageSha256 { get; set; }
    public byte[]? Png { get; set; }
    /// <summary>True when the server answered from its result cache or shared another request's compute.</summary>
    public bool Reused { get; set; }
    /// <summary>Seconds from the start of the run to the POST and to the final answer.</summary>
    public double SentAt { get; set; }
    public double? AnsweredAt { get; set; }
    /// <summary>What went wrong on the client's side (a timeout, a broken stream), if anything.</summary>
    public string? ClientError { get; set; }

    public double? LatencySeconds => AnsweredAt - SentAt;

    /// <summary>The X-Request-Id this request is sent with.</summary>
    public string RequestId => $"load-{Seed}";
}
