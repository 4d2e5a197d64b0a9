using LdmLab.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Training;

/// <summary>
/// Exponential moving average of the weights: θ̄ ← d·θ̄ + (1 − d)·θ, with the warm-up
/// d_t = min(decay, (1 + t)/(10 + t)) so that early averages are not dominated by the random init.
/// </summary>
public sealed class Ema
{
    readonly Dictionary<string, Tensor> _shadow = new();
    public double Decay { get; }
    public long Updates { get; private set; }

    public Ema(nn.Module model, double decay = 0.999)
    {
        if (decay is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(decay), decay, "decay must lie in [0, 1)");
        Decay = decay;
        using var _ = no_grad();
        foreach (var (k, p) in model.named_parameters()) _shadow[k] = p.detach().clone().DetachFromDisposeScope();
    }

    public double CurrentDecay => Math.Min(Decay, (1.0 + Updates) / (10.0 + Updates));

    public void Update(nn.Module model)
    {
        double d = CurrentDecay;
        using var _ = no_grad();
        foreach (var (k, p) in model.named_parameters()) _shadow[k].mul_(d).add_(p.detach(), alpha: 1 - d);
        Updates++;
    }

    /// <summary>Copies the averaged weights into <paramref name="model"/> (e.g. an evaluation copy).</summary>
    public void CopyTo(nn.Module model)
    {
        using var _ = no_grad();
        foreach (var (k, p) in model.named_parameters()) p.copy_(_shadow[k]);
    }

    public IReadOnlyDictionary<string, Tensor> Shadow => _shadow;

    public Dictionary<string, Tensor> StateTensors()
    {
        var d = _shadow.ToDictionary(kv => "ema." + kv.Key, kv => kv.Value);
        d["ema.updates"] = tensor(Updates);
        return d;
    }

    /// <summary>Restores the shadow weights and update count; a missing or mis-shaped entry is an error naming it.</summary>
    /// <param name="source">the file the tensors came from, for error messages.</param>
    public void LoadStateTensors(IReadOnlyDictionary<string, Tensor> d, string source = "EMA state")
    {
        var missing = _shadow.Keys.Select(k => "ema." + k).Where(k => !d.ContainsKey(k)).ToList();
        if (!d.ContainsKey("ema.updates")) missing.Add("ema.updates");
        var unexpected = d.Keys.Where(k => k.StartsWith("ema.", StringComparison.Ordinal) && k != "ema.updates"
                                           && !_shadow.ContainsKey(k[4..])).ToList();
        var misShaped = _shadow.Where(kv => d.TryGetValue("ema." + kv.Key, out var t) && !t.shape.SequenceEqual(kv.Value.shape))
            .Select(kv => $"ema.{kv.Key}: [{string.Join(",", d["ema." + kv.Key].shape)}], model [{string.Join(",", kv.Value.shape)}]")
            .ToList();
        if (missing.Count + unexpected.Count + misShaped.Count > 0)
            throw new Data.DatasetException(source, "EMA state does not fit this model:" + KeyReport.Lines(missing, unexpected, misShaped));
        using var _ = no_grad();
        foreach (var (k, shadow) in _shadow) shadow.copy_(d["ema." + k]);
        Updates = d["ema.updates"].item<long>();
    }
}
