namespace LdmLab.Serving.Load;

/// <summary>
/// A bad request and the answer it must get: the status and the field the error names
/// (<c>{"error": {"field": …}}</c>). <see cref="All"/> covers each way a body can be wrong: a field out of range, of
/// the wrong type, unknown, a damaged image, broken JSON, the wrong content type, a body over the limit.
/// </summary>
public sealed record MalformedCase(string Name, int Status, string Field, Func<LoadPlan, long, (string Body,
    string ContentType)> Make)
{
    static (string, string) Json(string body) => (body, "application/json");

    public static readonly IReadOnlyList<MalformedCase> All =
    [
        new("steps out of range", 400, "steps", (_, s) => Json($$"""{"prompt": "a bag", "steps": 0, "seed": {{s}}}""")),
        new("unknown field", 400, "colour", (_, s) =>
            Json($$"""{"prompt": "a bag", "colour": "red", "seed": {{s}}}""")),
        new("guidance of the wrong type", 400, "guidance", (_, s) =>
            Json($$"""{"prompt": "a bag", "guidance": "high", "seed": {{s}}}""")),
        new("unknown scheduler", 400, "scheduler", (_, s) =>
            Json($$"""{"prompt": "a bag", "scheduler": "warp", "seed": {{s}}}""")),
        new("width not a multiple", 400, "width", (_, s) =>
            Json($$"""{"prompt": "a bag", "width": 15, "seed": {{s}}}""")),
        new("init image not base64", 400, "init_image", (_, s) =>
            Json($$"""{"prompt": "a bag", "init_image": "%%%", "seed": {{s}}}""")),
        new("missing prompt", 400, "prompt", (_, s) => Json($$"""{"steps": 4, "seed": {{s}}}""")),
        new("broken JSON", 400, "body", (_, s) => Json($$"""{"prompt": "a bag", "seed": {{s}}""")),
        new("not JSON", 415, "Content-Type", (_, s) => ($"prompt=a bag&seed={s}", "text/plain")),
        new("body over the limit", 413, "body", (plan, s) =>
            Json($$"""{"prompt": "{{Filler(plan)}}", "seed": {{s}}}""")),
    ];

    /// <summary>A prompt 1 KB longer than the server's body limit.</summary>
    static string Filler(LoadPlan plan) => new('a', (int)Math.Min(plan.MaxBodyBytes + 1024, 64 << 20));

    /// <summary>The case request <paramref name="n"/> gets (the cases in turn).</summary>
    public static MalformedCase For(long n) => All[(int)(n % All.Count)];
}
