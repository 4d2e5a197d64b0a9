namespace LdmLab.Runtime;

/// <summary>
/// The settings of one run, passed in rather than read deep inside: the profile (sizes), where trained models are
/// cached, where shipped checkpoints live, the device, the thread count and the seed. The environment is read in one
/// place, <see cref="FromEnvironment"/>, which the edges call (the CLI, a notebook's first cell, the tests);
/// <see cref="Lab.Settings"/> holds the settings in force.
/// </summary>
/// <param name="Profile">quick (CI, seconds), full (CPU, the reported numbers) or gpu.</param>
/// <param name="CacheDir">Trained models, keyed by their recipe and data (default ~/.cache/ldmlab).</param>
/// <param name="CheckpointsDir">Shipped checkpoints; null: data/checkpoints of the checkout the code runs from.</param>
/// <param name="Device">A torch device name ("cpu", "cuda:0"); null: CUDA when available, else the CPU.</param>
/// <param name="Threads">Intra-op threads; null: every core.</param>
/// <param name="Seed">The seed of the run's random draws.</param>
/// <param name="FashionMnistDir">Fashion-MNIST's four .gz files; null: Debian's dataset-fashion-mnist, else the
/// download cache.</param>
/// <param name="PhotoDir">The photographs of the rate–distortion experiments; null: Debian's mate-backgrounds.</param>
/// <param name="ResNet18Dir">The DnnImageModels folder holding ResNet18Onnx/ResNet18.onnx; null: the NuGet
/// package's.</param>
public sealed record RunSettings(Profile Profile, string CacheDir, string? CheckpointsDir = null, string? Device = null,
    int? Threads = null, long Seed = 0, string? FashionMnistDir = null, string? PhotoDir = null,
    string? ResNet18Dir = null)
{
    /// <summary>
    /// huggingface_hub's variables as the environment held them when these settings were read (HF_HOME, HF_HUB_CACHE,
    /// HF_HUB_OFFLINE, HF_TOKEN, HF_ENDPOINT, their legacy names and the home folders they default from), for the
    /// hub client's defaults (<c>Interop.Hub.HubOptions.FromEnvironment</c>): read here, at the edge, with the rest.
    /// Kept as "NAME=value" entries joined by NUL (which no variable holds), so that settings compare by value.
    /// </summary>
    public string HubVariables { get; init; } = "";

    /// <summary>One captured hub variable, or null.</summary>
    public string? HubVariable(string name) =>
        HubVariables.Split('\0', StringSplitOptions.RemoveEmptyEntries)
            .FirstOrDefault(e => e.StartsWith(name + "=", StringComparison.Ordinal))?[(name.Length + 1)..];

    /// <summary>The names <see cref="HubVariables"/> captures.</summary>
    public static IReadOnlyList<string> HubVariableNames { get; } =
    [
        "HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_ENDPOINT", "XDG_CACHE_HOME", "HOME", "USERPROFILE",
    ];

    /// <summary>The default cache folder: ~/.cache/ldmlab.</summary>
    public static string DefaultCacheDir =>
        Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "ldmlab");

    /// <summary>Quick profile, the default cache, shipped checkpoints from the checkout, automatic device.</summary>
    public static RunSettings Defaults => new(Profile.Quick, DefaultCacheDir);

    /// <summary>
    /// The settings the environment asks for: LDMLAB_PROFILE (quick|full|gpu), LDMLAB_CACHE, LDMLAB_CHECKPOINTS,
    /// LDMLAB_DEVICE, LDMLAB_THREADS, LDMLAB_SEED and the data locations LDMLAB_FASHION_MNIST, LDMLAB_PHOTOS,
    /// LDMLAB_RESNET18_DIR; unset ones keep <see cref="Defaults"/>. A bad value is an
    /// <see cref="ArgumentException"/> naming the variable and what it takes.
    /// </summary>
    public static RunSettings FromEnvironment(Func<string, string?>? variable = null)
    {
        variable ??= Environment.GetEnvironmentVariable;
        string? Get(string name) => variable(name) is { Length: > 0 } v ? v.Trim() : null;
        int? threads = Get("LDMLAB_THREADS") is { } t
            ? int.TryParse(t, out var n) && n >= 1 ? n
                : throw new ArgumentException($"LDMLAB_THREADS='{t}' is not a whole number ≥ 1.", "LDMLAB_THREADS")
            : null;
        long seed = Get("LDMLAB_SEED") is { } s
            ? long.TryParse(s, out var v) ? v
                : throw new ArgumentException($"LDMLAB_SEED='{s}' is not a whole number.", "LDMLAB_SEED")
            : 0;
        return new RunSettings(Lab.ParseProfile(Get("LDMLAB_PROFILE")), Get("LDMLAB_CACHE") ?? DefaultCacheDir,
            Get("LDMLAB_CHECKPOINTS"), Get("LDMLAB_DEVICE"), threads, seed, Get("LDMLAB_FASHION_MNIST"),
            Get("LDMLAB_PHOTOS"), Get("LDMLAB_RESNET18_DIR"))
        {
            HubVariables = string.Join('\0', HubVariableNames.Select(n => (n, v: variable(n)))
                .Where(x => x.v is { Length: > 0 }).Select(x => $"{x.n}={x.v}")),
        };
    }

    /// <summary>Runs <paramref name="work"/> with these settings in force, restoring the previous ones after.</summary>
    public T Apply<T>(Func<T> work)
    {
        var previous = Lab.Settings;
        Lab.Settings = this;
        try { return work(); }
        finally { Lab.Settings = previous; }
    }
}
