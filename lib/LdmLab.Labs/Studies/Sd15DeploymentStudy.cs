using System.Diagnostics;
using LdmLab.Export;
using LdmLab.Interop.Onnx;

namespace LdmLab.Labs;

/// <summary>
/// One runtime's guided step of the SD 1.5-shaped U-Net: the median time of a step, the resident memory that loading
/// the model added (TorchSharp: building it; ONNX Runtime: creating the session from the file) and the peak that one
/// step added on top, the model file's size, and the process's own peak resident memory (VmHWM) when the row was done.
/// </summary>
public sealed record Sd15StepRow(string Runtime, string Shape, long Parameters, double FileMB, double MsPerStep,
    double? LoadMB, double? StepPeakMB, double? ProcessPeakMB);

/// <summary>
/// Speed and memory of Stable Diffusion 1.5's U-Net topology (random weights: speed and memory only, nothing is
/// judged) in TorchSharp float32 and in ONNX Runtime on the project's own export of the same graph
/// (<see cref="OnnxExport.ExportUNet"/>). One guided step is a forward of batch 2 (unconditional and conditional rows)
/// on 4×64×64 latents with a 77×768 context, as <see cref="ImageCostStudy.UNetStep"/> times it.
/// <para>
/// At full width the float32 weights are 3.4 GB, twice over while both runtimes hold a copy; a run that must stay
/// under a memory budget takes the same topology at a reduced width instead (<see cref="Config"/>,
/// <see cref="DivisorFor"/>): every block's channels divided by d, everything else — blocks, layers, heads, the
/// 64×64 latents and the 77×768 context — unchanged. The TorchSharp model is disposed before ONNX Runtime loads its
/// copy, so at most one copy of the weights is resident at a time (plus the exporter's while it writes).
/// </para>
/// </summary>
public static class Sd15DeploymentStudy
{
    /// <summary>Width divisors that keep every block's channels a multiple of GroupNorm's 32 groups
    /// (320, 640, 1280 / d).</summary>
    public static readonly int[] WidthDivisors = [1, 2, 5, 10];

    /// <summary>SD 1.5's U-Net config with every block's output channels divided by <paramref name="divisor"/>
    /// (one of <see cref="WidthDivisors"/>); 1 is SD 1.5 itself.</summary>
    public static UNetConfig Config(int divisor)
    {
        if (!WidthDivisors.Contains(divisor))
            throw new ArgumentOutOfRangeException(nameof(divisor), divisor,
                $"the width divisor must be one of {string.Join(", ", WidthDivisors)} (channels stay multiples of 32)");
        var sd = UNetConfig.StableDiffusion15;
        return sd with { BlockOutChannels = sd.BlockOutChannels.Select(c => c / divisor).ToArray() };
    }

    /// <summary>The parameter count of a U-Net config, counted on the meta device (no memory).</summary>
    public static long Parameters(UNetConfig config)
    {
        using var unet = Lab.OnMeta(() => new UNet2DConditionModel(config));
        return unet.parameters().Sum(p => p.numel());
    }

    /// <summary>
    /// The smallest width divisor (the widest model) whose float32 weights, 4 bytes per parameter, fit in
    /// <paramref name="maxWeightBytes"/>; the largest divisor when none does.
    /// </summary>
    public static int DivisorFor(long maxWeightBytes)
    {
        if (maxWeightBytes <= 0)
            throw new ArgumentOutOfRangeException(nameof(maxWeightBytes), maxWeightBytes, "a positive byte budget");
        foreach (int d in WidthDivisors)
            if (4 * Parameters(Config(d)) <= maxWeightBytes) return d;
        return WidthDivisors[^1];
    }

    /// <summary>"SD 1.5 (320-640-1280-1280)" or "SD 1.5 topology at 1/10 width (32-64-128-128)".</summary>
    public static string Describe(UNetConfig config)
    {
        int d = UNetConfig.StableDiffusion15.BlockOutChannels[0] / config.BlockOutChannels[0];
        string widths = string.Join("-", config.BlockOutChannels);
        return d == 1 ? $"SD 1.5 ({widths})" : $"SD 1.5 topology at 1/{d} width ({widths})";
    }

