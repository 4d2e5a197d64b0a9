using LdmLab.Adapters;

namespace LdmLab.Pipelines;

/// <summary>A LoRA file attached to a pipeline (diffusers' <c>load_lora_weights</c>): what was read, and the handle
/// that detaches it. <see cref="Fuse"/> merges it instead (faster per step, one scale); dispose detaches or
/// unfuses.</summary>
public sealed class LoadedLora : IDisposable
{
    readonly StableDiffusionPipeline _pipeline;
    IDisposable? _unet, _textEncoder;
    bool _fused;

    internal LoadedLora(StableDiffusionPipeline pipeline, LoraLoad load, double scale)
    {
        _pipeline = pipeline;
        Load = load;
        Scale = scale;
        _unet = load.Adapter.Attach(pipeline.Unet, "unet", scale);
        _textEncoder = load.Adapter.Attach(pipeline.TextEncoder, "text_encoder", scale);
        pipeline.TextEncodingCache?.Clear();                     // cached prompts came from the text encoder before
    }

    /// <summary>The adapter, the file's dialect and the keys that matched no module.</summary>
    public LoraLoad Load { get; }
    public double Scale { get; }

    /// <summary>Merges the adapter into the U-Net's and text encoder's weights at <see cref="Scale"/> (diffusers'
    /// <c>fuse_lora</c>); the unmerged hooks are removed.</summary>
    public void Fuse()
    {
        if (_fused) return;
        Detach();
        Load.Adapter.Fuse(_pipeline.Unet, "unet", Scale);
        Load.Adapter.Fuse(_pipeline.TextEncoder, "text_encoder", Scale);
        _fused = true;
        _pipeline.TextEncodingCache?.Clear();
    }

    void Detach()
    {
        _unet?.Dispose(); _textEncoder?.Dispose();
        _unet = _textEncoder = null;
    }

    /// <summary>Detaches the adapter, or unfuses it when fused: the pipeline computes what it did before.</summary>
    public void Dispose()
    {
        Detach();
        _pipeline.TextEncodingCache?.Clear();
        if (!_fused) return;
        Load.Adapter.Unfuse(_pipeline.Unet, "unet");
        Load.Adapter.Unfuse(_pipeline.TextEncoder, "text_encoder");
        _fused = false;
    }
}

/// <summary>LoRA on a <see cref="StableDiffusionPipeline"/>, as diffusers users call it.</summary>
public static class PipelineLora
{
    /// <summary>
    /// Reads a LoRA file (diffusers, PEFT or kohya-ss/A1111; <see cref="LoraFiles.Read"/>) against this pipeline's
    /// U-Net and text encoder and attaches it at <paramref name="scale"/> (A1111's <c>&lt;lora:name:scale&gt;</c>).
    /// Several files may be loaded at once; dispose one to remove it.
    /// </summary>
    public static LoadedLora LoadLoraWeights(this StableDiffusionPipeline pipeline, string path, double scale = 1.0) =>
        new(pipeline, LoraFiles.Read(path, pipeline.Unet, pipeline.TextEncoder), scale);
}
