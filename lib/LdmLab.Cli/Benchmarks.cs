using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Engines;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Loggers;
using BenchmarkDotNet.Columns;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Runtime;
using LdmLab.UNet;
using System.Text.Json;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>
/// `ldmlab bench`: BenchmarkDotNet, in process (no extra project builds). Compare ratios within one run.
/// `ldmlab bench --json [--case A,B] [--threads 1,2] [--onednn on,off]` times the <see cref="StepCase"/> workloads
/// (3 warm-ups, median of 10 single runs each) and prints one JSON document; any other arguments go to
/// BenchmarkDotNet (e.g. `--filter *Conv*`).
/// </summary>
static class BenchCommand
{
    public static int Run(string[] args)
    {
        if (args.Contains("--json")) return Json(args.Where(a => a != "--json").ToArray());
        if (args.Contains("--profile")) return StepProfiler.Run();
        if (args.Contains("--half-accuracy"))
            return HalfAccuracyCommand.Run(args.Where(a => a != "--half-accuracy").ToArray());
        var config = ManualConfig.Create(DefaultConfig.Instance)
            .AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance))
            .WithOptions(ConfigOptions.DisableOptimizationsValidator)
            .WithArtifactsPath(Path.Combine(Path.GetTempPath(), "ldmlab-bench"));
        var summaries = BenchmarkSwitcher.FromTypes([typeof(ConvBench), typeof(UNetBench), typeof(SchedulerBench)])
            .Run(args.Length == 0 ? ["--filter", "*"] : args, config);
        return summaries.Any(s => s.HasCriticalValidationErrors) ? 1 : 0;
    }

    /// <param name="all">the default values; <paramref name="allowed"/> (default: the same) those that may be named.</param>
    static string[] ListArg(string[] args, string name, string[] all, string[]? allowed = null)
    {
        int i = Array.IndexOf(args, name);
        if (i < 0) return all;
        var permitted = allowed ?? all;
        if (i + 1 >= args.Length) throw new CliArgumentException($"{name} needs a value, e.g. {name} {all[0]}");
        var values = args[i + 1].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        var bad = values.Where(v => !permitted.Contains(v)).ToList();
        if (bad.Count > 0) throw new CliArgumentException($"{name}: unknown value(s) {string.Join(", ", bad)}; expected {string.Join(", ", permitted)}");
        return values;
    }

    static int Json(string[] args)
    {
        var known = new HashSet<string> { "--case", "--threads", "--onednn" };
        for (int i = 0; i < args.Length; i += 2)
            if (!known.Contains(args[i])) throw new CliArgumentException($"bench --json: unknown argument '{args[i]}' (use --case, --threads, --onednn)");
        StepBench.CaseNames = ListArg(args, "--case", StepCase.Names, StepCase.AllNames);
        StepBench.ThreadCounts = ListArg(args, "--threads", ["1", "2"]).Select(int.Parse).ToArray();
        StepBench.OneDnnStates = ListArg(args, "--onednn", ["on", "off"]).Select(v => v == "on").ToArray();
        var runtime = TorchRuntime.Setup();
        var job = Job.Default.WithToolchain(InProcessEmitToolchain.Instance).WithStrategy(RunStrategy.Monitoring)
            .WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(10);
        var config = ManualConfig.CreateEmpty().AddJob(job).AddLogger(new StderrLogger())
            .AddColumnProvider(DefaultColumnProviders.Instance)
            .WithOptions(ConfigOptions.DisableOptimizationsValidator)
            .WithArtifactsPath(Path.Combine(Path.GetTempPath(), "ldmlab-bench"));
        var summary = BenchmarkRunner.Run<StepBench>(config);
        var results = new JsonArray();
        foreach (var report in summary.Reports)
        {
            var p = report.BenchmarkCase.Parameters;
            var stats = report.ResultStatistics;
            string name = (string)p["Case"];
            results.Add(new JsonObject
            {
                ["case"] = name,
                ["description"] = StepCase.Describe(name),
                ["onednn"] = (bool)p["OneDnn"],
                ["threads"] = (int)p["Threads"],
                ["median_ms"] = stats is null ? null : Math.Round(stats.Median / 1e6, 2),
                ["min_ms"] = stats is null ? null : Math.Round(stats.Min / 1e6, 2),
                ["max_ms"] = stats is null ? null : Math.Round(stats.Max / 1e6, 2),
                ["runs"] = stats?.N,
                ["peak_rss_mb"] = StepBench.PeakBytes.TryGetValue(
                    StepBench.Key(name, (bool)p["OneDnn"], (int)p["Threads"]), out var peak) && peak is long bytes
                    ? Math.Round(bytes / 1048576.0, 1) : null,
            });
        }
        var doc = new JsonObject
        {
            ["date"] = DateTime.UtcNow.ToString("yyyy-MM-dd"),
            ["machine"] = CpuModel(),
            ["cores"] = Environment.ProcessorCount,
            ["cpu_isa"] = runtime.OneDnn?.CpuIsa,
            ["onednn_isa"] = runtime.OneDnn?.EffectiveIsa,
            ["setup_decision"] = runtime.OneDnn?.ToString(),
            ["method"] = "BenchmarkDotNet in process, 3 warm-ups, median of 10 single runs per case; " +
                         "peak_rss_mb: VmHWM added by one more run after them (Linux)",
            ["results"] = results,
        };
        Console.WriteLine(doc.ToJsonString(new JsonSerializerOptions
        {
            WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        }));
        return summary.HasCriticalValidationErrors || summary.Reports.Any(r => r.ResultStatistics is null) ? 1 : 0;
    }

    static string CpuModel()
    {
        try
        {
            var line = File.Exists("/proc/cpuinfo") ? File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name")) : null;
            return line is null ? System.Runtime.InteropServices.RuntimeInformation.OSArchitecture.ToString() : line[(line.IndexOf(':') + 1)..].Trim();
        }
        catch (IOException) { return "unknown"; }
    }

    sealed class StderrLogger : ILogger
    {
        public string Id => "stderr";
        public int Priority => 0;
        public void Write(LogKind logKind, string text) => Console.Error.Write(text);
        public void WriteLine() => Console.Error.WriteLine();
        public void WriteLine(LogKind logKind, string text) => Console.Error.WriteLine(text);
        public void Flush() => Console.Error.Flush();
    }
}

