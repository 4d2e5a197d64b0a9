using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace LdmLab.Labs;

/// <summary>
/// A model trained once by the project's own full-profile recipe and shipped in the repository
/// (<c>data/checkpoints/NAME/</c>: the model folder in diffusers' layout plus <c>checkpoint.json</c>), so that the quick
/// profile shows what a trained model does instead of what 60 steps do. <c>checkpoint.json</c> records the recipe and
/// its key (the hash of every setting and of the training data's content), the step count, the seed, the SHA-256 of
/// the weights, the first losses of the run (a later run of the same recipe from the same seed must reproduce them)
/// and the metrics it reached. Loading checks the hash; <c>LDMLAB_PROFILE=full</c> never reads it (it retrains into the
/// cache and overwrites nothing shipped).
/// </summary>
public sealed record ShippedCheckpoint(
    string Name, string Dir, string Recipe, string RecipeKey, int Steps, long Seed, string WeightsFile, string WeightsSha256,
    IReadOnlyList<double> FirstLosses, IReadOnlyDictionary<string, double> Metrics, string TrainedOn, string Machine, string Date)
{
    public const string ManifestName = "checkpoint.json";

    /// <summary>Where shipped checkpoints live (<see cref="ArtifactStore.CheckpointsRoot"/> of the settings in
    /// force).</summary>
    public static string? Root => ArtifactStore.Current.CheckpointsRoot;

    /// <summary>The checkout this process runs from: found above the working folder or above LdmLab.Labs.dll.</summary>
    internal static string? RepoRoot() =>
        new[] { Directory.GetCurrentDirectory(), AppContext.BaseDirectory,
                Path.GetDirectoryName(typeof(ShippedCheckpoint).Assembly.Location) ?? "" }
            .Select(Lab.FindRepoRoot).FirstOrDefault(r => r is not null);

    /// <summary>The shipped checkpoint NAME of the settings in force (<see cref="ArtifactStore.Find"/>).</summary>
    public static ShippedCheckpoint? Find(string name) => ArtifactStore.Current.Find(name);

    /// <summary>The checkpoint in <paramref name="dir"/>, or null when it has no manifest; a manifest that is there
    /// but unreadable is an error naming it.</summary>
    public static ShippedCheckpoint? Read(string dir)
    {
        var manifest = Path.Combine(dir, ManifestName);
        if (!File.Exists(manifest)) return null;
        return ConfigFile.Read(manifest, j => new ShippedCheckpoint(Path.GetFileName(dir), dir,
            (string?)j["recipe"] ?? throw new FormatException("no 'recipe'"),
            (string?)j["recipe_key"] ?? throw new FormatException("no 'recipe_key'"),
            (int?)j["steps"] ?? throw new FormatException("no 'steps'"),
            (long?)j["seed"] ?? 0,
            (string?)j["weights_file"] ?? throw new FormatException("no 'weights_file'"),
            (string?)j["weights_sha256"] ?? throw new FormatException("no 'weights_sha256'"),
            j["first_losses"]?.AsArray().Select(x => (double)x!).ToArray() ?? [],
            j["metrics"]?.AsObject().ToDictionary(kv => kv.Key, kv => (double)kv.Value!) ?? new Dictionary<string, double>(),
            (string?)j["trained_on"] ?? "", (string?)j["machine"] ?? "", (string?)j["date"] ?? ""));
    }

    /// <summary>The weights' SHA-256 equals the manifest's (else a <see cref="DatasetException"/> naming the file).</summary>
    public void Verify()
    {
        var path = Path.Combine(Dir, WeightsFile);
        if (!File.Exists(path)) throw new DatasetException(path, $"the shipped checkpoint '{Name}' has no weights file");
        var actual = Sha256(path);
        if (actual != WeightsSha256)
            throw new DatasetException(path, $"SHA-256 {actual} differs from {WeightsSha256} in {ManifestName}: the file " +
                                             "was changed or is truncated (git checkout it again, or retrain with LDMLAB_PROFILE=full)");
    }

    /// <summary>Checks the hash, loads the weights into <paramref name="model"/> (strict) and puts it in eval mode.</summary>
    public T LoadInto<T>(T model) where T : TorchSharp.torch.nn.Module
    {
        Verify();
        StateDicts.Load(model, Path.Combine(Dir, WeightsFile));
        model.eval();
        return model;
    }

    public static string Sha256(string path)
    {
        using var s = File.OpenRead(path);
        return Convert.ToHexString(SHA256.HashData(s)).ToLowerInvariant();
    }

    /// <summary>The line a notebook prints when it uses this checkpoint.</summary>
    public string Describe() =>
        $"loaded checkpoint data/checkpoints/{Name}, trained {Steps:N0} steps by recipe {Recipe} (seed {Seed}, key " +
        $"{RecipeKey}) on {TrainedOn}; LDMLAB_PROFILE=full retrains it";

    /// <summary>Writes checkpoint.json (atomically) for a model folder that holds the record's weights file.</summary>
    public static ShippedCheckpoint Write(string dir, ShipRecord r)
    {
        var c = new ShippedCheckpoint(Path.GetFileName(dir), dir, r.Recipe, r.RecipeKey, r.Steps, r.Seed, r.WeightsFile,
            Sha256(Path.Combine(dir, r.WeightsFile)), r.FirstLosses, r.Metrics, r.TrainedOn, r.Machine,
            DateTime.UtcNow.ToString("yyyy-MM-dd"));
        var json = new JsonObject
        {
            ["recipe"] = r.Recipe, ["recipe_key"] = r.RecipeKey, ["steps"] = r.Steps, ["seed"] = r.Seed,
            ["weights_file"] = r.WeightsFile, ["weights_sha256"] = c.WeightsSha256,
            ["first_losses"] = new JsonArray(r.FirstLosses.Select(l => (JsonNode)l).ToArray()),
            ["metrics"] = new JsonObject(r.Metrics.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
            ["trained_on"] = r.TrainedOn, ["machine"] = r.Machine, ["date"] = c.Date,
        };
        AtomicFile.WriteAllText(Path.Combine(dir, ManifestName), json.ToJsonString(new JsonSerializerOptions
        {
            WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        }));
        return c;
    }
}
