namespace LdmLab.Labs;

/// <summary>What a shipped checkpoint records about the run that made it (<see cref="ShippedCheckpoint"/>).</summary>
/// <param name="Recipe">The recipe's name as a person reads it ("FashionLatentRecipe.Vae (full profile)").</param>
/// <param name="RecipeKey">The hash of every setting and of the training data's content.</param>
/// <param name="WeightsFile">The file of the model folder whose SHA-256 the manifest records.</param>
/// <param name="FirstLosses">The run's first losses: a later run of the recipe must reproduce them.</param>
public sealed record ShipRecord(string Recipe, string RecipeKey, int Steps, long Seed, string WeightsFile,
    IReadOnlyList<double> FirstLosses, IReadOnlyDictionary<string, double> Metrics, string TrainedOn, string Machine);

/// <summary>
/// Where the lab's trained models live, and the one way to get one: <see cref="Resolve{T}"/> takes a recipe to its
/// shipped checkpoint (quick profile, hash-checked), else to its cache entry (keyed by content), else to a training
/// run (which checkpoints into that entry and resumes when stopped); <see cref="Ship"/> writes a shipped checkpoint
/// (stage beside the target, write the manifest, verify, replace). Every recipe and <c>ldmlab train</c> use it.
/// </summary>
public sealed class ArtifactStore(RunSettings settings)
{
    /// <summary>The store of the settings in force (<see cref="Lab.Settings"/>).</summary>
    public static ArtifactStore Current => new(Lab.Settings);

    public RunSettings Settings { get; } = settings;

    /// <summary>Trained models keyed by recipe and data: <see cref="RunSettings.CacheDir"/>.</summary>
    public string CacheRoot => Settings.CacheDir;

    /// <summary>Shipped checkpoints: <see cref="RunSettings.CheckpointsDir"/>, else data/checkpoints of this checkout
    /// (null outside one).</summary>
    public string? CheckpointsRoot => Settings.CheckpointsDir
        ?? (ShippedCheckpoint.RepoRoot() is { } root ? Path.Combine(root, "data", "checkpoints") : null);

    /// <summary>The shipped checkpoint NAME, or null when there is none; an unreadable manifest is an error naming it.
    /// </summary>
    public ShippedCheckpoint? Find(string name) =>
        CheckpointsRoot is { } root ? ShippedCheckpoint.Read(Path.Combine(root, name)) : null;

    /// <summary>The cache folder of one recipe run: <c>CacheRoot/KIND-KEY[/PARTS…]</c>.</summary>
    public string CacheEntry(string kind, string key, params string[] parts) =>
        Path.Combine([CacheRoot, $"{kind}-{key}", .. parts]);

    /// <summary>
    /// A recipe's model: in the quick profile and for seed 0, its shipped checkpoint <paramref name="shippedName"/>
    /// (hash-checked, then <paramref name="loadShipped"/>); otherwise <paramref name="cacheOrTrain"/>, which loads the
    /// recipe's cache entry or trains into it. The full profile never reads a shipped checkpoint: it retrains.
    /// </summary>
    public T Resolve<T>(string? shippedName, long seed, Func<ShippedCheckpoint, T> loadShipped, Func<T> cacheOrTrain)
    {
        if (Settings.Profile == Profile.Quick && seed == 0 && shippedName is not null
            && Find(shippedName) is { } shipped)
        {
            shipped.Verify();
            return loadShipped(shipped);
        }
        return cacheOrTrain();
    }

    /// <summary>Whether NAME is shipped here with this recipe key (a training command skips it then).</summary>
    public static bool IsShipped(string name, string recipeKey, string root) =>
        ShippedCheckpoint.Read(Path.Combine(root, name)) is { } existing && existing.RecipeKey == recipeKey;

    /// <summary>
    /// Ships a model as <c>root/NAME</c>: <paramref name="writeModel"/> fills a staging folder beside it
    /// (<c>NAME.new</c>), the manifest is written, read back and hash-checked there, and only then the staging
    /// folder replaces the old one; the run's private cache <c>NAME.partial</c> is deleted last. A failure on the way
    /// leaves the shipped model as it was and removes the staging folder.
    /// </summary>
    public static ShippedCheckpoint Ship(string root, string name, ShipRecord record, Action<string> writeModel)
    {
        var outDir = Path.Combine(root, name);
        var staging = outDir + ".new";
        if (Directory.Exists(staging)) Directory.Delete(staging, true);
        Directory.CreateDirectory(staging);
        try
        {
            writeModel(staging);
            ShippedCheckpoint.Write(staging, record);
            var staged = ShippedCheckpoint.Read(staging)
                         ?? throw new InvalidOperationException($"{staging}: the manifest just written is missing");
            staged.Verify();
        }
        catch
        {
            Directory.Delete(staging, true);                        // nothing half-written stays beside the model
            throw;
        }
        if (Directory.Exists(outDir)) Directory.Delete(outDir, true);
        Directory.Move(staging, outDir);
        if (Directory.Exists(PartialDir(outDir))) Directory.Delete(PartialDir(outDir), true);
        return ShippedCheckpoint.Read(outDir)!;
    }

    /// <summary>The private folder a shipping run of the model folder <paramref name="modelDir"/> checkpoints into
    /// (resumable): <c>modelDir.partial</c>, deleted once shipped.</summary>
    public static string PartialDir(string modelDir) => modelDir + ".partial";

    /// <summary><see cref="PartialDir(string)"/> of <c>root/NAME</c>.</summary>
    public static string PartialDir(string root, string name) => PartialDir(Path.Combine(root, name));
}
