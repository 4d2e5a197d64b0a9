namespace LdmLab.Interop.Hub;

/// <summary>
/// What a from_pretrained argument names, as diffusers reads it: an existing folder, or a hub repo id whose pipeline
/// files are fetched into (or found in) the hub cache.
/// </summary>
public static class PretrainedSource
{
    /// <summary>
    /// An existing directory is returned as given; an "owner/name" repo id (huggingface_hub's syntax) becomes the
    /// local snapshot folder of <see cref="HubClient.SnapshotForPipeline"/>; anything else is an
    /// <see cref="ArgumentException"/> saying it is neither.
    /// </summary>
    /// <param name="options">how to reach the hub; null reads huggingface_hub's environment variables
    /// (<see cref="HubOptions.FromEnvironment"/>), as diffusers does.</param>
    public static string Resolve(string dirOrRepoId, HubOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(dirOrRepoId);
        if (Directory.Exists(dirOrRepoId)) return dirOrRepoId;
        if (HubNames.RepoIdProblem(dirOrRepoId) is { } problem)
            throw new ArgumentException(
                $"'{dirOrRepoId}' is neither an existing folder ({Path.GetFullPath(dirOrRepoId)} does not exist) " +
                $"nor a hub repo id ({problem}); give a diffusers pipeline folder or a repo id such as " +
                "'stable-diffusion-v1-5/stable-diffusion-v1-5'", nameof(dirOrRepoId));
        try
        {
            return HubClient.SnapshotForPipeline(dirOrRepoId, options ?? HubOptions.FromEnvironment());
        }
        catch (HubException e) when (e.Kind is HubErrorKind.RepoNotFound or HubErrorKind.NotCached)
        {
            // "models/sd" may be a mistyped folder as much as a repo id: say both
            throw new HubException(e.Kind, e.RepoId, e.FileName, e.StatusCode,
                $"{e.Message} (no folder {Path.GetFullPath(dirOrRepoId)} exists either)", e);
        }
    }
}
