namespace LdmLab.Interop.Hub;

/// <summary>How far one file's download has come: bytes on disk (a resumed one starts above 0) of the total.</summary>
public sealed record HubProgress(string RepoId, string FileName, long Bytes, long Total);

/// <summary>
/// Where and how <see cref="HubClient"/> fetches from a Hugging Face hub. Every setting is a plain value passed in;
/// <see cref="FromEnvironment"/> builds them from huggingface_hub's variables as the run settings captured them at
/// the edge (<see cref="Runtime.RunSettings.HubVariables"/>), so that library code and tests never read the
/// process's variables.
/// </summary>
public sealed record HubOptions
{
    /// <summary>A branch, tag or full 40-hex commit hash (a cached commit hash needs no request at all).</summary>
    public string Revision { get; init; } = "main";

    /// <summary>
    /// A weights variant such as "fp16": <see cref="HubClient.SnapshotForPipeline"/> takes
    /// <c>diffusion_pytorch_model.fp16.safetensors</c> / <c>model.fp16.safetensors</c> where the repository has them
    /// and the plain name where it does not (as diffusers does).
    /// </summary>
    public string? Variant { get; init; }

    /// <summary>A folder inside the repository that <see cref="HubClient.DownloadFile"/> paths start in.</summary>
    public string? Subfolder { get; init; }

    /// <summary>A hub access token (hf_…), sent as <c>Authorization: Bearer</c>; private and gated repos need
    /// one.</summary>
    public string? Token { get; init; }

    /// <summary>No request at all: files come from the cache (refs/ + snapshots/) or the call fails naming the
    /// repo.</summary>
    public bool Offline { get; init; }

    /// <summary>The hub cache folder (huggingface_hub's HF_HUB_CACHE), shared with Python's huggingface_hub.</summary>
    public string CacheDir { get; init; } = Path.Combine(
        Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache", "huggingface", "hub");

    /// <summary>The hub's base address; a mirror's address works the same way.</summary>
    public Uri Endpoint { get; init; } = new("https://huggingface.co");

    /// <summary>
    /// The client requests go through (proxies, handlers in tests). It must not follow redirects itself
    /// (<c>HttpClientHandler.AllowAutoRedirect = false</c>): the hub's metadata is on the redirect response and an
    /// access token must not travel to the storage host. Null: a shared client made that way.
    /// </summary>
    public HttpClient? HttpClient { get; init; }

    /// <summary>Called as each file's bytes arrive (from the downloading thread).</summary>
    public Action<HubProgress>? Progress { get; init; }

    /// <summary>
    /// Re-hash cached LFS blobs (those named by their SHA-256) before returning them, so that a file damaged on disk
    /// is reported rather than loaded. Reads every cached weight file once per call; off by default.
    /// </summary>
    public bool VerifyCache { get; init; }

    /// <summary>Seconds to wait for the hub's answer to a metadata request (HEAD or revision API).</summary>
    public double MetadataTimeoutSeconds { get; init; } = 30;

    /// <summary>
    /// Options from huggingface_hub's environment variables: HF_HOME (default $XDG_CACHE_HOME/huggingface or
    /// ~/.cache/huggingface), HF_HUB_CACHE (default $HF_HOME/hub; the legacy HUGGINGFACE_HUB_CACHE also counts),
    /// HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE (1/true/yes/on), HF_TOKEN (or HUGGING_FACE_HUB_TOKEN, else the token
    /// file HF_TOKEN_PATH, default $HF_HOME/token, that <c>huggingface-cli login</c> writes) and HF_ENDPOINT.
    /// </summary>
    /// <param name="variable">reads one variable (default: the settings in force,
    /// <see cref="Runtime.Lab.Settings"/>' <see cref="Runtime.RunSettings.HubVariable"/>); tests pass a
    /// dictionary's.</param>
    public static HubOptions FromEnvironment(Func<string, string?>? variable = null)
    {
        var settings = Runtime.Lab.Settings;
        variable ??= settings.HubVariable;
        string? Get(string name) => variable(name) is { Length: > 0 } v ? v : null;
        var home = Get("HOME") ?? Get("USERPROFILE")
                   ?? Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        string Expand(string path) =>
            path == "~" ? home : path.StartsWith("~/", StringComparison.Ordinal) ? Path.Combine(home, path[2..]) : path;
        var hfHome = Expand(Get("HF_HOME") ?? Path.Combine(Get("XDG_CACHE_HOME") ?? Path.Combine(home, ".cache"),
            "huggingface"));
        var cache = Expand(Get("HF_HUB_CACHE") ?? Get("HUGGINGFACE_HUB_CACHE") ?? Path.Combine(hfHome, "hub"));
        var token = CleanToken(Get("HF_TOKEN") ?? Get("HUGGING_FACE_HUB_TOKEN"));
        if (token is null)
        {
            var tokenFile = Expand(Get("HF_TOKEN_PATH") ?? Path.Combine(hfHome, "token"));
            try { token = File.Exists(tokenFile) ? CleanToken(File.ReadAllText(tokenFile)) : null; }
            catch (IOException) { token = null; }
            catch (UnauthorizedAccessException) { token = null; }
        }
        var endpoint = Get("HF_ENDPOINT")?.TrimEnd('/');
        if (endpoint is not null && !Uri.TryCreate(endpoint, UriKind.Absolute, out _))
            throw new ArgumentException($"HF_ENDPOINT '{endpoint}' is not an absolute address such as " +
                                        "https://huggingface.co; fix or unset the variable");
        return new HubOptions
        {
            CacheDir = cache,
            Offline = IsTrue(Get("HF_HUB_OFFLINE") ?? Get("TRANSFORMERS_OFFLINE")),
            Token = token,
            Endpoint = endpoint is null ? new Uri("https://huggingface.co") : new Uri(endpoint),
        };
    }

    /// <summary>huggingface_hub's truth values: 1, true, yes, on (any case).</summary>
    static bool IsTrue(string? value) =>
        value?.Trim().ToUpperInvariant() is "1" or "TRUE" or "YES" or "ON";

    /// <summary>A token without surrounding space or line breaks; empty is none (huggingface_hub's rule).</summary>
    static string? CleanToken(string? token) =>
        token?.Replace("\r", "").Replace("\n", "").Trim() is { Length: > 0 } t ? t : null;
}
