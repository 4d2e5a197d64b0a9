namespace LdmLab.Interop.Hub;

/// <summary>
/// Downloads from a Hugging Face hub into huggingface_hub's cache (see <see cref="HubCache"/> for the layout), so
/// that a model Python already downloaded is found and nothing is fetched twice, as diffusers' from_pretrained does:
/// <list type="bullet">
/// <item>a revision's commit comes from the revision API (one request), and every file already linked under
/// snapshots/{commit}/ is used without another request;</item>
/// <item>a missing file's metadata comes from a HEAD request; its blob is downloaded (resumably), verified against
/// the reported size and, for LFS files, SHA-256, and linked into the snapshot;</item>
/// <item>offline (<see cref="HubOptions.Offline"/>) or when the hub cannot be reached, refs/ and snapshots/ answer
/// alone, or the call fails naming the repository.</item>
/// </list>
/// Errors are <see cref="HubException"/>s whose message names the repository (and file) and the fix.
/// </summary>
public static class HubClient
{
    /// <summary>Downloads one file (relative to <see cref="HubOptions.Subfolder"/>); returns its snapshot
    /// path.</summary>
    public static string DownloadFile(string repoId, string path, HubOptions options) =>
        DownloadFileAsync(repoId, path, options).GetAwaiter().GetResult();

    /// <inheritdoc cref="DownloadFile"/>
    public static async Task<string> DownloadFileAsync(string repoId, string path, HubOptions options,
        CancellationToken ct = default)
    {
        var fileName = options.Subfolder is { Length: > 0 } sub ? $"{sub.Trim('/')}/{path}" : path;
        if (HubNames.FileNameProblem(fileName) is { } problem)
            throw new ArgumentException($"'{fileName}' is not a file name inside a repository: it {problem}",
                nameof(path));
        var cache = new HubCache(options.CacheDir, repoId);
        HubNames.ValidateRevision(repoId, options.Revision);
        return await Fetch(options, cache, options.Revision, fileName, ct);
    }

    /// <summary>
    /// Downloads what a Stable Diffusion pipeline needs (<see cref="PipelineFiles"/>; the weights variant of
    /// <see cref="HubOptions.Variant"/> where present) and returns the snapshot folder, a diffusers pipeline folder.
    /// </summary>
    public static string SnapshotForPipeline(string repoId, HubOptions options) =>
        SnapshotForPipelineAsync(repoId, options).GetAwaiter().GetResult();

    /// <inheritdoc cref="SnapshotForPipeline"/>
    public static async Task<string> SnapshotForPipelineAsync(string repoId, HubOptions options,
        CancellationToken ct = default)
    {
        var cache = new HubCache(options.CacheDir, repoId);
        HubNames.ValidateRevision(repoId, options.Revision);
        var (commit, files) = await Revision(options, cache, ct);
        if (!files.Contains(PipelineFiles.ModelIndex))
            throw new HubException(HubErrorKind.NotAPipeline, repoId, PipelineFiles.ModelIndex, null,
                $"'{repoId}' has no {PipelineFiles.ModelIndex} at revision '{options.Revision}': it is not a " +
                "diffusers pipeline repository (a single checkpoint file needs converting; check the repo id)");
        var indexPath = await Fetch(options, cache, commit, PipelineFiles.ModelIndex, ct);
        var index = PipelineFiles.ParseModelIndex(repoId, await File.ReadAllTextAsync(indexPath, ct));
        foreach (var file in PipelineFiles.Select(repoId, index, files, options.Variant).Skip(1))
            await Fetch(options, cache, commit, file, ct);
        return cache.SnapshotFolder(commit);
    }

