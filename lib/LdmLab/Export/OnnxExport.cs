using System.Text.Json;
using System.Text.Json.Nodes;
using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Interop.Onnx;
using LdmLab.Pipelines;
using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Export;

/// <summary>
/// ONNX export of LdmLab's own modules, written by LdmLab (TorchSharp has no exporter): the graph is built from the
/// module tree by its diffusers/transformers structure (<see cref="UNetOnnx"/>, <see cref="VaeOnnx"/>,
/// <see cref="ClipTextOnnx"/>), node for node what the TorchSharp forward computes, with dynamic batch, spatial
/// and sequence axes, in opset 17 that ONNX Runtime's CPU provider runs. A module the exporter does not know, or a
/// hooked one (an attached LoRA), is refused with an <see cref="OnnxExportException"/> naming its layer path and type.
/// Weights are float32 initializers under their state-dict keys; past
/// <see cref="OnnxSaveOptions.ExternalDataThreshold"/> (2 GB) they go to a side file (ONNX external data).
/// </summary>
public static class OnnxExport
{
    /// <summary>The U-Net: sample, timestep, encoder_hidden_states → out_sample.</summary>
    public static void ExportUNet(UNet2DConditionModel unet, string path, OnnxSaveOptions? save = null) =>
        Write("unet", path, save, g => UNetOnnx.Emit(g, unet), unet.Config.ToJson());

    /// <summary>The VAE encoder: sample → latent_sample (posterior mean), latent_parameters ([μ, log σ²]).</summary>
    public static void ExportVaeEncoder(AutoencoderKL vae, string path, OnnxSaveOptions? save = null) =>
        Write("vae_encoder", path, save, g => VaeOnnx.EmitEncoder(g, vae), vae.Config.ToJson());

    /// <summary>The VAE decoder: latent_sample → sample (images in about [−1, 1]).</summary>
    public static void ExportVaeDecoder(AutoencoderKL vae, string path, OnnxSaveOptions? save = null) =>
        Write("vae_decoder", path, save, g => VaeOnnx.EmitDecoder(g, vae), vae.Config.ToJson());

    /// <summary>The CLIP text encoder: input_ids → last_hidden_state, pooler_output. <paramref name="idsType"/>:
    /// Int64 (transformers' and optimum's ids) or Int32 (what diffusers' OnnxStableDiffusionPipeline feeds).</summary>
    public static void ExportTextEncoder(ClipTextModel textEncoder, string path, ScalarType idsType = ScalarType.Int64,
        OnnxSaveOptions? save = null)
    {
        int type = idsType switch
        {
            ScalarType.Int64 => OnnxGraphBuilder.Int64,
            ScalarType.Int32 => OnnxGraphBuilder.Int32,
            _ => throw new ArgumentOutOfRangeException(nameof(idsType), idsType, "token ids are Int64 or Int32"),
        };
        Write("text_encoder", path, save, g => ClipTextOnnx.Emit(g, textEncoder, type), textEncoder.Config.ToJson());
    }

    /// <summary>
    /// Any of the models above by its type (an AutoencoderKL as its decoder); another type is an
    /// <see cref="OnnxExportException"/> naming it.
    /// </summary>
    public static void Export(nn.Module model, string path, OnnxSaveOptions? save = null)
    {
        switch (model)
        {
            case UNet2DConditionModel unet: ExportUNet(unet, path, save); break;
            case AutoencoderKL vae: ExportVaeDecoder(vae, path, save); break;
            case ClipTextModel text: ExportTextEncoder(text, path, save: save); break;
            default:
                throw new OnnxExportException("", ModuleTree.TypeName(model),
                    "the ONNX exporter writes UNet2DConditionModel, AutoencoderKL and ClipTextModel");
        }
    }

    /// <summary>
    /// A Stable Diffusion pipeline in the folder layout of diffusers' OnnxStableDiffusionPipeline (and the tools that
    /// read it): unet/, vae_encoder/, vae_decoder/, text_encoder/ each with model.onnx (the U-Net's weights in
    /// weights.pb beside it when they pass the threshold, as diffusers' conversion writes them) and the component's
    /// config.json (as optimum adds it: scaling_factor, sample_size); tokenizer/; scheduler/; model_index.json last,
    /// so a half-written folder has none. The text encoder takes int32 ids, as that pipeline feeds them.
    /// </summary>
    public static void SavePipeline(StableDiffusionPipeline pipe, string dir, OnnxSaveOptions? save = null)
    {
        save ??= new OnnxSaveOptions();
        Directory.CreateDirectory(dir);
        string Model(string component)
        {
            var sub = Path.Combine(dir, component);
            Directory.CreateDirectory(sub);
            return Path.Combine(sub, "model.onnx");
        }
        ExportUNet(pipe.Unet, Model("unet"), save with { ExternalDataFile = "weights.pb" });
        WriteJson(Path.Combine(dir, "unet", "config.json"), pipe.Unet.Config.ToJson());
        ExportVaeEncoder(pipe.Vae, Model("vae_encoder"), save);
        WriteJson(Path.Combine(dir, "vae_encoder", "config.json"), pipe.Vae.Config.ToJson());
        ExportVaeDecoder(pipe.Vae, Model("vae_decoder"), save);
        WriteJson(Path.Combine(dir, "vae_decoder", "config.json"), pipe.Vae.Config.ToJson());
        ExportTextEncoder(pipe.TextEncoder, Model("text_encoder"), ScalarType.Int32, save);
        WriteJson(Path.Combine(dir, "text_encoder", "config.json"), pipe.TextEncoder.Config.ToJson());
        pipe.Tokenizer.SavePretrained(Path.Combine(dir, "tokenizer"));
        pipe.SaveSchedulerConfig(Path.Combine(dir, "scheduler"));
        WriteJson(Path.Combine(dir, "model_index.json"), new JsonObject
        {
            ["_class_name"] = "OnnxStableDiffusionPipeline", ["_diffusers_version"] = "0.27.2",
            ["feature_extractor"] = new JsonArray(null, null), ["requires_safety_checker"] = false,
            ["safety_checker"] = new JsonArray(null, null),
            ["scheduler"] = new JsonArray("diffusers", pipe.SchedulerClass),
            ["text_encoder"] = new JsonArray("diffusers", "OnnxRuntimeModel"),
            ["tokenizer"] = new JsonArray("transformers", "CLIPTokenizer"),
            ["unet"] = new JsonArray("diffusers", "OnnxRuntimeModel"),
            ["vae_decoder"] = new JsonArray("diffusers", "OnnxRuntimeModel"),
            ["vae_encoder"] = new JsonArray("diffusers", "OnnxRuntimeModel"),
        });
    }

    static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    static void WriteJson(string path, JsonObject json) =>
        Data.AtomicFile.WriteAllText(path, json.ToJsonString(Indented));

    /// <summary>Builds the graph inside one dispose scope (the weight copies it holds go when it ends) and writes
    /// it.</summary>
    static void Write(string name, string path, OnnxSaveOptions? save, Action<OnnxGraphBuilder> emit, JsonObject config)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var g = new OnnxGraphBuilder(name);
        emit(g);
        var metadata = new Dictionary<string, string>(save?.Metadata ?? new Dictionary<string, string>())
        {
            ["ldmlab.component"] = name, ["ldmlab.config"] = config.ToJsonString(),
        };
        OnnxModelWriter.Save(g, path, (save ?? new OnnxSaveOptions()) with { Metadata = metadata });
    }
}
