using System.Collections.Concurrent;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;

namespace LdmLab.Tests;

/// <summary>One repository the fake hub serves: its files (name → bytes), commit, and who may read it.</summary>
sealed class FakeRepo
{
    public Dictionary<string, byte[]> Files { get; } = new(StringComparer.Ordinal);
    public string Sha { get; init; } = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(20));
    /// <summary>Requests without "Bearer {token}" get 401 (a private repository).</summary>
    public string? RequiredToken { get; init; }
    /// <summary>Every file request gets 403 with X-Error-Code GatedRepo.</summary>
    public bool Gated { get; init; }

    public static FakeRepo FromFolder(string dir)
    {
        var repo = new FakeRepo();
        foreach (var f in Directory.EnumerateFiles(dir, "*", SearchOption.AllDirectories))
            repo.Files[Path.GetRelativePath(dir, f).Replace('\\', '/')] = File.ReadAllBytes(f);
        return repo;
    }

    /// <summary>Weights live in LFS on the hub: their ETag is the SHA-256; they redirect to the storage host.</summary>
    public static bool IsLfs(string name) =>
        name.EndsWith(".safetensors") || name.EndsWith(".bin") || name.EndsWith(".ckpt");

    /// <summary>The ETag the hub gives a file: SHA-256 for LFS files, the git blob SHA-1 otherwise.</summary>
    public static string Etag(string name, byte[] bytes) => IsLfs(name)
        ? Convert.ToHexStringLower(SHA256.HashData(bytes))
        : Convert.ToHexStringLower(SHA1.HashData([.. Encoding.ASCII.GetBytes($"blob {bytes.Length}\0"), .. bytes]));
}

/// <summary>What the fake hub was asked: method, path, and the Range and Authorization headers.</summary>
sealed record HubRequest(string Method, string Path, string? Range, string? Authorization);

/// <summary>
/// A loopback server (HttpListener on 127.0.0.1, a port from the OS) that answers like huggingface.co: the revision
/// API, HEAD/GET on {repo}/resolve/{revision}/{file} (LFS files redirect to /lfs/{sha256} with X-Linked-Etag and
/// X-Linked-Size), X-Error-Code on errors, Range requests. Hooks break or alter answers; every request is logged.
/// </summary>
sealed class FakeHub : IDisposable
{
    readonly HttpListener _listener;
    public Uri Base { get; }
    public ConcurrentDictionary<string, FakeRepo> Repos { get; } = new();
    public ConcurrentQueue<HubRequest> Log { get; } = new();
    /// <summary>Replaces the revision API's body (fuzzing).</summary>
    public Func<string, byte[]?>? RevisionBody { get; set; }
    /// <summary>For a blob GET (file name, nth GET of it from 1): bytes to send instead, and after how many of them
    /// to drop the connection (null: send all).</summary>
    public Func<string, int, byte[], (byte[] Body, int? DropAfter)>? Blob { get; set; }
    /// <summary>Where LFS files are redirected: this server under another host name (localhost), as the real hub sends
    /// them to its storage hosts.</summary>
    public Uri StorageBase => new($"http://localhost:{Base.Port}/");
    /// <summary>Alters the headers of a resolve/ answer (file name, headers) before it is sent (fuzzing).</summary>
    public Action<string, WebHeaderCollection>? ResolveHeaders { get; set; }
    readonly ConcurrentDictionary<string, int> _gets = new();

    public FakeHub()
    {
        (_listener, Base) = Loopback.Listen();
        _ = Task.Run(Serve);
    }

    public IEnumerable<HubRequest> FileRequests => Log.Where(r => !r.Path.StartsWith("/api/"));

    async Task Serve()
    {
        while (_listener.IsListening)
        {
            HttpListenerContext ctx;
            try { ctx = await _listener.GetContextAsync(); } catch { return; }
            _ = Task.Run(async () =>
            {
                try { await Answer(ctx); }
                catch { try { ctx.Response.Abort(); } catch { /* gone */ } }
            });
        }
    }