    /// <summary>
    /// The commit and file list of the requested revision: from the revision API online (recording refs/), else —
    /// offline, or with the hub unreachable — from refs/ and the snapshot folder's files.
    /// </summary>
    static async Task<(string Commit, IReadOnlyCollection<string> Files)> Revision(HubOptions o, HubCache cache,
        CancellationToken ct)
    {
        HubException? unreachable = null;
        if (!o.Offline)
        {
            try
            {
                var revision = await HubHttp.GetRevision(o, cache.RepoId, o.Revision, ct);
                cache.WriteRef(o.Revision, revision.Sha);
                return (revision.Sha, revision.Files);
            }
            catch (HubException e) when (Unreachable(e)) { unreachable = e; }
        }
        var commit = cache.ResolveRef(o.Revision);
        var folder = commit is null ? null : cache.SnapshotFolder(commit);
        if (folder is null || !Directory.Exists(folder)) throw NotCached(o, cache, null, unreachable);
        var files = Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(folder, f).Replace(Path.DirectorySeparatorChar, '/'))
            .ToHashSet(StringComparer.Ordinal);
        return (commit!, files);
    }

    /// <summary>
    /// One file at a revision: the snapshot link when cached (no request for a commit hash), else HEAD for its
    /// metadata, the blob downloaded unless already there, and the link made.
    /// </summary>
    static async Task<string> Fetch(HubOptions o, HubCache cache, string revision, string fileName,
        CancellationToken ct)
    {
        if (HubNames.IsCommitHash(revision) && Cached(o, cache, revision, fileName) is { } known) return known;
        if (o.Offline)
            return Cached(o, cache, cache.ResolveRef(revision), fileName) ?? throw NotCached(o, cache, fileName, null);
        HubFileMetadata meta;
        try { meta = await HubHttp.Head(o, cache.RepoId, revision, fileName, ct); }
        catch (HubException e) when (Unreachable(e))
        {
            return Cached(o, cache, cache.ResolveRef(revision), fileName) ?? throw NotCached(o, cache, fileName, e);
        }
        cache.WriteRef(revision, meta.Commit);
        var pointer = cache.PointerPath(meta.Commit, fileName);
        if (HubCache.Resolves(pointer))
        {
            cache.Verify(fileName, pointer, meta.Size, o.VerifyCache);
            return pointer;
        }
        var blob = cache.BlobPath(meta.Etag);
        if (File.Exists(blob)) cache.Verify(fileName, blob, meta.Size, o.VerifyCache);
        else await BlobDownload.Run(o, cache, fileName, revision, meta, ct);
        return cache.Link(meta.Commit, fileName, meta.Etag);
    }

    /// <summary>The snapshot path of a cached file (checked: its blob exists, re-hashed if asked), or null.</summary>
    static string? Cached(HubOptions o, HubCache cache, string? commit, string fileName)
    {
        if (commit is null) return null;
        var pointer = cache.PointerPath(commit, fileName);
        if (!HubCache.Resolves(pointer)) return null;                 // a link to a deleted blob: fetch it again
        cache.Verify(fileName, pointer, null, o.VerifyCache);
        return pointer;
    }

    /// <summary>The hub could not be reached or is down (not: it answered that something is missing or
    /// private).</summary>
    static bool Unreachable(HubException e) =>
        e.Kind == HubErrorKind.Network
        || e.Kind == HubErrorKind.Protocol && e.StatusCode is { } s
                                          && HubException.IsServerTrouble((System.Net.HttpStatusCode)s);

    static HubException NotCached(HubOptions o, HubCache cache, string? fileName, HubException? unreachable)
    {
        var what = fileName is null ? $"'{cache.RepoId}' (revision '{o.Revision}')"
            : $"'{fileName}' of '{cache.RepoId}' (revision '{o.Revision}')";
        var why = unreachable is null
            ? "offline mode is on (HF_HUB_OFFLINE / HubOptions.Offline)"
            : $"the hub could not be reached ({unreachable.Message})";
        return new HubException(HubErrorKind.NotCached, cache.RepoId, fileName, unreachable?.StatusCode,
            $"{what} is not in the cache {cache.Folder} and {why}. Download it once online (unset HF_HUB_OFFLINE), " +
            "or check the repo id, the revision and the cache folder (HF_HUB_CACHE / HF_HOME)", unreachable);
    }
}
