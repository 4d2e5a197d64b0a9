using LdmLab.Interop;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Training;

/// <summary>
/// AdamW (Loshchilov &amp; Hutter), written out so that its state is plain named tensors that checkpoints store as
/// safetensors: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g², θ ← θ − lr·(m̂/(√v̂ + ε) + λθ), m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ).
/// </summary>
public sealed class AdamW
{
    readonly (string name, Parameter p)[] _params;
    readonly Dictionary<string, Tensor> _m = new(), _v = new();
    public double LearningRate { get; set; }
    public double Beta1 { get; } = 0.9;
    public double Beta2 { get; } = 0.999;
    public double Eps { get; } = 1e-8;
    public double WeightDecay { get; }
    public long Steps { get; private set; }

    public AdamW(IEnumerable<(string name, Parameter p)> parameters, double lr, double weightDecay = 0.0, double beta1 = 0.9, double beta2 = 0.999)
    {
        _params = parameters.Where(x => x.p.requires_grad).ToArray();
        LearningRate = lr; WeightDecay = weightDecay; Beta1 = beta1; Beta2 = beta2;
    }

    public void ZeroGrad()
    {
        foreach (var (_, p) in _params) p.grad?.zero_();
    }

    public void Step()
    {
        Steps++;
        double bc1 = 1 - Math.Pow(Beta1, Steps), sqrtBc2 = Math.Sqrt(1 - Math.Pow(Beta2, Steps));
        using var _ = no_grad();
        foreach (var (name, p) in _params)
        {
            var g = p.grad;
            if (g is null) continue;
            if (!_m.TryGetValue(name, out var m)) _m[name] = m = zeros_like(p).DetachFromDisposeScope();
            if (!_v.TryGetValue(name, out var v)) _v[name] = v = zeros_like(p).DetachFromDisposeScope();
            m.lerp_(g, 1 - Beta1);                                   // m ← β₁m + (1−β₁)g, one kernel
            v.mul_(Beta2).addcmul_(g, g, value: 1 - Beta2);          // v ← β₂v + (1−β₂)g²
            if (WeightDecay > 0) p.mul_(1 - LearningRate * WeightDecay);
            using var denom = v.sqrt().div_(sqrtBc2).add_(Eps);      // √v̂ + ε = √v/√(1−β₂ᵗ) + ε
            p.addcdiv_(m, denom, value: -LearningRate / bc1);
        }
    }

    /// <summary>The optimizer state as named tensors (for checkpoints).</summary>
    public Dictionary<string, Tensor> StateTensors()
    {
        var d = new Dictionary<string, Tensor>();
        foreach (var (k, t) in _m) d["adam.m." + k] = t;
        foreach (var (k, t) in _v) d["adam.v." + k] = t;
        d["adam.steps"] = tensor(Steps);
        return d;
    }

    /// <summary>
    /// Restores the step count and moments. Moments exist only for parameters that have had a gradient, so a parameter
    /// without them is fine; a moment for no parameter, a mis-shaped one or a missing step count is an error naming it.
    /// </summary>
    /// <param name="source">the file the tensors came from, for error messages.</param>
    public void LoadStateTensors(IReadOnlyDictionary<string, Tensor> d, string source = "optimizer state")
    {
        var shapes = _params.ToDictionary(x => x.name, x => x.p.shape);
        var moments = d.Where(kv => kv.Key.StartsWith("adam.m.", StringComparison.Ordinal)
                                    || kv.Key.StartsWith("adam.v.", StringComparison.Ordinal)).ToList();
        var missing = d.ContainsKey("adam.steps") ? new List<string>() : ["adam.steps"];
        var unexpected = moments.Where(kv => !shapes.ContainsKey(kv.Key[7..])).Select(kv => kv.Key).ToList();
        var misShaped = moments.Where(kv => shapes.TryGetValue(kv.Key[7..], out var s) && !kv.Value.shape.SequenceEqual(s))
            .Select(kv => $"{kv.Key}: [{string.Join(",", kv.Value.shape)}], parameter [{string.Join(",", shapes[kv.Key[7..]])}]")
            .ToList();
        if (missing.Count + unexpected.Count + misShaped.Count > 0)
            throw new Data.DatasetException(source, "optimizer state does not fit these parameters:" +
                                                    KeyReport.Lines(missing, unexpected, misShaped));
        Steps = d["adam.steps"].item<long>();
        foreach (var t in _m.Values.Concat(_v.Values)) t.Dispose();
        _m.Clear(); _v.Clear();
        foreach (var (k, t) in moments)
            (k[5] == 'm' ? _m : _v)[k[7..]] = t.clone().DetachFromDisposeScope();
    }
}