    async Task Answer(HttpListenerContext ctx)
    {
        var request = ctx.Request;
        var path = request.Url!.AbsolutePath;
        Log.Enqueue(new HubRequest(request.HttpMethod, Uri.UnescapeDataString(path), request.Headers["Range"],
            request.Headers["Authorization"]));
        var response = ctx.Response;
        var parts = path.TrimStart('/').Split('/');
        if (parts is ["lfs", var sha]) { await ServeBlob(ctx, sha); return; }
        bool api = parts is ["api", "models", _, _, "revision", _];
        if (!api && (parts.Length < 5 || parts[2] != "resolve")) { Error(response, 404, null); return; }
        var repoId = api ? $"{parts[2]}/{parts[3]}" : $"{parts[0]}/{parts[1]}";
        var revision = Uri.UnescapeDataString(api ? parts[5] : parts[3]);
        if (!Repos.TryGetValue(repoId, out var repo)) { Error(response, 404, "RepoNotFound"); return; }
        if (repo.RequiredToken is { } token && request.Headers["Authorization"] != $"Bearer {token}")
        {
            Error(response, 401, null, "Invalid credentials in Authorization header");
            return;
        }
        if (repo.Gated) { Error(response, 403, "GatedRepo", "Access to this model is restricted"); return; }
        if (revision != "main" && revision != repo.Sha) { Error(response, 404, "RevisionNotFound"); return; }
        if (api)
        {
            var body = RevisionBody?.Invoke(repoId) ?? Encoding.UTF8.GetBytes(new JsonObject
            {
                ["id"] = repoId, ["sha"] = repo.Sha,
                ["siblings"] = new JsonArray(repo.Files.Keys.Select(k => (JsonNode)new JsonObject { ["rfilename"] = k })
                    .ToArray()),
            }.ToJsonString());
            await Send(response, 200, body);
            return;
        }
        var name = string.Join('/', parts[4..].Select(Uri.UnescapeDataString));
        response.Headers["X-Repo-Commit"] = repo.Sha;
        if (!repo.Files.TryGetValue(name, out var bytes)) { Error(response, 404, "EntryNotFound"); return; }
        var etag = FakeRepo.Etag(name, bytes);
        if (FakeRepo.IsLfs(name))
        {
            response.Headers["X-Linked-Etag"] = $"\"{etag}\"";
            response.Headers["X-Linked-Size"] = bytes.Length.ToString();
            response.Headers["Location"] = new Uri(StorageBase, $"lfs/{etag}").ToString();
            response.StatusCode = 302;
            ResolveHeaders?.Invoke(name, response.Headers);
            response.Close();
            return;
        }
        response.Headers["ETag"] = $"\"{etag}\"";
        ResolveHeaders?.Invoke(name, response.Headers);
        if (request.HttpMethod == "HEAD")
        {
            response.ContentLength64 = bytes.Length;
            response.Close();
            return;
        }
        await Send(response, 200, bytes);
    }

    async Task ServeBlob(HttpListenerContext ctx, string sha)
    {
        var (name, bytes) = Repos.Values.SelectMany(r => r.Files)
            .Where(f => FakeRepo.IsLfs(f.Key) && FakeRepo.Etag(f.Key, f.Value) == sha)
            .Select(f => (f.Key, f.Value)).FirstOrDefault();
        if (bytes is null) { Error(ctx.Response, 404, null); return; }
        int nth = _gets.AddOrUpdate(sha, 1, (_, n) => n + 1);
        var (body, dropAfter) = Blob?.Invoke(name, nth, bytes) ?? (bytes, null);
        long from = 0;
        var range = ctx.Request.Headers["Range"];
        if (range is not null && range.StartsWith("bytes=") && range.EndsWith('-'))
            from = long.Parse(range["bytes=".Length..^1]);
        var response = ctx.Response;
        if (from > 0)
        {
            response.StatusCode = 206;
            response.Headers["Content-Range"] = $"bytes {from}-{body.Length - 1}/{body.Length}";
        }
        var rest = body[(int)from..];
        response.ContentLength64 = rest.Length;
        if (dropAfter is { } n && n < rest.Length)
        {
            await response.OutputStream.WriteAsync(rest.AsMemory(0, n));
            await response.OutputStream.FlushAsync();
            await Task.Delay(50);
            response.Abort();
            return;
        }
        await response.OutputStream.WriteAsync(rest);
        response.Close();
    }

    static async Task Send(HttpListenerResponse response, int status, byte[] body)
    {
        response.StatusCode = status;
        response.ContentLength64 = body.Length;
        await response.OutputStream.WriteAsync(body);
        response.Close();
    }

    static void Error(HttpListenerResponse response, int status, string? code, string? message = null)
    {
        response.StatusCode = status;
        if (code is not null) response.Headers["X-Error-Code"] = code;
        if (message is not null) response.Headers["X-Error-Message"] = message;
        response.ContentLength64 = 0;
        response.Close();
    }

    public void Dispose() { _listener.Stop(); _listener.Close(); }
}