    /// <summary>
    /// Builds <paramref name="config"/>'s U-Net (seed 0), times <paramref name="reps"/> guided steps in TorchSharp
    /// after one warm-up (whose peak-memory increase is the step's), exports it to <paramref name="dir"/>/model.onnx,
    /// disposes it, then loads the file in ONNX Runtime (<paramref name="threads"/> intra-op threads) and times the
    /// same step on the same inputs. Both rows' <see cref="Sd15StepRow.LoadMB"/> is the resident memory the load
    /// added; the TorchSharp row's file size is the float32 weights (what a safetensors file would hold).
    /// </summary>
    public static IReadOnlyList<Sd15StepRow> Measure(UNetConfig config, string dir, int batch = 2, int reps = 3,
        int? threads = null)
    {
        if (batch < 1) throw new ArgumentOutOfRangeException(nameof(batch), batch, "at least one row");
        if (reps < 1) throw new ArgumentOutOfRangeException(nameof(reps), reps, "at least one timed step");
        Directory.CreateDirectory(dir);
        string path = Path.Combine(dir, "model.onnx");
        string shape = $"{Describe(config)}, batch {batch} × 4×64×64, 77×768 context";
        long parameters = Parameters(config);
        manual_seed(0);
        var z = randn(batch, config.InChannels, 64, 64);                                  // [B, 4, 64, 64]
        var context = randn(batch, 77, config.CrossAttentionDim);                         // [B, 77, 768]
        var t = tensor(500f);
        var rows = new List<Sd15StepRow>();

        UNet2DConditionModel? unet = null;
        long? loaded = LoadIncrease(() =>
        {
            manual_seed(0);
            unet = new UNet2DConditionModel(config);
            unet.eval();
        });
        try
        {
            var step = ImageCostStudy.Time("TorchSharp", () =>
            {
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                unet!.Forward(z, t, context);
            }, reps);
            rows.Add(Row("TorchSharp float32", 4.0 * parameters / 1e6, loaded, step));
            OnnxExport.ExportUNet(unet!, path);
        }
        finally
        {
            unet?.Dispose();                                                  // one copy of the weights at a time
            ProcessMemory.Release();
        }

        double fileMB = Directory.GetFiles(dir).Sum(f => new FileInfo(f).Length) / 1e6;
        OnnxSession? session = null;
        loaded = LoadIncrease(() => session = new OnnxSession(path, threads));
        using (session)
        {
            var feed = new Dictionary<string, Tensor>
            {
                ["sample"] = z, ["timestep"] = t, ["encoder_hidden_states"] = context,
            };
            var step = ImageCostStudy.Time("ONNX Runtime", () =>
            {
                using var scope = NewDisposeScope();
                session!.Run(feed, "out_sample");
            }, reps);
            rows.Add(Row("ONNX Runtime float32 (project's export)", fileMB, loaded, step));
        }
        ProcessMemory.Release();
        return rows;

        Sd15StepRow Row(string runtime, double file, long? load, PartTiming step) => new(runtime, shape, parameters,
            file, step.MedianSeconds * 1e3, load / 1e6, step.PeakIncreaseBytes / 1e6, ProcessMemory.PeakBytes / 1e6);
    }

    /// <summary>The resident memory <paramref name="load"/> left behind (RSS after − before), null without /proc.
    /// </summary>
    static long? LoadIncrease(Action load)
    {
        ProcessMemory.Release();
        long? before = ProcessMemory.ResidentBytes;
        load();
        long? after = ProcessMemory.ResidentBytes;
        return before is long b && after is long a ? a - b : null;
    }

    /// <summary>What the rows say: ORT's time and memory against TorchSharp's on the same graph.</summary>
    public static IReadOnlyList<string> Takeaways(IReadOnlyList<Sd15StepRow> rows)
    {
        var ts = rows.FirstOrDefault(r => r.Runtime.StartsWith("TorchSharp"))
                    ?? throw new ArgumentException("no TorchSharp row", nameof(rows));
        var ort = rows.FirstOrDefault(r => r.Runtime.StartsWith("ONNX Runtime"))
                  ?? throw new ArgumentException("no ONNX Runtime row", nameof(rows));
        string faster = ts.MsPerStep <= ort.MsPerStep ? "TorchSharp" : "ONNX Runtime";
        string memory = ts.StepPeakMB is double a && ort.StepPeakMB is double b
            ? $"; one step added {a:F0} MB (TorchSharp) and {b:F0} MB (ONNX Runtime) to the resident peak" : "";
        return
        [
            $"{ts.Shape}: TorchSharp {ts.MsPerStep:F0} ms per guided step, ONNX Runtime {ort.MsPerStep:F0} ms " +
            $"on the same graph — TorchSharp takes {ts.MsPerStep / ort.MsPerStep:F2}× ORT's time ({faster} is " +
            $"faster here; the issue's goal is ≤ 0.90×){memory}; the ONNX file is {ort.FileMB:F0} MB for " +
            $"{ts.Parameters:N0} parameters.",
        ];
    }
}
