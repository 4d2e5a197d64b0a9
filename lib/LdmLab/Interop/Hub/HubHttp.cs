using System.Net;
using System.Net.Http.Headers;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace LdmLab.Interop.Hub;

/// <summary>What a repository holds at a revision: the commit hash and every file's name (the revision API).</summary>
public sealed record RepoRevision(string Sha, IReadOnlyList<string> Files);

/// <summary>
/// A file's metadata from the hub's HEAD answer: the commit the revision resolved to (X-Repo-Commit), the ETag that
/// names the blob (X-Linked-Etag for LFS files, else ETag), the size (X-Linked-Size, else Content-Length) and where
/// to GET the bytes (the storage host's address for LFS files, from the redirect's Location).
/// </summary>
public sealed record HubFileMetadata(string Commit, string Etag, long Size, Uri Location);

/// <summary>
/// The hub's HTTP protocol as huggingface_hub speaks it: <c>GET api/models/{repo}/revision/{revision}</c>,
/// <c>HEAD {repo}/resolve/{revision}/{file}</c> without following the LFS redirect (its headers carry the
/// metadata), and GETs that follow redirects themselves so that the token is not sent to another host.
/// </summary>
static class HubHttp
{
    /// <summary>A client that leaves redirects and compression to this code (sizes are the real bytes').</summary>
    static readonly Lazy<HttpClient> Shared = new(() => new HttpClient(new SocketsHttpHandler
    {
        AllowAutoRedirect = false,
        AutomaticDecompression = DecompressionMethods.None,
        ConnectTimeout = TimeSpan.FromSeconds(30),
    })
    { Timeout = Timeout.InfiniteTimeSpan });

    internal static HttpClient Client(HubOptions o) => o.HttpClient ?? Shared.Value;

    const int MaxRedirects = 10;

    static Uri Base(HubOptions o) => new(o.Endpoint.ToString().TrimEnd('/') + "/");

    static string Escape(string path) => string.Join('/', path.Split('/').Select(Uri.EscapeDataString));

    /// <summary>{endpoint}/{repo}/resolve/{revision}/{file}, as huggingface_hub's hf_hub_url builds it.</summary>
    internal static Uri ResolveUrl(HubOptions o, string repoId, string revision, string fileName) =>
        new(Base(o), $"{repoId}/resolve/{Uri.EscapeDataString(revision)}/{Escape(fileName)}");

    static HttpRequestMessage Request(HttpMethod method, Uri url, string? token)
    {
        var request = new HttpRequestMessage(method, url);
        request.Headers.UserAgent.Add(new ProductInfoHeaderValue("LdmLab", "1.0"));
        request.Headers.AcceptEncoding.Add(new StringWithQualityHeaderValue("identity"));
        if (token is not null) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        return request;
    }

