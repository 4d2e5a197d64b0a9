using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Adapters;

/// <summary>
/// A LoRA adapter file or argument that cannot be used: names the file (or "adapter" for one built in code), the
/// key, and what was expected.
/// </summary>
public sealed class AdapterFormatException(string file, string key, string message)
    : Exception($"{file}: {key}: {message}")
{
    public string File { get; } = file;
    public string Key { get; } = key;
}

/// <summary>
/// One low-rank update of a Linear or Conv2d (Hu et al. 2021): ΔW = (α/r)·B·A with A = <see cref="Down"/>
/// [r, in] (a conv: [r, in, kh, kw]) and B = <see cref="Up"/> [out, r] (a conv: [out, r, 1, 1]). Unmerged the
/// target computes W x + b + s·(α/r)·B(A x); merged, its weight is W + s·(α/r)·(B @ A) — the same function. The
/// factors are float32 whatever the target's dtype (diffusers builds its LoRA layers in float32).
/// </summary>
public sealed class LoraLayer : nn.Module
{
    readonly Parameter down, up;

    /// <param name="alpha">α; null: α = r, the factor 1 (a file without alphas, diffusers' dialect).</param>
    public LoraLayer(Tensor down, Tensor up, double? alpha = null, bool trainable = false) : base(nameof(LoraLayer))
    {
        this.down = new Parameter(down.to(ScalarType.Float32).detach().clone(), trainable);
        this.up = new Parameter(up.to(ScalarType.Float32).detach().clone(), trainable);
        Rank = (int)down.shape[0];
        Alpha = alpha ?? Rank;
        RegisterComponents();
    }

    public Parameter Down => down;
    public Parameter Up => up;
    public int Rank { get; }
    public double Alpha { get; }

    /// <summary>α/r, the factor between B·A and the update.</summary>
    public double Factor => Alpha / Rank;

    /// <summary>(α/r)·(B @ A) in the target's weight shape, float32.</summary>
    public Tensor Delta(long[] weightShape)
    {
        long outF = up.shape[0];
        var ba = up.reshape(outF, Rank).matmul(down.reshape(Rank, -1));                  // [out, in·kh·kw]
        return (Factor * ba).reshape(weightShape);
    }

    /// <summary>The branch (α/r)·B(A x) of <paramref name="target"/> for its input x, in float32.</summary>
    public Tensor Branch(nn.Module target, Tensor x)
    {
        var x32 = x.to(ScalarType.Float32);
        var h = target switch
        {
            Linear => nn.functional.linear(nn.functional.linear(x32, down), up),      // [..., r] → [..., out]
            Conv2d c => nn.functional.conv2d(nn.functional.conv2d(x32, down, strides: c.stride, padding: c.padding,
                dilation: c.dilation), up),                                  // [B, r, h, w] → [B, out, h, w]
            _ => throw new AdapterFormatException("adapter", target.GetName(),
                $"LoRA targets Linear and Conv2d layers, not {target.GetType().Name}"),
        };
        return Factor * h;
    }

    /// <summary>Checks the factors against a target's weight: a Linear takes 2-D factors, a Conv2d 4-D ones with
    /// the target's kernel in A and 1×1 in B, the ranks of A and B agree.</summary>
    internal void Validate(string file, string key, nn.Module target)
    {
        var w = target switch
        {
            Linear l => l.weight!,
            Conv2d c => c.weight!,
            _ => throw new AdapterFormatException(file, key,
                $"the module it names is a {target.GetType().Name}; LoRA targets Linear and Conv2d layers"),
        };
        string Shape(Tensor t) => $"[{string.Join(", ", t.shape)}]";
        bool conv = target is Conv2d;
        long[] wantDown = conv ? [Rank, w.shape[1], w.shape[2], w.shape[3]] : [Rank, w.shape[1]];
        long[] wantUp = conv ? [w.shape[0], Rank, 1, 1] : [w.shape[0], Rank];
        if (!down.shape.SequenceEqual(wantDown) || !up.shape.SequenceEqual(wantUp))
            throw new AdapterFormatException(file, key,
                $"down {Shape(down)} and up {Shape(up)} do not fit the {target.GetType().Name} weight {Shape(w)}: " +
                $"expected down [{string.Join(", ", wantDown)}] and up [{string.Join(", ", wantUp)}]");
    }
}
