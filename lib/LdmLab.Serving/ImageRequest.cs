using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using LdmLab.Labs;

namespace LdmLab.Serving;

/// <summary>A request field that was missing, of the wrong type or out of range: answered 400 with the field's name
/// and what was expected (<c>{"error": {"field": "steps", "message": "…"}}</c>).</summary>
public sealed class RequestValidationException(string field, string message) : Exception(message)
{
    public string Field { get; } = field;
}

/// <summary>What a request may ask of the model: its name, native size, the multiple sizes must keep, and the
/// schedulers it runs (short names from <see cref="SamplerSpec.ByShortName"/>, or "default": the model's own).
/// </summary>
public sealed record ModelInfo(string Name, int NativeWidth, int NativeHeight, int SizeMultiple,
    string DefaultSchedulerClass)
{
    /// <summary>The LoRA adapters a request may name (<c>ldmlab serve --adapter NAME=PATH</c>), read and matched
    /// against the model at start-up.</summary>
    public IReadOnlyList<string> Adapters { get; init; } = [];

    /// <summary>True for schedulers that draw fresh noise every step from torch's generator (Euler ancestral,
    /// DDPM): their requests run alone, seeded just before, so that a seed still means one image.</summary>
    public bool IsStochastic(string scheduler) =>
        (scheduler == "default" ? DefaultSchedulerClass
            : SamplerSpec.ByShortName.TryGetValue(scheduler, out var spec) ? spec.SchedulerClass : scheduler)
        is "EulerAncestralDiscreteScheduler" or "DDPMScheduler";
}

/// <summary>One adapter of a request: a name the server was started with and its scale s (each adapted layer's
/// output becomes y + s·(α/r)·B(A x)).</summary>
public sealed record AdapterUse(string Name, double Scale);

