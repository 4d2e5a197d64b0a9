using System.Net;

namespace LdmLab.Interop.Hub;

/// <summary>What went wrong in a hub request or in the cache; each kind's message says what to do about it.</summary>
public enum HubErrorKind
{
    /// <summary>No such repository, or a private one without a token that may read it (answered alike).</summary>
    RepoNotFound,
    /// <summary>The branch, tag or commit does not exist in the repository.</summary>
    RevisionNotFound,
    /// <summary>The repository has no such file at that revision.</summary>
    EntryNotFound,
    /// <summary>A gated repository whose licence the token's account has not accepted (or no token was sent).</summary>
    GatedRepo,
    /// <summary>401: no token, or one the hub does not accept.</summary>
    Unauthorized,
    /// <summary>403: the token may not read this repository.</summary>
    Forbidden,
    /// <summary>Offline (or the hub unreachable) and the file or snapshot is not in the cache.</summary>
    NotCached,
    /// <summary>The hub could not be reached, or a transfer broke; a partial download is kept to resume.</summary>
    Network,
    /// <summary>A file's size or SHA-256 is not what the hub reported (a download or a cached blob).</summary>
    Corrupt,
    /// <summary>A file name from the server that would leave the cache folder.</summary>
    UnsafeFileName,
    /// <summary>A component has only pickle weights (.bin, .ckpt, .pt, .pth), which LdmLab never loads.</summary>
    PickleOnly,
    /// <summary>The repository is not a pipeline LdmLab can read (no model_index.json, a component missing).</summary>
    NotAPipeline,
    /// <summary>The server's answer is not what the hub sends (bad JSON, missing headers, an odd status).</summary>
    Protocol,
}

/// <summary>
/// A failed hub download or cache lookup: the repository, the file (when one is concerned), the HTTP status (when
/// the hub answered) and a message that names them and says how to fix it.
/// </summary>
public sealed class HubException(HubErrorKind kind, string repoId, string? fileName, int? statusCode, string message,
    Exception? inner = null) : IOException(message, inner)
{
    public HubErrorKind Kind { get; } = kind;
    public string RepoId { get; } = repoId;
    public string? FileName { get; } = fileName;
    public int? StatusCode { get; } = statusCode;

    /// <summary>
    /// The typed error for a failed hub answer, after huggingface_hub's rules: the X-Error-Code header first
    /// (RepoNotFound, RevisionNotFound, EntryNotFound, GatedRepo), then the status (401, 403, 404).
    /// </summary>
    internal static HubException FromResponse(HttpResponseMessage response, string repoId, string? fileName,
        string revision, Uri endpoint)
    {
        int status = (int)response.StatusCode;
        string? code = Header(response, "X-Error-Code"), serverMessage = Header(response, "X-Error-Message");
        string what = fileName is null ? $"'{repoId}'" : $"'{fileName}' of '{repoId}'";
        string said = serverMessage is null ? "" : $" (the hub says: {serverMessage})";
        const string TokenFix = "log in (`huggingface-cli login` writes $HF_HOME/token) or set HF_TOKEN " +
                                "(HubOptions.Token) to a token of an account that may read it";
        (HubErrorKind kind, string text) = (code, status) switch
        {
            ("GatedRepo", _) =>
                (HubErrorKind.GatedRepo, $"{repoId} is a gated repository{said}: accept its licence at " +
                                         $"{new Uri(endpoint, repoId)} with your account, then {TokenFix}"),
            ("RevisionNotFound", _) =>
                (HubErrorKind.RevisionNotFound, $"revision '{revision}' of '{repoId}' not found{said}: check the " +
                                                "branch, tag or commit hash (HubOptions.Revision)"),
            ("EntryNotFound", _) or (null, 404) when fileName is not null =>
                (HubErrorKind.EntryNotFound, $"{what} not found at revision '{revision}'{said}: check the file's " +
                                             "name and folder (HubOptions.Subfolder) and the revision"),
            ("RepoNotFound", _) or (_, 404) =>
                (HubErrorKind.RepoNotFound, $"repository '{repoId}' not found ({status}){said}: check the spelling " +
                                            $"of the repo id (owner/name); if it is private or gated, {TokenFix}"),
            (_, 401) =>
                (HubErrorKind.Unauthorized, $"401 Unauthorized for {what}{said}: the repository is private or " +
                                            $"gated, or the token is invalid; {TokenFix}"),
            (_, 403) =>
                (HubErrorKind.Forbidden, $"403 Forbidden for {what}{said}: the token may not read it; if the " +
                                         $"repository is gated, accept its licence at {new Uri(endpoint, repoId)}, " +
                                         $"then {TokenFix}"),
            _ =>
                (HubErrorKind.Protocol, $"{what}: the hub answered {status} {response.ReasonPhrase}{said}; " +
                                        "try again later, or check HF_ENDPOINT (HubOptions.Endpoint)"),
        };
        return new HubException(kind, repoId, fileName, status, text);
    }

    /// <summary>A header's first value, or null.</summary>
    internal static string? Header(HttpResponseMessage response, string name) =>
        response.Headers.TryGetValues(name, out var values) ? values.FirstOrDefault()
        : response.Content.Headers.TryGetValues(name, out var contentValues) ? contentValues.FirstOrDefault()
        : null;

    /// <summary>Whether the status means the hub was reachable but busy or down (retryable from the cache).</summary>
    internal static bool IsServerTrouble(HttpStatusCode status) => (int)status is 408 or 429 or >= 500;
}
