using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Autoencoders;

/// <summary>
/// PatchGAN discriminator (Isola et al.; CompVis NLayerDiscriminator): strided 4×4 convolutions with LeakyReLU(0.2),
/// normalisation between them, and a 1-channel map of per-patch real/fake logits. Options: spectral normalisation of
/// every conv (Miyato et al., one power iteration per call) instead of BatchNorm.
/// </summary>
public sealed class PatchGan : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<nn.Module<Tensor, Tensor>> main;

    public PatchGan(int inChannels = 3, int width = 64, int layers = 3, bool spectralNorm = false) : base(nameof(PatchGan))
    {
        var mods = new List<nn.Module<Tensor, Tensor>>();
        nn.Module<Tensor, Tensor> Conv(int i, int o, int s) => spectralNorm ? new SpectralNormConv2d(i, o, 4, s, 1) : nn.Conv2d(i, o, 4, stride: s, padding: 1);
        mods.Add(Conv(inChannels, width, 2));
        mods.Add(nn.LeakyReLU(0.2));
        int ch = width;
        for (int n = 1; n <= layers; n++)
        {
            int next = width * Math.Min(1 << n, 8);
            mods.Add(Conv(ch, next, n == layers ? 1 : 2));
            if (!spectralNorm) mods.Add(nn.BatchNorm2d(next));
            mods.Add(nn.LeakyReLU(0.2));
            ch = next;
        }
        mods.Add(Conv(ch, 1, 1));
        main = nn.ModuleList(mods.ToArray());
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        foreach (var m in main) x = m.forward(x);
        return x;
    }
}

/// <summary>A conv whose weight is divided by its largest singular value, estimated by power iteration (W/σ(W)).</summary>
public sealed class SpectralNormConv2d : nn.Module<Tensor, Tensor>
{
    readonly Parameter weight, bias;
    Tensor _u;
    readonly long _stride, _padding;

    public SpectralNormConv2d(int inChannels, int outChannels, int kernel, int stride, int padding) : base(nameof(SpectralNormConv2d))
    {
        var conv = nn.Conv2d(inChannels, outChannels, kernel, stride: stride, padding: padding);
        weight = new Parameter(conv.weight!.detach().clone());
        bias = new Parameter(conv.bias!.detach().clone());
        _u = nn.functional.normalize(randn(outChannels), dim: 0);
        _stride = stride; _padding = padding;
        RegisterComponents();
    }

    /// <summary>σ(W) estimated with one power iteration on W reshaped to [out, in·k·k] (u persists between calls).</summary>
    public Tensor Sigma()
    {
        var w = weight.reshape(weight.shape[0], -1);
        using (no_grad())
        {
            var v = nn.functional.normalize(w.T.matmul(_u.to(w.device)), dim: 0);
            _u = nn.functional.normalize(w.matmul(v), dim: 0).DetachFromDisposeScope();
        }
        var vv = nn.functional.normalize(w.T.matmul(_u), dim: 0).detach();
        return _u.dot(w.matmul(vv));
    }

    public override Tensor forward(Tensor x) =>
        nn.functional.conv2d(x, weight / Sigma(), bias, strides: [_stride, _stride], padding: [_padding, _padding]);
}

/// <summary>GAN losses and weights used to train autoencoders (CompVis' LPIPSWithDiscriminator recipe).</summary>
public static class AdversarialLoss
{
    /// <summary>Hinge loss for D: E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̂))].</summary>
    public static Tensor DiscriminatorHinge(Tensor logitsReal, Tensor logitsFake) =>
        0.5 * (nn.functional.relu(1 - logitsReal).mean() + nn.functional.relu(1 + logitsFake).mean());

    /// <summary>Generator loss −E[D(x̂)].</summary>
    public static Tensor GeneratorHinge(Tensor logitsFake) => -logitsFake.mean();

    /// <summary>
    /// Adaptive weight λ = ‖∇_W L_rec‖ / (‖∇_W L_G‖ + 1e-4), clamped to [0, 1e4], W the decoder's last layer:
    /// balances the adversarial gradient against the reconstruction gradient (Esser et al. 2021).
    /// </summary>
    public static double AdaptiveWeight(Tensor reconstructionLoss, Tensor generatorLoss, Tensor lastLayerWeight, double discWeight = 1.0)
    {
        var gRec = autograd.grad([reconstructionLoss], [lastLayerWeight], retain_graph: true)[0];
        var gGen = autograd.grad([generatorLoss], [lastLayerWeight], retain_graph: true)[0];
        double w = gRec.norm().item<float>() / (gGen.norm().item<float>() + 1e-4);
        return Math.Clamp(w, 0, 1e4) * discWeight;
    }

    /// <summary>The adversarial term is off before <paramref name="startStep"/> (delayed start).</summary>
    public static double DiscriminatorFactor(long step, long startStep, double factor = 1.0) => step < startStep ? 0.0 : factor;

    /// <summary>R1 gradient penalty (γ/2)·E‖∇ₓD(x)‖² on real images (Mescheder et al. 2018).</summary>
    public static Tensor GradientPenalty(nn.Module<Tensor, Tensor> discriminator, Tensor real, double gamma = 10.0)
    {
        var x = real.detach().requires_grad_(true);
        var logits = discriminator.forward(x);
        var g = autograd.grad([logits.sum()], [x], retain_graph: true, create_graph: true)[0];
        return 0.5 * gamma * g.pow(2).flatten(1).sum(1).mean();
    }
}
