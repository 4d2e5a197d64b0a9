using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Runtime;
using LdmLab.UNet;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>`ldmlab bench`: BenchmarkDotNet, in process (no extra project builds), short runs. Compare ratios within one run.</summary>
static class BenchCommand
{
    public static int Run(string[] args)
    {
        var config = ManualConfig.Create(DefaultConfig.Instance)
            .AddJob(Job.ShortRun.WithToolchain(InProcessEmitToolchain.Instance))
            .WithOptions(ConfigOptions.DisableOptimizationsValidator)
            .WithArtifactsPath(Path.Combine(Path.GetTempPath(), "ldmlab-bench"));
        var summaries = BenchmarkSwitcher.FromTypes([typeof(ConvBench), typeof(UNetBench), typeof(SchedulerBench)]).Run(args.Length == 0 ? ["--filter", "*"] : args, config);
        return summaries.Any(s => s.HasCriticalValidationErrors) ? 1 : 0;
    }
}

/// <summary>A 3×3 conv forward+backward with oneDNN off (LdmLab's default, correct) and on (fast, wrong on this CPU).</summary>
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

    [GlobalCleanup] public void Cleanup() => TorchRuntime.SetMkldnn(false);

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
        _unet = new UNet2DConditionModel(LdmLab.Training.FashionLatentRecipe.DenoiserConfig);
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
