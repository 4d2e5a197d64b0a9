using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Conditioning;

/// <summary>
/// Class labels as cross-attention context: c = E[y] ∈ ℝ^{1×d} (one token per image), with an extra learned
/// "null" class (index = number of classes) for classifier-free guidance. Until the text encoder exists this is the
/// U-Net's context; the cross-attention maps then show where each class token is attended to.
/// </summary>
public sealed class ClassConditionedUNet : nn.Module
{
    readonly UNet2DConditionModel unet;
    readonly Embedding class_context;
    public int NumClasses { get; }
    public long NullLabel => NumClasses;
    public UNet2DConditionModel Backbone => unet;

    public ClassConditionedUNet(UNetConfig config, int numClasses) : base(nameof(ClassConditionedUNet))
    {
        unet = new UNet2DConditionModel(config);
        class_context = nn.Embedding(numClasses + 1, config.CrossAttentionDim);
        using (no_grad()) class_context.weight!.normal_(0, 1);
        NumClasses = numClasses;
        RegisterComponents();
    }

    public Tensor Context(Tensor labels) => class_context.call(labels).unsqueeze(1);

    public Tensor Forward(Tensor zt, Tensor t, Tensor labels) => unet.Forward(zt, t, Context(labels));

    /// <summary>ε̂ = ε̂(∅) + w (ε̂(y) − ε̂(∅)) in one batched call (w = 1: plain conditional, w = 0: unconditional).</summary>
    public Tensor Guided(Tensor zt, Tensor t, Tensor labels, double guidanceScale)
    {
        if (guidanceScale == 1.0) return Forward(zt, t, labels);
        long b = zt.shape[0];
        var both = Forward(cat([zt, zt]), t.dim() == 0 ? t : cat([t, t]), cat([full_like(labels, NullLabel), labels]));
        var parts = both.split(b);
        return parts[0] + guidanceScale * (parts[1] - parts[0]);
    }
}