/// <summary>The <see cref="StepCase"/> workloads at oneDNN on/off and 1/2 threads (selected by `bench --json`).</summary>
public class StepBench
{
    public static string[] CaseNames { get; set; } = StepCase.Names;
    public static int[] ThreadCounts { get; set; } = [1, 2];
    public static bool[] OneDnnStates { get; set; } = [true, false];
    public IEnumerable<string> Cases() => CaseNames;
    public IEnumerable<int> Threads_() => ThreadCounts;
    public IEnumerable<bool> OneDnns() => OneDnnStates;

    [ParamsSource(nameof(Cases))] public string Case { get; set; } = "";
    [ParamsSource(nameof(OneDnns))] public bool OneDnn { get; set; }
    [ParamsSource(nameof(Threads_))] public int Threads { get; set; }

    StepCase _case = null!;
    bool _before;
    int _threadsBefore;

    [GlobalSetup]
    public void Setup()
    {
        _before = TorchRuntime.Setup().MkldnnEnabled ?? false;
        _threadsBefore = get_num_threads();
        TorchRuntime.SetMkldnn(OneDnn);
        set_num_threads(Threads);
        _case = StepCase.Create(Case);
    }

    [Benchmark] public void Step() => _case.Run();

    /// <summary>Peak resident memory added by one more run after the timed ones (Linux VmHWM, null elsewhere), by
    /// the parameters' display string.</summary>
    public static Dictionary<string, long?> PeakBytes { get; } = [];

    public static string Key(string name, bool oneDnn, int threads) => $"{name}|{oneDnn}|{threads}";

    [GlobalCleanup]
    public void Cleanup()
    {
        PeakBytes[Key(Case, OneDnn, Threads)] = ProcessMemory.PeakIncrease(_case.Run);
        _case.Dispose();
        TorchRuntime.SetMkldnn(_before);
        set_num_threads(_threadsBefore);
    }
}

/// <summary>A 3×3 conv forward+backward with oneDNN off and on.</summary>
public class ConvBench
{
    nn.Module<Tensor, Tensor> _conv = null!;
    Tensor _x = null!;

    [Params(false, true)] public bool OneDnn { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        TorchRuntime.Setup();
        TorchRuntime.SetMkldnn(OneDnn);
        _conv = nn.Conv2d(32, 32, 3, padding: 1);
        _x = randn(32, 32, 28, 28).requires_grad_(true);
    }

    [GlobalCleanup] public void Cleanup() => TorchRuntime.SetMkldnn(TorchRuntime.Setup().OneDnn?.Enabled ?? false);

    [Benchmark]
    public void Conv32x28ForwardBackward()
    {
        using var scope = NewDisposeScope();
        _conv.forward(_x).sum().backward();
    }
}

/// <summary>One U-Net evaluation of the latent Fashion-MNIST denoiser (batch 64, 4×7×7 latents) and its training step cost.</summary>
public class UNetBench
{
    UNet2DConditionModel _unet = null!;
    Tensor _z = null!, _t = null!, _c = null!;

    [GlobalSetup]
    public void Setup()
    {
        TorchRuntime.Setup();
        _unet = new UNet2DConditionModel(FashionLatentRecipe.DenoiserConfig);
        _z = randn(64, 4, 7, 7); _t = randint(0, 1000, [64], dtype: ScalarType.Int64); _c = randn(64, 1, 64);
    }

    [Benchmark]
    public void Forward()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        _unet.Forward(_z, _t, _c);
    }

    [Benchmark]
    public void ForwardBackward()
    {
        using var scope = NewDisposeScope();
        _unet.Forward(_z, _t, _c).pow(2).mean().backward();
    }
}

/// <summary>Scheduler step cost on SD-sized latents (1×4×64×64): the per-step overhead next to the model call.</summary>
public class SchedulerBench
{
    Scheduler _s = null!;
    Tensor _x = null!, _e = null!;

    [Params("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler")] public string Kind { get; set; } = "";

    [GlobalSetup]
    public void Setup()
    {
        TorchRuntime.Setup();
        _s = Scheduler.Create(Kind, new System.Text.Json.Nodes.JsonObject { ["beta_schedule"] = "scaled_linear", ["beta_start"] = 0.00085, ["beta_end"] = 0.012, ["steps_offset"] = 1 });
        _x = randn(1, 4, 64, 64); _e = randn(1, 4, 64, 64);
    }

    [Benchmark]
    public void FiftyStepLoop()
    {
        _s.SetTimesteps(50);
        var x = _x;
        foreach (var t in _s.Timesteps)
        {
            using var scope = NewDisposeScope();
            x = _s.Step(_e, t, _s.ScaleModelInput(x, t)).PrevSample.MoveToOuterDisposeScope();
        }
    }
}