    /// <summary>Sends one request; connection failures and timeouts become Network <see cref="HubException"/>s.
    /// </summary>
    static async Task<HttpResponseMessage> Send(HubOptions o, HttpRequestMessage request, string repoId,
        string? fileName, TimeSpan? timeout, CancellationToken ct)
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ct);
        if (timeout is { } t) cts.CancelAfter(t);
        try
        {
            return await Client(o).SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cts.Token);
        }
        catch (Exception e) when (e is HttpRequestException or IOException
                                      || e is OperationCanceledException && !ct.IsCancellationRequested)
        {
            var what = fileName is null ? $"'{repoId}'" : $"'{fileName}' of '{repoId}'";
            throw new HubException(HubErrorKind.Network, repoId, fileName, null,
                $"could not reach {request.RequestUri?.GetLeftPart(UriPartial.Authority)} for {what} " +
                $"({e.Message}); check the connection and HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache", e);
        }
    }

    /// <summary>The commit and file list of a revision (api/models/{repo}/revision/{revision}).</summary>
    internal static async Task<RepoRevision> GetRevision(HubOptions o, string repoId, string revision,
        CancellationToken ct)
    {
        var url = new Uri(Base(o), $"api/models/{repoId}/revision/{Uri.EscapeDataString(revision)}");
        using var response = await Send(o, Request(HttpMethod.Get, url, o.Token), repoId, null,
            TimeSpan.FromSeconds(o.MetadataTimeoutSeconds), ct);
        if (!response.IsSuccessStatusCode)
            throw HubException.FromResponse(response, repoId, null, revision, o.Endpoint);
        string text;
        try { text = await response.Content.ReadAsStringAsync(ct); }
        catch (Exception e) when (e is HttpRequestException or IOException)
        {
            throw new HubException(HubErrorKind.Network, repoId, null, null,
                $"the revision API's answer for '{repoId}' broke off ({e.Message}); check the connection", e);
        }
        return ParseRevision(repoId, text);
    }

    /// <summary>Reads the revision API's JSON: a 40-hex "sha" and "siblings": [{"rfilename": …}, …].</summary>
    internal static RepoRevision ParseRevision(string repoId, string text)
    {
        JsonNode? json;
        try { json = JsonNode.Parse(text); }
        catch (JsonException e)
        {
            throw Protocol(repoId, null, $"the revision API's answer is not JSON ({e.Message})", e);
        }
        if (json is not JsonObject root) throw Protocol(repoId, null, "the revision API's answer is not a JSON object");
        var sha = root["sha"] is JsonValue v && v.TryGetValue<string>(out var s) ? s : null;
        if (sha is null || !HubNames.IsCommitHash(sha))
            throw Protocol(repoId, null, "the revision API gave no 40-hex commit 'sha'");
        if (root["siblings"] is not JsonArray siblings)
            throw Protocol(repoId, null, "the revision API gave no 'siblings' list");
        var files = new List<string>();
        foreach (var sibling in siblings)
        {
            if (sibling is not JsonObject so || so["rfilename"] is not JsonValue fv
                || !fv.TryGetValue<string>(out var f))
                throw Protocol(repoId, null, "a 'siblings' entry of the revision API has no 'rfilename' string");
            HubNames.ValidateFileName(repoId, f);
            files.Add(f);
        }
        return new RepoRevision(sha, files);
    }

    /// <summary>
    /// HEAD {repo}/resolve/{revision}/{file}: follows redirects to the same host (a renamed repository) and stops at
    /// one to another host (the LFS storage), whose headers carry the metadata, as huggingface_hub does.
    /// </summary>
    internal static async Task<HubFileMetadata> Head(HubOptions o, string repoId, string revision, string fileName,
        CancellationToken ct)
    {
        var url = ResolveUrl(o, repoId, revision, fileName);
        for (int hop = 0; ; hop++)
        {
            using var response = await Send(o, Request(HttpMethod.Head, url, o.Token), repoId, fileName,
                TimeSpan.FromSeconds(o.MetadataTimeoutSeconds), ct);
            int status = (int)response.StatusCode;
            var location = response.Headers.Location is { } l ? Http(url, l) : null;
            bool redirect = status is >= 300 and < 400;
            if (redirect && location is null)
                throw Protocol(repoId, fileName, $"a {status} redirect without an http(s) Location");
            if (redirect && location!.Authority == url.Authority
                && HubException.Header(response, "X-Linked-Etag") is null && hop < MaxRedirects)
            {
                url = location;
                continue;
            }
            if (!redirect && !response.IsSuccessStatusCode)
                throw HubException.FromResponse(response, repoId, fileName, revision, o.Endpoint);
            return Metadata(response, repoId, fileName, redirect ? location! : url);
        }
    }

    static HubFileMetadata Metadata(HttpResponseMessage response, string repoId, string fileName, Uri location)
    {
        var commit = HubException.Header(response, "X-Repo-Commit");
        if (commit is null || !HubNames.IsCommitHash(commit))
            throw Protocol(repoId, fileName, "the answer has no X-Repo-Commit commit hash: the endpoint is not a " +
                                             "hub, or a proxy or an HttpClient that follows redirects hides the " +
                                             "hub's headers");
        var etag = (HubException.Header(response, "X-Linked-Etag") ?? response.Headers.ETag?.ToString())?
            .Replace("W/", "").Trim('"');
        // the ETag names a file in blobs/: hex on the real hub; anything but [A-Za-z0-9._-] is refused
        if (etag is null || etag.Length is 0 or > 128 || etag is "." or ".."
            || !etag.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-'))
            throw Protocol(repoId, fileName, "the answer has no usable ETag");
        bool redirect = (int)response.StatusCode is >= 300 and < 400;
        var sizeText = HubException.Header(response, "X-Linked-Size")
                       ?? (redirect ? null : response.Content.Headers.ContentLength?.ToString());
        if (!long.TryParse(sizeText, out var size) || size < 0)
            throw Protocol(repoId, fileName, "the answer gives no file size (X-Linked-Size or Content-Length)");
        return new HubFileMetadata(commit, etag, size, location);
    }

    /// <summary>
    /// GET with an optional Range from byte <paramref name="from"/>, following redirects (at most ten); the token
    /// goes only to the hub's own host (<see cref="HubOptions.Endpoint"/>): a file's location on another host — the
    /// signed storage address of an LFS file — never receives it, on the first request or after a redirect
    /// (huggingface_hub: "CDN ⇒ the url is signed ⇒ don't send auth").
    /// </summary>
    internal static async Task<HttpResponseMessage> Get(HubOptions o, Uri url, long from, string repoId,
        string fileName, string revision, CancellationToken ct)
    {
        var token = o.Token;
        var origin = o.Endpoint.Authority;
        for (int hop = 0; ; hop++)
        {
            var request = Request(HttpMethod.Get, url, url.Authority == origin ? token : null);
            if (from > 0) request.Headers.Range = new RangeHeaderValue(from, null);
            var response = await Send(o, request, repoId, fileName, TimeSpan.FromSeconds(o.MetadataTimeoutSeconds), ct);
            int status = (int)response.StatusCode;
            if (status is >= 300 and < 400 && response.Headers.Location is { } l && hop < MaxRedirects)
            {
                response.Dispose();
                url = Http(url, l) ?? throw Protocol(repoId, fileName, $"a redirect to '{l}', not an http(s) address");
                continue;
            }
            if (response.IsSuccessStatusCode) return response;
            using (response) throw HubException.FromResponse(response, repoId, fileName, revision, o.Endpoint);
        }
    }

    /// <summary>A Location resolved against the request's address, if it is an http(s) address.</summary>
    static Uri? Http(Uri from, Uri location) =>
        Uri.TryCreate(from, location, out var to) && (to.Scheme == Uri.UriSchemeHttp || to.Scheme == Uri.UriSchemeHttps)
            ? to : null;

    internal static HubException Protocol(string repoId, string? fileName, string what, Exception? inner = null) =>
        new(HubErrorKind.Protocol, repoId, fileName, null,
            $"'{repoId}'{(fileName is null ? "" : $", '{fileName}'")}: {what}. Check HF_ENDPOINT " +
            "(HubOptions.Endpoint) points at a Hugging Face hub or mirror", inner);
}
