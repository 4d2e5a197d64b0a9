using System.Net;

namespace LdmLab.Serving;

/// <summary>
/// The settings of one <see cref="GenerationServer"/>, passed in at the edge (<c>ldmlab serve</c>'s options); nothing
/// here is read from the environment. The limits are what <see cref="ImageRequest.Parse"/> enforces per field.
/// </summary>
public sealed record ServeOptions
{
    /// <summary>Where to listen: loopback unless a host is named on purpose (0.0.0.0 serves every interface).</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0: a free port the OS chooses (<see cref="GenerationServer.Address"/> says which).</summary>
    public int Port { get; init; } = 7860;

    /// <summary>Most requests in one denoiser call (requests of the same shape: size, steps, scheduler, guidance).
    /// </summary>
    public int MaxBatch { get; init; } = 4;
    /// <summary>Most jobs waiting (not yet running); one more is refused with 429 and Retry-After.</summary>
    public int QueueCapacity { get; init; } = 32;
    /// <summary>How long the worker waits for more same-shape requests before it runs a batch that is not full.
    /// </summary>
    public TimeSpan BatchWindow { get; init; } = TimeSpan.FromMilliseconds(20);

    public int MaxSteps { get; init; } = 150;
    public int DefaultSteps { get; init; } = 25;
    public double MaxGuidance { get; init; } = 30;
    /// <summary>Longest prompt and negative prompt in characters (CLIP reads 77 tokens of it).</summary>
    public int MaxPromptChars { get; init; } = 1000;
    /// <summary>Largest width and height in pixels; null: twice the model's native size.</summary>
    public int? MaxSide { get; init; }
    /// <summary>Send a decoded preview every this many steps unless the request says otherwise (0: none).</summary>
    public int DefaultPreviewEvery { get; init; } = 5;
    /// <summary>Largest request body; a larger one is refused with 413.</summary>
    public long MaxBodyBytes { get; init; } = 64 * 1024;

    /// <summary>Finished images kept by request (same request → the same PNG bytes without recomputing).</summary>
    public int ResultCacheCapacity { get; init; } = 128;
    /// <summary>Prompt encodings kept (<see cref="Conditioning.TextEncodingCache"/>, LRU).</summary>
    public int TextCacheCapacity { get; init; } = 256;
    /// <summary>Finished jobs remembered for GET /v1/jobs/{id} (oldest forgotten first).</summary>
    public int JobHistory { get; init; } = 1024;

    /// <summary>On shutdown, queued and running jobs get this long to finish; what is left then is cancelled.
    /// </summary>
    public TimeSpan DrainTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>Run one 1-step image at start-up before /readyz says ready.</summary>
    public bool SelfCheck { get; init; } = true;
    /// <summary>When set, every request but /healthz, /readyz and the page needs <c>Authorization: Bearer KEY</c>
    /// (401 otherwise; <see cref="AccessGuard"/>).</summary>
    public string? ApiKey { get; init; }
    /// <summary>The one origin (or *) whose pages may call the API from a browser; null: no CORS headers at all.
    /// </summary>
    public string? CorsOrigin { get; init; }
    /// <summary>A check on prompts and images (<see cref="ISafetyFilter"/>); null: none.</summary>
    public ISafetyFilter? Safety { get; init; }

    /// <summary>LoRA adapters requests may name: name → .safetensors file on this machine (clients name them,
    /// never give paths). Read and matched against the model at start-up
    /// (<see cref="PipelineBatchGenerator"/>).</summary>
    public IReadOnlyDictionary<string, string> Adapters { get; init; } = new Dictionary<string, string>();

    /// <summary>The record's printout (logs, exceptions) with the API key masked.</summary>
    bool PrintMembers(System.Text.StringBuilder builder)
    {
        var shown = this with { ApiKey = ApiKey is null ? null : "***" };
        builder.Append(System.Text.Json.JsonSerializer.Serialize(new
        {
            shown.MaxBatch, shown.QueueCapacity, shown.ApiKey, shown.CorsOrigin, shown.ModelName,
            Safety = shown.Safety?.GetType().Name,
        }));
        return true;
    }

    /// <summary>A name for the model in job parameters and the cache key.</summary>
    public string ModelName { get; init; } = "model";

    /// <summary>Throws an <see cref="ArgumentException"/> naming the first setting out of range; returns the host as
    /// an address (null for localhost and *).</summary>
    public IPAddress? Validate()
    {
        IPAddress? ip = null;
        if (Host is not ("localhost" or "*" or "0.0.0.0") && !IPAddress.TryParse(Host, out ip))
            throw new ArgumentException($"host '{Host}': expected an IP address, localhost or *");
        foreach (var (name, value, min, max) in new[]
                 {
                     (nameof(Port), Port, 0, 65535), (nameof(MaxBatch), MaxBatch, 1, int.MaxValue),
                     (nameof(QueueCapacity), QueueCapacity, 1, int.MaxValue), (nameof(MaxSteps), MaxSteps, 1, 100_000),
                     (nameof(DefaultSteps), DefaultSteps, 1, MaxSteps), (nameof(MaxPromptChars), MaxPromptChars, 1,
                         int.MaxValue),
                     (nameof(DefaultPreviewEvery), DefaultPreviewEvery, 0, MaxSteps),
                     (nameof(ResultCacheCapacity), ResultCacheCapacity, 0, int.MaxValue),
                     (nameof(TextCacheCapacity), TextCacheCapacity, 1, int.MaxValue),
                     (nameof(JobHistory), JobHistory, 1, int.MaxValue),
                 })
            if (value < min || value > max)
                throw new ArgumentException($"{name} {value}: expected a whole number in [{min}, {max}]");
        if (ApiKey is not null && (ApiKey.Length < 8 || ApiKey.Any(char.IsWhiteSpace)))
            throw new ArgumentException("api key: expected at least 8 characters and no spaces");
        if (CorsOrigin is not null && CorsOrigin != "*" && (!Uri.TryCreate(CorsOrigin, UriKind.Absolute, out var o)
                || o.GetLeftPart(UriPartial.Authority) != CorsOrigin))
            throw new ArgumentException($"cors origin '{CorsOrigin}': expected * or scheme://host[:port], e.g. " +
                                        "http://localhost:3000");
        foreach (var name in Adapters.Keys)
            if (name.Length is 0 or > 64 || !name.All(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.'))
                throw new ArgumentException($"adapter name '{name}': expected 1–64 letters, digits, '-', '_' or '.'");
        if (MaxBodyBytes < 1) throw new ArgumentException($"MaxBodyBytes {MaxBodyBytes}: expected ≥ 1");
        return ip;
    }
}
