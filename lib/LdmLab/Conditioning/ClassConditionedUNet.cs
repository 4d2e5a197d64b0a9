using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Conditioning;

/// <summary>
/// A denoiser that takes one condition per sample — a class label, a row of prompt token ids — and knows its "no
/// condition" (the null class, the empty prompt), so that one trainer (condition dropout) and one guidance rule serve
/// every kind of conditioning.
/// </summary>
public abstract class ConditionalDenoiser(string name) : nn.Module(name)
{
    /// <summary>The model output (ε̂ or v̂) for noisy latents [B, C, H, W], timesteps ([B] or a scalar) and conditions [B, …].</summary>
    public abstract Tensor Forward(Tensor zt, Tensor t, Tensor conditions);

    /// <summary>The unconditional condition as one row (a scalar label, a [L] row of ids).</summary>
    public abstract Tensor NullCondition { get; }

    /// <summary>The U-Net that predicts the latents' noise (its out_channels are the latent channels).</summary>
    public abstract UNet2DConditionModel Backbone { get; }

    /// <summary>The latents it denoises: channels and the (square) sample size it was configured for.</summary>
    public (int Channels, int SampleSize) LatentShape => (Backbone.Config.OutChannels, Backbone.Config.SampleSize);

    /// <summary>
    /// Classifier-free guidance (<see cref="Diffusion.Guidance"/>): ε̂ = ε̂(∅) + w (ε̂(c) − ε̂(∅)), with ∅ the null
    /// condition or the given <paramref name="negative"/> conditions [B, …] (negative prompts). w ≤ 1 is the plain
    /// conditional output.
    /// </summary>
    public Tensor Guided(Tensor zt, Tensor t, Tensor conditions, double guidanceScale, Tensor? negative = null)
    {
        if (!Diffusion.Guidance.Enabled(guidanceScale)) return Forward(zt, t, conditions);
        var unconditional = negative ?? NullCondition.to(conditions.device).expand(conditions.shape);
        return Diffusion.Guidance.Apply(Forward, zt, t, conditions, unconditional, guidanceScale);
    }
}

/// <summary>
/// Class labels as cross-attention context: c = E[y] ∈ ℝ^{1×d} (one token per image), with an extra learned
/// "null" class (index = number of classes) for classifier-free guidance; the cross-attention maps show where the
/// class token is attended to. <see cref="TextConditionedUNet"/> is the same with a text encoder.
/// </summary>
public sealed class ClassConditionedUNet : ConditionalDenoiser
{
    readonly UNet2DConditionModel unet;
    readonly Embedding class_context;
    public int NumClasses { get; }
    public long NullLabel => NumClasses;
    public override UNet2DConditionModel Backbone => unet;

    public ClassConditionedUNet(UNetConfig config, int numClasses) : base(nameof(ClassConditionedUNet))
    {
        unet = new UNet2DConditionModel(config);
        class_context = nn.Embedding(numClasses + 1, config.CrossAttentionDim);
        using (no_grad()) class_context.weight!.normal_(0, 1);
        NumClasses = numClasses;
        RegisterComponents();
    }

    public Tensor Context(Tensor labels) => class_context.call(labels).unsqueeze(1);

    public override Tensor Forward(Tensor zt, Tensor t, Tensor labels) => unet.Forward(zt, t, Context(labels));

    public override Tensor NullCondition => tensor(NullLabel);
}
