using System.Text.Json;
using System.Text.Json.Nodes;
using TorchSharp;

namespace LdmLab.Interop;

/// <summary>A diffusers model folder: config.json + diffusion_pytorch_model.safetensors (diffusers key names).</summary>
public static class DiffusersFolder
{
    public const string WeightsName = "diffusion_pytorch_model.safetensors";

    /// <summary>Parses config.json, builds the model from it and loads the weights strictly.</summary>
    public static TModel Load<TModel, TConfig>(string dir, Func<JsonObject, string, TConfig> parseConfig, Func<TConfig, TModel> create)
        where TModel : torch.nn.Module
    {
        var configPath = Path.Combine(dir, "config.json");
        var model = create(ConfigFile.Read(configPath, json => parseConfig(json, configPath)));
        StateDicts.Load(model, Path.Combine(dir, WeightsName));
        return model;
    }

    /// <summary>Writes the weights and config.json, each atomically.</summary>
    public static void Save(torch.nn.Module model, JsonObject config, string dir)
    {
        Directory.CreateDirectory(dir);
        StateDicts.Save(model, Path.Combine(dir, WeightsName));
        Data.AtomicFile.WriteAllText(Path.Combine(dir, "config.json"), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}
