using System.Text.RegularExpressions;

namespace LdmLab.Interop.Hub;

/// <summary>
/// The names the hub and its cache use, checked as huggingface_hub checks them: repository ids, commit hashes and
/// the repository file names that become paths inside the cache.
/// </summary>
public static partial class HubNames
{
    // huggingface_hub's REPO_ID_REGEX: an optional namespace, then 1..96 of [\w.-] between word boundaries
    [GeneratedRegex(@"^(\b[\w\-.]+\b/)?\b[\w\-.]{1,96}\b$")]
    private static partial Regex RepoIdPattern();

    [GeneratedRegex("^[0-9a-f]{40}$")]
    private static partial Regex CommitPattern();

    [GeneratedRegex("^[0-9a-f]{64}$")]
    private static partial Regex Sha256Pattern();

    /// <summary>
    /// Null when <paramref name="repoId"/> is a valid "namespace/name" id by huggingface_hub's rules (letters,
    /// digits, '-', '_', '.'; no "--" or ".."; not ending in ".git"; a name of at most 96 characters), else why not.
    /// LdmLab asks for the namespace, so that a mistyped local folder name is not sent to the hub.
    /// </summary>
    public static string? RepoIdProblem(string repoId)
    {
        if (repoId.Count(c => c == '/') != 1) return "a repo id has the form 'owner/name'";
        if (!RepoIdPattern().IsMatch(repoId))
            return "a repo id uses letters, digits, '-', '_' or '.', does not start or end a part with '-' or '.', " +
                   "and its name has at most 96 characters";
        if (repoId.Contains("--") || repoId.Contains("..")) return "a repo id cannot contain '--' or '..'";
        if (repoId.EndsWith(".git", StringComparison.Ordinal)) return "a repo id cannot end in '.git'";
        return null;
    }

    public static bool IsRepoId(string repoId) => RepoIdProblem(repoId) is null;

    /// <summary>Throws <see cref="ArgumentException"/> saying what is wrong with an invalid repo id.</summary>
    public static void ValidateRepoId(string repoId)
    {
        if (RepoIdProblem(repoId) is { } problem)
            throw new ArgumentException($"'{repoId}' is not a hub repo id: {problem}", nameof(repoId));
    }

    /// <summary>A full commit hash (40 lowercase hex digits), which names a snapshot folder.</summary>
    public static bool IsCommitHash(string revision) => CommitPattern().IsMatch(revision);

    /// <summary>An LFS blob's ETag: the file's SHA-256 as 64 lowercase hex digits.</summary>
    public static bool IsSha256(string etag) => Sha256Pattern().IsMatch(etag);

    /// <summary>huggingface_hub's cache folder of a model repository: <c>models--{owner}--{name}</c>.</summary>
    public static string RepoFolderName(string repoId) => "models--" + repoId.Replace("/", "--");

    /// <summary>
    /// Null when a repository file name (slash-separated, relative to the repository root) is safe to join to a
    /// folder, else why not: no empty or "." or ".." segment, no backslash, drive, colon or leading slash, nothing
    /// that would leave the folder on Linux or Windows.
    /// </summary>
    public static string? FileNameProblem(string fileName)
    {
        if (fileName.Length == 0) return "empty";
        if (fileName.Contains('\\')) return "contains a backslash";
        if (fileName.Contains(':')) return "contains a colon (a drive or stream on Windows)";
        if (fileName.StartsWith('/')) return "is absolute";
        if (fileName.Any(char.IsControl)) return "contains control characters";
        foreach (var segment in fileName.Split('/'))
        {
            if (segment.Length == 0) return "has an empty segment";
            if (segment is "." or "..") return $"has a '{segment}' segment";
        }
        return null;
    }

    /// <summary>Throws a <see cref="HubException"/> of kind UnsafeFileName for a file name from the server.</summary>
    internal static void ValidateFileName(string repoId, string fileName)
    {
        if (FileNameProblem(fileName) is { } problem)
            throw new HubException(HubErrorKind.UnsafeFileName, repoId, fileName, null,
                $"'{repoId}' lists a file named '{fileName}' that {problem}; it would not stay inside the cache " +
                "folder, so it is refused. Report the repository, or use another revision or mirror");
    }

    /// <summary>A branch or tag becomes a file under refs/ (refs/pr/1 nests); the same path rules apply.</summary>
    internal static void ValidateRevision(string repoId, string revision)
    {
        if (FileNameProblem(revision) is { } problem)
            throw new ArgumentException($"revision '{revision}' of '{repoId}' {problem}: give a branch, tag or " +
                                        "40-hex commit hash", nameof(revision));
    }
}
