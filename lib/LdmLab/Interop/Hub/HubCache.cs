using System.Security.Cryptography;

namespace LdmLab.Interop.Hub;

/// <summary>
/// One repository's folder in huggingface_hub's cache, in the layout Python's huggingface_hub writes, so that either
/// finds what the other downloaded:
/// <code>
/// {cache}/models--{owner}--{name}/
///   blobs/{etag}                 the file's bytes, named by its ETag (SHA-256 for LFS files, git SHA-1 otherwise)
///   blobs/{etag}.incomplete      a download under way or broken off; resumed with a Range request
///   refs/{revision}              the commit hash a branch or tag pointed to when last resolved
///   snapshots/{commit}/{path}    a relative symlink to ../../blobs/{etag} (one more ../ per folder in path)
/// </code>
/// Where symlinks cannot be made (Windows without the privilege) the snapshot holds a copy, as huggingface_hub does.
/// </summary>
public sealed class HubCache
{
    public string RepoId { get; }
    /// <summary>{cache}/models--{owner}--{name}.</summary>
    public string Folder { get; }

    public HubCache(string cacheDir, string repoId)
    {
        HubNames.ValidateRepoId(repoId);
        RepoId = repoId;
        Folder = Path.Combine(Path.GetFullPath(cacheDir), HubNames.RepoFolderName(repoId));
    }

    public string BlobPath(string etag) => Path.Combine(Folder, "blobs", etag);

    public string IncompletePath(string etag) => BlobPath(etag) + ".incomplete";

    public string SnapshotFolder(string commit) => Path.Combine(Folder, "snapshots", commit);

    /// <summary>snapshots/{commit}/{file}, with the file name's slashes as the platform's separators.</summary>
    public string PointerPath(string commit, string fileName) =>
        Path.Combine([SnapshotFolder(commit), .. fileName.Split('/')]);

    /// <summary>
    /// The commit a revision stands for in the cache: the revision itself when it is a commit hash, else the content
    /// of refs/{revision}; null when the revision was never resolved here.
    /// </summary>
    public string? ResolveRef(string revision)
    {
        if (HubNames.IsCommitHash(revision)) return revision;
        var refPath = Path.Combine([Folder, "refs", .. revision.Split('/')]);
        if (!File.Exists(refPath)) return null;
        var commit = File.ReadAllText(refPath).Trim();
        return HubNames.IsCommitHash(commit) ? commit : null;
    }

    /// <summary>Records refs/{revision} = commit (atomically), unless the revision is that commit already.</summary>
    public void WriteRef(string revision, string commit)
    {
        if (revision == commit) return;
        var refPath = Path.Combine([Folder, "refs", .. revision.Split('/')]);
        if (File.Exists(refPath) && File.ReadAllText(refPath).Trim() == commit) return;
        Data.AtomicFile.WriteAllText(refPath, commit);
    }

    /// <summary>
    /// Points snapshots/{commit}/{file} at blobs/{etag} with a relative symlink (../../blobs/… one level deeper per
    /// folder in the name), replacing what was there; copies the blob where symlinks are not allowed.
    /// </summary>
    public string Link(string commit, string fileName, string etag)
    {
        var pointer = PointerPath(commit, fileName);
        var blob = BlobPath(etag);
        Directory.CreateDirectory(Path.GetDirectoryName(pointer)!);
        var relative = Path.GetRelativePath(Path.GetDirectoryName(pointer)!, blob);
        if (File.Exists(pointer) || new FileInfo(pointer).LinkTarget is not null) File.Delete(pointer);
        try { File.CreateSymbolicLink(pointer, relative); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or PlatformNotSupportedException)
        {
            File.Copy(blob, pointer, overwrite: true);
        }
        return pointer;
    }

    /// <summary>True when <paramref name="pointer"/> is there and so is what it links to (on Unix File.Exists is true
    /// for a dangling link: a blob deleted by hand to free space must count as not cached, as in
    /// huggingface_hub).</summary>
    public static bool Resolves(string pointer)
    {
        var info = new FileInfo(pointer);
        if (info.LinkTarget is null) return info.Exists;
        return info.ResolveLinkTarget(returnFinalTarget: true) is { Exists: true };
    }

    /// <summary>
    /// Checks a cached file against what the hub reported: its size when known, and for an LFS blob (named by its
    /// SHA-256) the hash when <paramref name="hash"/>; throws a Corrupt <see cref="HubException"/> naming the file.
    /// </summary>
    public void Verify(string fileName, string path, long? expectedSize, bool hash)
    {
        var info = new FileInfo(path);
        var target = info.ResolveLinkTarget(returnFinalTarget: true) as FileInfo ?? info;
        if (!target.Exists)
            throw new HubException(HubErrorKind.Corrupt, RepoId, fileName, null,
                $"'{fileName}' of '{RepoId}': the cached file {path} points to a missing blob; delete {path} and " +
                "download again");
        if (expectedSize is { } size && target.Length != size)
            throw Corrupt(fileName, path, $"has {target.Length} bytes, the hub reported {size}");
        if (!hash || !HubNames.IsSha256(target.Name)) return;
        string actual;
        using (var stream = target.OpenRead()) actual = Convert.ToHexStringLower(SHA256.HashData(stream));
        if (actual != target.Name) throw Corrupt(fileName, target.FullName, $"has SHA-256 {actual}, not {target.Name}");
    }

    HubException Corrupt(string fileName, string path, string what) =>
        new(HubErrorKind.Corrupt, RepoId, fileName, null,
            $"'{fileName}' of '{RepoId}' is corrupt: {path} {what}. Delete {path} (and the snapshot link to it) " +
            "and download again");
}
