using System.Runtime.InteropServices;
using static TorchSharp.torch;

namespace LdmLab.Runtime;

/// <summary>
/// What Setup decided about oneDNN (mkldnn) for CPU convolutions, and on what evidence.
/// <paramref name="IsaCap"/> is the ONEDNN_MAX_CPU_ISA in force (null: none), <paramref name="CpuIsa"/> the best
/// instruction set the CPU offers, <paramref name="Check"/> the self-check (null when it did not run).
/// </summary>
public sealed record OneDnnDecision(bool Enabled, string Reason, string? IsaCap, string CpuIsa, OneDnnCheckResult? Check)
{
    /// <summary>The ISA oneDNN dispatches to: the lower of the CPU's and the cap.</summary>
    public string EffectiveIsa => IsaCap is null ? CpuIsa : OneDnn.Lower(IsaCap, CpuIsa);

    public override string ToString() =>
        $"oneDNN (mkldnn) for CPU: {(Enabled ? "enabled" : "disabled")} — {Reason}; ISA {EffectiveIsa} " +
        $"(CPU {CpuIsa}, cap {IsaCap ?? "none"})" + (Check is null ? "" : $"; self-check {Check}");
}

/// <summary>The worst relative error of the self-check and the case it occurred in.</summary>
public sealed record OneDnnCheckResult(double WorstError, string WorstCase, int Cases)
{
    public bool Passed => WorstError <= OneDnn.Tolerance;
    public override string ToString() =>
        $"{(Passed ? "passed" : "FAILED")}: worst relative error {WorstError:E1} ({WorstCase}) over {Cases} cases, " +
        $"tolerance {OneDnn.Tolerance:E0}";
}

/// <summary>
/// oneDNN is fast and, on some CPUs, wrong: on an AVX-512 machine its blocked kernels gave wrong conv input gradients
/// (out_channels not a multiple of 16) and wrong forwards (in_channels 17); on an AVX2 machine they are right and 2×
/// faster than LibTorch's fallback. So Setup decides by evidence:
/// 1. cap the ISA at AVX2 (ONEDNN_MAX_CPU_ISA, set with libc setenv before the first convolution) unless the user
///    set a cap (ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA);
/// 2. turn oneDNN on and run <see cref="SelfCheck"/>: float32 convolutions (forward, input and weight gradient)
///    on the shapes that failed, against the same op in float64 (which never runs in oneDNN);
/// 3. keep it on only if every relative error is within <see cref="Tolerance"/>.
/// LDMLAB_MKLDNN=0/1 forces the switch (the check still runs and is reported).
/// </summary>
public static class OneDnn
{
    /// <summary>Relative error (max |a − b| / max |b|) above which a float32 result counts as wrong (float32 gives ~1e-7).</summary>
    public const double Tolerance = 1e-4;

    const string CapMarker = "LDMLAB_ONEDNN_CAP_SET_BY_LDMLAB";

    /// <summary>The ISA cap Setup applies when the user set none.</summary>
    public const string DefaultIsaCap = "AVX2";

    static readonly string[] IsaOrder = ["SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX512_CORE", "AVX512_CORE_VNNI",
        "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10_1_512", "AVX10_1_512_AMX",
        "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "DEFAULT"];

    /// <summary>The lower of two oneDNN ISA names (unknown names rank highest).</summary>
    public static string Lower(string a, string b) => Rank(a) <= Rank(b) ? a : b;

    static int Rank(string isa)
    {
        int i = Array.IndexOf(IsaOrder, isa.ToUpperInvariant());
        return i < 0 ? IsaOrder.Length : i;
    }

    /// <summary>The best oneDNN ISA name the CPU supports, from /proc/cpuinfo's flags (Linux); "unknown" elsewhere.</summary>
    public static string CpuIsa()
    {
        try
        {
            if (!File.Exists("/proc/cpuinfo")) return "unknown";
            var line = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("flags"));
            return line is null ? "unknown" : IsaFromFlags(line[(line.IndexOf(':') + 1)..].Split(' ',
                StringSplitOptions.RemoveEmptyEntries).ToHashSet());
        }
        catch (IOException) { return "unknown"; }
    }

