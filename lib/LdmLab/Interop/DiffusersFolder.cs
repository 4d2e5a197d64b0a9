using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;

namespace LdmLab.Interop;

/// <summary>A diffusers model folder: config.json + diffusion_pytorch_model.safetensors (diffusers key names).</summary>
public static class DiffusersFolder
{
    public const string WeightsName = "diffusion_pytorch_model.safetensors";

    /// <summary>
    /// Parses config.json, builds the model from it and loads the weights strictly: with a
    /// <paramref name="variant"/> (e.g. "fp16") diffusion_pytorch_model.{variant}.safetensors where the folder has
    /// it, else the plain name (see <see cref="WeightsPath"/>).
    /// </summary>
    public static TModel Load<TModel, TConfig>(string dir, Func<JsonObject, string, TConfig> parseConfig,
        Func<TConfig, TModel> create, string? variant = null)
        where TModel : torch.nn.Module
    {
        var configPath = Path.Combine(dir, "config.json");
        var model = create(ConfigFile.Read(configPath, json => parseConfig(json, configPath)));
        StateDicts.Load(model, WeightsPath(dir, WeightsName, variant));
        return model;
    }

    /// <summary>
    /// The weights file of a folder as diffusers and transformers name a variant's: {name}.{variant}.safetensors
    /// (model.fp16.safetensors) when a variant is given and that file exists, else {name}.safetensors — the hub
    /// client downloads the plain file for components that have no variant.
    /// </summary>
    public static string WeightsPath(string dir, string fileName, string? variant)
    {
        var plain = Path.Combine(dir, fileName);
        if (string.IsNullOrEmpty(variant)) return plain;
        var ext = Path.GetExtension(fileName);
        var withVariant = Path.Combine(dir, $"{Path.GetFileNameWithoutExtension(fileName)}.{variant}{ext}");
        return File.Exists(withVariant) ? withVariant : plain;
    }

    /// <summary>Writes the weights and config.json, each atomically.</summary>
    public static void Save(torch.nn.Module model, JsonObject config, string dir)
    {
        Directory.CreateDirectory(dir);
        StateDicts.Save(model, Path.Combine(dir, WeightsName));
        Data.AtomicFile.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}
