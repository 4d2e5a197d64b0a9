using System.Runtime.InteropServices;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Metrics;

/// <summary>What one layer cost in one forward pass: multiply–adds counted as 2 FLOPs, and the elements it produced.</summary>
public sealed record LayerCost(string Name, string Kind, double Flops, double OutputElements);

/// <summary>
/// The cost of one forward pass, layer by layer, counted by hooks on the layers that run (Conv2d, Linear, GroupNorm,
/// LayerNorm) and by the attention observer (the [b·h, n, m] probability matrices and the two batched products
/// Q·Kᵀ and P·V, 2·n·m·d FLOPs each per head).
/// <para>Activation memory = the elements of every counted layer output and attention matrix: the tensors autograd
/// keeps for the backward pass. Functional intermediates (SiLU, residual sums, the GEGLU product) are not counted,
/// so this is a lower bound; <see cref="ProcessMemory"/> measures the real peak where the OS reports it.</para>
/// </summary>
public sealed record CostProfile(IReadOnlyList<LayerCost> Layers)
{
    public double Flops => Layers.Sum(l => l.Flops);
    public double ActivationElements => Layers.Sum(l => l.OutputElements);
    public double ActivationBytes(int bytesPerElement = 4) => ActivationElements * bytesPerElement;

    /// <summary>The largest single tensor produced: a lower bound on the peak memory even of inference.</summary>
    public double LargestOutputElements => Layers.Count == 0 ? 0 : Layers.Max(l => l.OutputElements);

    /// <summary>The same pass without the layers whose name starts with one of <paramref name="prefixes"/>.</summary>
    public CostProfile Without(params string[] prefixes) => new(Layers.Where(l => !prefixes.Any(p => l.Name.StartsWith(p, StringComparison.Ordinal))).ToList());

    /// <summary>FLOPs and output elements per layer kind (conv, linear, norm, attention).</summary>
    public IReadOnlyDictionary<string, (double flops, double elements)> ByKind() =>
        Layers.GroupBy(l => l.Kind).ToDictionary(g => g.Key, g => (g.Sum(l => l.Flops), g.Sum(l => l.OutputElements)));
}

public static class ComputeCost
{
    /// <summary>Runs <paramref name="forward"/> once with counting hooks on <paramref name="model"/>'s layers.</summary>
    public static CostProfile Count(nn.Module model, Action forward)
    {
        var layers = new List<LayerCost>();
        var removers = new List<Action>();
        var headDims = new Dictionary<string, int>();
        foreach (var (name, module) in model.named_modules())
        {
            if (module is Attention a) { headDims[a.LayerName] = a.HeadDim; continue; }
            Func<Tensor, Tensor, double>? flops = module switch
            {
                // every output element is a dot product of length C_in/groups · k_h · k_w
                Conv2d c => (_, y) => 2.0 * y.numel() * (c.in_channels / c.groups) * c.kernel_size[0] * c.kernel_size[1],
                Linear l => (_, y) => 2.0 * y.numel() * l.in_features,
                GroupNorm or LayerNorm => (x, _) => 0.0,
                _ => null,
            };
            if (flops is null || module is not nn.Module<Tensor, Tensor> hookable) continue;
            string kind = module switch { Conv2d => "conv", Linear => "linear", _ => "norm" };
            var remover = hookable.register_forward_hook((_, x, y) =>
            {
                layers.Add(new LayerCost(name, kind, flops(x, y), y.numel()));
                return y;
            });
            removers.Add(remover.remove);
        }
        var observing = model.ObserveAttention((layer, probs) =>
        {
            double d = headDims.TryGetValue(layer, out var hd) ? hd : 0;
            layers.Add(new LayerCost(layer, "attention", 2 * 2.0 * probs.numel() * d, probs.numel()));
        });
        try { forward(); }
        finally
        {
            observing.Dispose();
            foreach (var remove in removers) remove();
        }
        return new CostProfile(layers);
    }

    /// <summary>
    /// Every layer's cost is a monomial in the input area A = H·W: A⁰ (time embedding, cross-attention keys), A¹
    /// (convolutions, norms, tokens) or A² (self-attention matrices). Two counts at areas A₁ ≠ A₂ fix each layer's
    /// exponent, which gives the exact cost at any area whose downsampled sizes stay whole; an exponent that is not
    /// 0, 1 or 2 is an error.
    /// </summary>
    public static CostProfile Extrapolate(CostProfile atArea1, double area1, CostProfile atArea2, double area2, double targetArea)
    {
        if (atArea1.Layers.Count != atArea2.Layers.Count)
            throw new ArgumentException($"the two counts saw different layers ({atArea1.Layers.Count} vs {atArea2.Layers.Count})");
        var r = area2 / area1;
        double Scale(double v1, double v2, string what)
        {
            if (v1 == 0 && v2 == 0) return 0;
            double p = Math.Log(v2 / v1) / Math.Log(r);
            double rounded = Math.Round(p);
            if (Math.Abs(p - rounded) > 1e-6 || rounded is < 0 or > 2) throw new InvalidOperationException($"{what} grows as A^{p:G4}, not A^0, A^1 or A^2");
            return v2 * Math.Pow(targetArea / area2, rounded);
        }
        return new CostProfile(atArea1.Layers.Zip(atArea2.Layers, (a, b) =>
        {
            if (a.Name != b.Name) throw new ArgumentException($"layer order differs: {a.Name} vs {b.Name}");
            return b with { Flops = Scale(a.Flops, b.Flops, b.Name), OutputElements = Scale(a.OutputElements, b.OutputElements, b.Name) };
        }).ToList());
    }
}

/// <summary>
/// The real peak memory of a piece of work, from the kernel's high-water mark (Linux): reset VmHWM (write 5 to
/// /proc/self/clear_refs), give freed heap back (malloc_trim), run, then peak − resident-before. Null where unsupported.
/// </summary>
public static class ProcessMemory
{
    [DllImport("libc", EntryPoint = "malloc_trim")] static extern int MallocTrim(nuint pad);

    public static bool Supported => OperatingSystem.IsLinux() && File.Exists("/proc/self/clear_refs");

    /// <summary>Resident set size now (VmRSS), in bytes; null where /proc/self/status does not exist.</summary>
    public static long? ResidentBytes => OperatingSystem.IsLinux() && File.Exists("/proc/self/status") ? StatusKb("VmRSS") * 1024 : null;

    /// <summary>
    /// Hands freed native memory back to the OS: a full GC (finalizes tensors that escaped a dispose scope), then
    /// glibc's malloc_trim(0), which returns the free pages of every arena. glibc keeps freed blocks otherwise, so RSS
    /// after a loop stays at its high-water mark although every tensor was disposed. The loops call it when they end.
    /// </summary>
    public static void Release()
    {
        GC.Collect(); GC.WaitForPendingFinalizers();
        if (!OperatingSystem.IsLinux()) return;
        try { MallocTrim(0); } catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { }
    }

    public static long? PeakIncrease(Action work)
    {
        if (!Supported) { work(); return null; }
        Release();
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { work(); return null; }
        long before = StatusKb("VmRSS");
        work();
        return (StatusKb("VmHWM") - before) * 1024;
    }

    static long StatusKb(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key + ":")) return long.Parse(line[(key.Length + 1)..].Trim().Split(' ')[0]);
        throw new InvalidOperationException($"/proc/self/status has no {key}");
    }
}