/// <summary>
/// One POST /v1/images body, validated and with every default filled in (so that two requests that mean the same
/// image are equal, and the <see cref="CacheKey"/> is the whole request). JSON names are snake_case as in diffusers'
/// pipeline arguments: prompt, negative_prompt, steps, guidance, seed, width, height, scheduler, preview_every,
/// attention_maps (true: the final event carries one cross-attention map per prompt word).
/// </summary>
public sealed record ImageRequest(string Prompt, string NegativePrompt, int Steps, double Guidance, long Seed,
    int Width, int Height, string Scheduler, int PreviewEvery, bool AttentionMaps = false)
{
    /// <summary>init_image: a PNG (base64 or a data URL) to start from (image to image, or inpainting with
    /// <see cref="Mask"/>); resized to width × height.</summary>
    public byte[]? InitImage { get; init; }
    /// <summary>strength in (0, 1]: how far the init image is noised (1: all the way; diffusers' default 0.8).
    /// </summary>
    public double Strength { get; init; } = 0.8;
    /// <summary>mask: a PNG, white where the prompt is to be painted (needs init_image).</summary>
    public byte[]? Mask { get; init; }
    /// <summary>adapters: LoRA adapters by name with their scales (<c>[{"name": "sneaker", "scale": 0.8}]</c>),
    /// attached for this request's batch only, in the order given.</summary>
    public IReadOnlyList<AdapterUse> Adapters { get; init; } = [];

    /// <summary>The most adapters one request may name; the range of each scale.</summary>
    public const int MaxAdapters = 4;
    public const double MaxAdapterScale = 2;

    /// <summary>The largest seed: 2^53 − 1, the largest whole number a browser's JSON reader keeps exactly.</summary>
    public const long MaxSeed = (1L << 53) - 1;

    static readonly string[] Fields =
        ["prompt", "negative_prompt", "steps", "guidance", "seed", "width", "height", "scheduler", "preview_every",
        "attention_maps", "init_image", "strength", "mask", "adapters"];

    /// <summary>Requests with equal shape keys run in one denoiser call: same latent size, the same timesteps and
    /// scheduler, the same guidance scale (one w per call; w ≤ 1 also drops the unconditional half), the same adapters
    /// with the same scales (they are attached to the model for the whole call). A stochastic
    /// scheduler's request (<see cref="ModelInfo.IsStochastic"/>) has a shape of its own. Requests for attention
    /// maps batch only with each other: recording takes the unfused attention path (equal up to rounding).</summary>
    public string ShapeKey(string jobId, ModelInfo model) =>
        model.IsStochastic(Scheduler) || InitImage is not null ? "alone:" + jobId
            : FormattableString.Invariant($"{Width}x{Height}|{Steps}|{Scheduler}|{Guidance:R}|{AttentionMaps}|") +
              string.Join(",", Adapters.Select(a => FormattableString.Invariant($"{a.Name}*{a.Scale:R}")));

    /// <summary>The whole request that decides the image (everything but <see cref="PreviewEvery"/>), with the
    /// model: equal keys → identical PNG bytes.</summary>
    public string CacheKey(string model)
    {
        var json = ToJson();
        json.Remove("preview_every");
        json["model"] = model;
        return json.ToJsonString();
    }

    public JsonObject ToJson() => new()
    {
        ["prompt"] = Prompt, ["negative_prompt"] = NegativePrompt, ["steps"] = Steps, ["guidance"] = Guidance,
        ["seed"] = Seed, ["width"] = Width, ["height"] = Height, ["scheduler"] = Scheduler,
        ["preview_every"] = PreviewEvery, ["attention_maps"] = AttentionMaps,
        // the images by their SHA-256 (the cache key tells them apart; the job's JSON does not echo them)
        ["init_image_sha256"] = Hash(InitImage), ["strength"] = InitImage is null ? null : Strength,
        ["mask_sha256"] = Hash(Mask),
        ["adapters"] = new JsonArray(Adapters.Select(a => (JsonNode)new JsonObject
        {
            ["name"] = a.Name, ["scale"] = a.Scale,
        }).ToArray()),
    };

    static string? Hash(byte[]? png) => png is null ? null : Convert.ToHexStringLower(
        System.Security.Cryptography.SHA256.HashData(png));

    /// <summary>A request body → a request with defaults, or a <see cref="RequestValidationException"/> naming the
    /// first bad field. <paramref name="randomSeed"/> supplies the seed when none is given (the job reports it).
    /// </summary>
    public static ImageRequest Parse(JsonElement body, ModelInfo model, ServeOptions limits, Func<long> randomSeed)
    {
        if (body.ValueKind != JsonValueKind.Object)
            throw new RequestValidationException("body", $"expected a JSON object, got {Kind(body)}");
        foreach (var p in body.EnumerateObject())
            if (!Fields.Contains(p.Name))
                throw new RequestValidationException(p.Name, $"unknown field '{p.Name}': expected one of " +
                                                            string.Join(", ", Fields));
        string prompt = Text(body, "prompt", limits.MaxPromptChars, required: true)!;
        string negative = Text(body, "negative_prompt", limits.MaxPromptChars, required: false) ?? "";
        int steps = Whole(body, "steps", 1, limits.MaxSteps) ?? limits.DefaultSteps;
        double guidance = Real(body, "guidance", 0, limits.MaxGuidance) ?? 7.5;
        long seed = body.TryGetProperty("seed", out var s) ? ParseSeed(s) : randomSeed();
        int f = model.SizeMultiple;
        int maxSide = limits.MaxSide ?? 2 * Math.Max(model.NativeWidth, model.NativeHeight);
        int width = Side(body, "width", f, maxSide) ?? model.NativeWidth;
        int height = Side(body, "height", f, maxSide) ?? model.NativeHeight;
        string scheduler = SchedulerName(body);
        int preview = Whole(body, "preview_every", 0, limits.MaxSteps) ?? limits.DefaultPreviewEvery;
        bool maps = Flag(body, "attention_maps") ?? false;
        var init = Png(body, "init_image");
        double strength = Real(body, "strength", 0, 1) ?? 0.8;
        if (strength == 0) throw new RequestValidationException("strength", "strength 0: expected a number in (0, 1]");
        var mask = Png(body, "mask");
        if (init is null && (mask is not null || body.TryGetProperty("strength", out _)))
            throw new RequestValidationException(mask is not null ? "mask" : "strength",
                "init_image: required with mask and strength");
        return new ImageRequest(prompt, negative, steps, guidance, seed, width, height, scheduler, preview, maps)
        {
            InitImage = init, Strength = strength, Mask = mask, Adapters = ParseAdapters(body, model),
        };
    }

    /// <summary>adapters: a list of at most <see cref="MaxAdapters"/> objects {name, scale}, each name one the
    /// server was started with and given once, scale in [−2, 2] (default 1).</summary>
    static IReadOnlyList<AdapterUse> ParseAdapters(JsonElement body, ModelInfo model)
    {
        const string field = "adapters";
        if (!body.TryGetProperty(field, out var v) || v.ValueKind == JsonValueKind.Null) return [];
        if (v.ValueKind != JsonValueKind.Array)
            throw new RequestValidationException(field, $"{field}: expected a list of {{\"name\", \"scale\"}}, " +
                                                        $"got {Kind(v)}");
        if (v.GetArrayLength() > MaxAdapters)
            throw new RequestValidationException(field, $"{field}: {v.GetArrayLength()} adapters, expected at " +
                                                        $"most {MaxAdapters}");
        var uses = new List<AdapterUse>();
        foreach (var item in v.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Object)
                throw new RequestValidationException(field, $"{field}: expected objects {{\"name\", \"scale\"}}, " +
                                                            $"got {Kind(item)}");
            foreach (var p in item.EnumerateObject())
                if (p.Name is not ("name" or "scale"))
                    throw new RequestValidationException(field, $"{field}: unknown key '{p.Name}' (expected name " +
                                                                "and scale)");
            var known = model.Adapters.Count == 0 ? "none (the server was started without --adapter)"
                : string.Join(", ", model.Adapters);
            var name = item.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String
                ? n.GetString()! : throw new RequestValidationException(field, $"{field}: each needs a \"name\" " +
                                                                               $"string: one of {known}");
            if (!model.Adapters.Contains(name))
                throw new RequestValidationException(field, $"{field}: unknown adapter '{name}': expected one of " +
                                                            known);
            if (uses.Any(u => u.Name == name))
                throw new RequestValidationException(field, $"{field}: adapter '{name}' is given twice");
            double scale = Real(item, "scale", -MaxAdapterScale, MaxAdapterScale, field) ?? 1.0;
            uses.Add(new AdapterUse(name, scale));
        }
        return uses;
    }

    static string Kind(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.String => "a string",
        JsonValueKind.Number => "a number",
        JsonValueKind.Array => "an array",
        JsonValueKind.Object => "an object",
        JsonValueKind.Null => "null",
        _ => "a boolean",
    };

    static string? Text(JsonElement body, string name, int maxChars, bool required)
    {
        if (!body.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null)
            return required ? throw new RequestValidationException(name, $"{name}: required (a non-empty string)")
                : null;
        if (v.ValueKind != JsonValueKind.String)
            throw new RequestValidationException(name, $"{name}: expected a string, got {Kind(v)}");
        var text = v.GetString()!;
        if (required && text.Trim().Length == 0)
            throw new RequestValidationException(name, $"{name}: expected a non-empty string");
        if (text.Length > maxChars)
            throw new RequestValidationException(name, $"{name}: {text.Length} characters, expected at most " +
                                                       $"{maxChars}");
        return text;
    }

    static int? Whole(JsonElement body, string name, int min, int max)
    {
        if (!body.TryGetProperty(name, out var v)) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n) && n >= min && n <= max) return n;
        throw new RequestValidationException(name, $"{name} {v.GetRawText()}: expected a whole number in " +
                                                   $"[{min}, {max}]");
    }

    static readonly byte[] PngSignature = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A];

    /// <summary>A PNG given as base64 or a data:image/png;base64 URL, checked to decode.</summary>
    static byte[]? Png(JsonElement body, string name)
    {
        if (!body.TryGetProperty(name, out var v) || v.ValueKind == JsonValueKind.Null) return null;
        if (v.ValueKind != JsonValueKind.String)
            throw new RequestValidationException(name, $"{name}: expected a base64 PNG string, got {Kind(v)}");
        var text = v.GetString()!;
        const string dataUrl = "data:image/png;base64,";
        if (text.StartsWith(dataUrl, StringComparison.Ordinal)) text = text[dataUrl.Length..];
        byte[] bytes;
        try { bytes = Convert.FromBase64String(text); }
        catch (FormatException)
        {
            throw new RequestValidationException(name, $"{name}: not valid base64 (expected a base64 PNG)");
        }
        if (!bytes.AsSpan().StartsWith(PngSignature))
            throw new RequestValidationException(name, $"{name}: not a PNG (no PNG signature)");
        try { SixLabors.ImageSharp.Image.Identify(bytes); }
        catch (Exception e) when (e is SixLabors.ImageSharp.ImageFormatException or NotSupportedException)
        {
            throw new RequestValidationException(name, $"{name}: a damaged PNG ({e.Message})");
        }
        return bytes;
    }

    static bool? Flag(JsonElement body, string name)
    {
        if (!body.TryGetProperty(name, out var v)) return null;
        if (v.ValueKind is JsonValueKind.True or JsonValueKind.False) return v.GetBoolean();
        throw new RequestValidationException(name, $"{name} {v.GetRawText()}: expected true or false");
    }

    static double? Real(JsonElement body, string name, double min, double max, string? field = null)
    {
        if (!body.TryGetProperty(name, out var v)) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double x) && double.IsFinite(x) && x >= min
            && x <= max) return x;
        throw new RequestValidationException(field ?? name, FormattableString.Invariant(
            $"{(field is null ? "" : field + ": ")}{name} {v.GetRawText()}: expected a number in [{min}, {max}]"));
    }

    static long ParseSeed(JsonElement v) =>
        v.ValueKind == JsonValueKind.Number && v.TryGetInt64(out long n) && n is >= 0 and <= MaxSeed ? n
            : throw new RequestValidationException("seed", $"seed {v.GetRawText()}: expected a whole number in " +
                                                           $"[0, {MaxSeed.ToString(CultureInfo.InvariantCulture)}]");

    static int? Side(JsonElement body, string name, int multiple, int max)
    {
        if (!body.TryGetProperty(name, out var v)) return null;
        if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int n) && n >= multiple && n <= max
            && n % multiple == 0) return n;
        throw new RequestValidationException(name, $"{name} {v.GetRawText()}: expected a multiple of {multiple} " +
                                                   $"(the VAE's downsampling) in [{multiple}, {max}]");
    }

    static string SchedulerName(JsonElement body)
    {
        if (!body.TryGetProperty("scheduler", out var v)) return "default";
        var name = v.ValueKind == JsonValueKind.String ? v.GetString()!.ToLowerInvariant() : null;
        if (name is not null && (name == "default" || SamplerSpec.ByShortName.ContainsKey(name))) return name;
        throw new RequestValidationException("scheduler", $"scheduler {v.GetRawText()}: expected one of default, " +
                                                          string.Join(", ", SamplerSpec.ByShortName.Keys));
    }
}
