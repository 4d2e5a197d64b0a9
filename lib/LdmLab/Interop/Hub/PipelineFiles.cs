using System.Text.Json;
using System.Text.Json.Nodes;

namespace LdmLab.Interop.Hub;

/// <summary>
/// Which files of a diffusers Stable Diffusion repository LdmLab needs: model_index.json, and for the components it
/// reads (<see cref="Components"/>) their configs, tokenizer files and safetensors weights — the variant's where the
/// repository has it, else the plain name. Pickle weights (.bin, .ckpt, .pt, .pth) are never chosen; a component
/// with only those is a PickleOnly error. Other components (safety_checker, feature_extractor, …) are skipped.
/// </summary>
public static class PipelineFiles
{
    public const string ModelIndex = "model_index.json";

    /// <summary>The components StableDiffusionPipeline.FromPretrained reads.</summary>
    public static IReadOnlyList<string> Components { get; } = ["unet", "vae", "text_encoder", "tokenizer", "scheduler"];

    /// <summary>The small files taken from a component's folder when present.</summary>
    public static IReadOnlyList<string> ConfigNames { get; } =
        ["config.json", "scheduler_config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
            "special_tokens_map.json", "added_tokens.json"];

    static readonly string[] PickleExtensions = [".bin", ".ckpt", ".pt", ".pth", ".pkl"];

    /// <summary>The file each component cannot do without (its weights aside).</summary>
    static IEnumerable<string> Required(string component) => component switch
    {
        "tokenizer" => ["vocab.json", "merges.txt"],
        "scheduler" => ["scheduler_config.json"],
        _ => ["config.json"],
    };

    /// <summary>diffusers names model weights diffusion_pytorch_model.*, transformers model.*.</summary>
    public static string WeightsBaseName(string library) =>
        library == "transformers" ? "model" : "diffusion_pytorch_model";

    /// <summary>
    /// Parses model_index.json's text; anything that is not a JSON object is a NotAPipeline error naming the repo.
    /// </summary>
    public static JsonObject ParseModelIndex(string repoId, string text)
    {
        try
        {
            return JsonNode.Parse(text) as JsonObject
                   ?? throw new JsonException("not a JSON object");
        }
        catch (JsonException e)
        {
            throw new HubException(HubErrorKind.NotAPipeline, repoId, ModelIndex, null,
                $"'{repoId}': {ModelIndex} is not a diffusers pipeline index ({e.Message}); check the repo id", e);
        }
    }

    /// <summary>
    /// The repository files to fetch, model_index.json first, from the index and the repository's file list
    /// (slash-separated names). Throws NotAPipeline for a missing component or file, PickleOnly where a component's
    /// only weights are pickles.
    /// </summary>
    public static IReadOnlyList<string> Select(string repoId, JsonObject modelIndex, IReadOnlyCollection<string> files,
        string? variant)
    {
        var present = files.ToHashSet(StringComparer.Ordinal);
        var chosen = new List<string> { ModelIndex };
        foreach (var component in Components)
        {
            var entry = modelIndex[component] as JsonArray;
            var library = entry is [JsonValue l, JsonValue c] && l.TryGetValue<string>(out var lib)
                                                              && c.TryGetValue<string>(out _) ? lib : null;
            if (library is null)
                throw NotAPipeline(repoId, ModelIndex,
                    $"{ModelIndex} names no '{component}' component; LdmLab reads Stable Diffusion pipelines " +
                    $"({string.Join(", ", Components)})");
            foreach (var name in Required(component))
                if (!present.Contains($"{component}/{name}"))
                    throw NotAPipeline(repoId, $"{component}/{name}", $"the repository has no {component}/{name}");
            chosen.AddRange(ConfigNames.Select(n => $"{component}/{n}").Where(present.Contains));
            if (component is "tokenizer" or "scheduler") continue;
            chosen.Add(Weights(repoId, component, WeightsBaseName(library), present, variant));
        }
        return chosen;
    }

    static string Weights(string repoId, string component, string baseName, HashSet<string> present, string? variant)
    {
        if (variant is not null && present.Contains($"{component}/{baseName}.{variant}.safetensors"))
            return $"{component}/{baseName}.{variant}.safetensors";
        if (present.Contains($"{component}/{baseName}.safetensors")) return $"{component}/{baseName}.safetensors";
        var inFolder = present.Where(f => f.StartsWith(component + "/", StringComparison.Ordinal)).ToList();
        var pickles = inFolder.Where(f => PickleExtensions.Any(e => f.EndsWith(e, StringComparison.OrdinalIgnoreCase)))
            .ToList();
        if (inFolder.Any(f => f.EndsWith(".safetensors.index.json", StringComparison.Ordinal)))
            throw NotAPipeline(repoId, $"{component}/{baseName}.safetensors",
                $"{component} has sharded safetensors weights, which LdmLab does not read yet; merge the shards " +
                "into one file (safetensors' save_file in Python) and load that folder");
        if (pickles.Count > 0)
            throw new HubException(HubErrorKind.PickleOnly, repoId, pickles[0], null,
                $"'{repoId}': {component} has only pickle weights ({string.Join(", ", pickles)}), which LdmLab never " +
                "loads (a pickle can run code). Look for a revision or variant with .safetensors files (the hub's " +
                "'Files' tab; safetensors conversions are often offered as a pull request, revision 'refs/pr/N'), " +
                "or convert in Python: DiffusionPipeline.from_pretrained(repo).save_pretrained(dir, " +
                "safe_serialization=True), then load that folder");
        var wanted = variant is null ? $"{baseName}.safetensors" : $"{baseName}.{variant}.safetensors or " +
                                                                   $"{baseName}.safetensors";
        throw NotAPipeline(repoId, $"{component}/{baseName}.safetensors",
            $"{component} has no weights ({wanted}); check the repo id and revision");
    }

    static HubException NotAPipeline(string repoId, string fileName, string what) =>
        new(HubErrorKind.NotAPipeline, repoId, fileName, null, $"'{repoId}' is not a pipeline LdmLab can read: {what}");
}