    /// <summary>Maps x86 CPU flags to oneDNN's ISA names (the ones its dispatcher distinguishes for convolutions).</summary>
    public static string IsaFromFlags(IReadOnlySet<string> f)
    {
        bool avx512Core = f.Contains("avx512f") && f.Contains("avx512bw") && f.Contains("avx512vl") && f.Contains("avx512dq");
        if (avx512Core && f.Contains("amx_tile")) return "AVX512_CORE_AMX";
        if (avx512Core && f.Contains("avx512_fp16")) return "AVX512_CORE_FP16";
        if (avx512Core && f.Contains("avx512_bf16")) return "AVX512_CORE_BF16";
        if (avx512Core && f.Contains("avx512_vnni")) return "AVX512_CORE_VNNI";
        if (avx512Core) return "AVX512_CORE";
        if (f.Contains("avx2") && f.Contains("avx_vnni")) return "AVX2_VNNI";
        if (f.Contains("avx2")) return "AVX2";
        if (f.Contains("avx")) return "AVX";
        if (f.Contains("sse4_1")) return "SSE41";
        return "unknown";
    }

    [DllImport("libc", EntryPoint = "setenv", CharSet = CharSet.Ansi)]
    static extern int SetEnv(string name, string value, int overwrite);

    /// <summary>
    /// Step 1: the cap in force after this call. A user's ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA wins; otherwise AVX2,
    /// written to the C environment (oneDNN reads it with getenv once, at its first ISA query).
    /// </summary>
    internal static string? ApplyIsaCap(List<string> steps)
    {
        foreach (var name in new[] { "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA" })
            if (Environment.GetEnvironmentVariable(name) is { Length: > 0 } user)
            {
                bool inherited = Environment.GetEnvironmentVariable(CapMarker) == user;   // a parent LdmLab set it
                steps.Add(inherited
                    ? $"oneDNN ISA cap {user} ({name}, inherited from the LdmLab process that started this one)"
                    : $"oneDNN ISA cap {user} (set by the user: {name})");
                return user.ToUpperInvariant();
            }
        if (OperatingSystem.IsWindows()) return null;
        try
        {
            if (SetEnv("ONEDNN_MAX_CPU_ISA", DefaultIsaCap, 0) != 0) return null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { return null; }
        Environment.SetEnvironmentVariable("ONEDNN_MAX_CPU_ISA", DefaultIsaCap);   // child processes inherit it
        Environment.SetEnvironmentVariable(CapMarker, DefaultIsaCap);            // … and know it was not the user's
        steps.Add($"oneDNN ISA cap {DefaultIsaCap} (ONEDNN_MAX_CPU_ISA; its AVX-512 kernels were wrong on one CPU)");
        return DefaultIsaCap;
    }

    /// <summary>A convolution under test: (input, weight, stride) → output (padding 1).</summary>
    public delegate Tensor Conv(Tensor input, Tensor weight, long stride);

    static Tensor PlainConv(Tensor x, Tensor w, long stride) =>
        nn.functional.conv2d(x, w, strides: [stride, stride], padding: [1, 1]);

    /// <summary>
    /// (batch, in, out, size, stride): the shapes that failed on AVX-512 (8→3 and 8→17 input gradients at 16², the
    /// 17→8 forward at 12²), in/out channels 3 and 17 at strides 1 and 2, and controls.
    /// </summary>
    static readonly (int batch, int cin, int cout, int size, int stride)[] Cases =
    [
        (4, 8, 3, 16, 1), (4, 8, 17, 16, 1), (4, 17, 8, 12, 1),
        (2, 3, 17, 11, 1), (2, 17, 3, 11, 2), (2, 17, 17, 11, 2), (2, 3, 3, 11, 2), (2, 16, 16, 11, 1), (2, 8, 33, 9, 2),
    ];

    /// <summary>
    /// Step 2: runs <paramref name="conv"/> (default: conv2d as the process runs it now, i.e. with oneDNN if it is on)
    /// in float32 on every case and compares forward, input gradient and weight gradient with float64.
    /// Inputs are deterministic (sines of the index): the check consumes no random numbers.
    /// </summary>
    public static OneDnnCheckResult SelfCheck(Conv? conv = null)
    {
        conv ??= PlainConv;
        double worst = 0;
        string worstCase = "";
        using var scope = NewDisposeScope();
        foreach (var (batch, cin, cout, size, stride) in Cases)
        {
            var x64 = Deterministic([batch, cin, size, size], 0.37).requires_grad_(true);
            var w64 = (Deterministic([cout, cin, 3, 3], 1.13) / Math.Sqrt(9.0 * cin)).requires_grad_(true);
            var y64 = PlainConv(x64, w64, stride);
            var upstream = Deterministic(y64.shape, 2.71);
            var g64 = autograd.grad([(y64 * upstream).sum()], [x64, w64]);

            var x32 = x64.detach().to_type(ScalarType.Float32).requires_grad_(true);
            var w32 = w64.detach().to_type(ScalarType.Float32).requires_grad_(true);
            var y32 = conv(x32, w32, stride);
            var g32 = autograd.grad([(y32 * upstream.to_type(ScalarType.Float32)).sum()], [x32, w32]);

            foreach (var (what, a, b) in new[] { ("forward", y32, y64), ("input gradient", g32[0], g64[0]),
                         ("weight gradient", g32[1], g64[1]) })
            {
                double err = RelativeError(a, b);
                if (err > worst || worstCase == "")
                {
                    worst = Math.Max(worst, err);
                    worstCase = $"{what}, {cin}→{cout} channels at {size}², stride {stride}";
                }
            }
        }
        return new OneDnnCheckResult(worst, worstCase, Cases.Length * 3);
    }

    static Tensor Deterministic(long[] shape, double frequency) =>
        arange(shape.Aggregate(1L, (p, d) => p * d), ScalarType.Float64).mul(frequency).sin_().reshape(shape);

    /// <summary>max |a − b| / max |b|; NaN or shape mismatch counts as infinitely wrong.</summary>
    static double RelativeError(Tensor a, Tensor b)
    {
        if (!a.shape.SequenceEqual(b.shape)) return double.PositiveInfinity;
        double err = (a.to_type(ScalarType.Float64) - b).abs().max().item<double>();
        double scale = Math.Max(b.abs().max().item<double>(), 1e-12);
        return double.IsFinite(err) ? err / scale : double.PositiveInfinity;
    }

    /// <summary>Steps 2–3 (with the cap already applied): the decision; <paramref name="set"/> switches oneDNN.</summary>
    public static OneDnnDecision Decide(string? cap, Func<bool, bool> set, Conv? conv = null)
    {
        var forced = Environment.GetEnvironmentVariable("LDMLAB_MKLDNN") switch
        {
            "1" or "true" => true,
            "0" or "false" => (bool?)false,
            _ => null,
        };
        var cpu = CpuIsa();
        set(true);
        OneDnnCheckResult check;
        try { check = SelfCheck(conv); }
        catch (Exception e)
        {
            set(forced ?? false);
            return new OneDnnDecision(forced ?? false, $"the self-check threw: {e.Message}", cap, cpu, null);
        }
        if (forced is { } f)
            return new OneDnnDecision(set(f), $"LDMLAB_MKLDNN={(f ? 1 : 0)}", cap, cpu, check);
        return check.Passed
            ? new OneDnnDecision(set(true), "self-check passed", cap, cpu, check)
            : new OneDnnDecision(set(false), "self-check failed: oneDNN computes wrong results on this CPU " +
                                             "(LDMLAB_MKLDNN=1 forces it on)", cap, cpu, check);
    }
}
