using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Runtime;
using LdmLab.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>
/// Device placement without a GPU: PyTorch's "meta" device holds shapes but no data, so the code paths that must put
/// models, batches and noise on <see cref="Lab.Device"/> can be run with LDMLAB_DEVICE=meta in CI. A tensor left on
/// the CPU then meets a meta one and fails, exactly where a CUDA run would.
/// </summary>
[Collection("environment")]
public class DeviceTests
{
    static T OnDevice<T>(string device, Func<T> f)
    {
        TorchRuntime.Setup();
        return TestPaths.WithSettings(s => s with { Device = device }, f);
    }

    [Fact]
    public void Lab_device_follows_the_run_settings()
    {
        Assert.Equal(DeviceType.META, OnDevice("meta", () => Lab.Device.type));
        Assert.Equal(DeviceType.CPU, OnDevice("cpu", () => Lab.Device.type));
    }

    [Fact]
    public void Recipe_models_are_created_on_the_lab_device()
    {
        var vae = OnDevice("meta", FashionLatentRecipe.NewVae);
        var unet = OnDevice("meta", FashionLatentRecipe.NewDenoiser);
        Assert.All(vae.parameters(), p => Assert.Equal(DeviceType.META, p.device_type));
        Assert.All(unet.parameters(), p => Assert.Equal(DeviceType.META, p.device_type));
    }

    [Fact]
    public void The_objective_draws_with_a_cpu_generator_and_computes_on_the_models_device()
    {
        var meta = OnDevice("meta", () => Lab.Device);
        // meta has no convolution kernel: an elementwise stand-in for the model
        var weight = ones([1, 4, 1, 1], device: meta);
        var objective = new DiffusionObjective(NoiseSchedule.ScaledLinear(), PredictionType.VPrediction, minSnrGamma: 5);
        using var gen = new Generator(3);
        var z0 = zeros([4, 4, 7, 7], device: meta);
        var labels = DiffusionObjective.DropLabels(arange(4L).to(meta), 0.5, 10, gen);
        Assert.Equal(DeviceType.META, labels.device_type);
        var before = gen.get_state().data<byte>().ToArray();
        var loss = objective.Loss((zt, t) => zt * weight, z0, gen);
        Assert.Equal(DeviceType.META, loss.device_type);
        // t and ε were drawn from the CPU generator (its state moved on), not on the model's device, where a CPU
        // generator draws nothing (meta) or is refused (CUDA: "Expected a 'cuda' device type for generator")
        Assert.NotEqual(before, gen.get_state().data<byte>().ToArray());
        // the draws happen on the CPU: the same generator seed gives the same loss on the CPU, run after run
        var cpuConv = nn.Conv2d(4, 4, 3, padding: 1);
        var z = randn(2, 4, 7, 7);
        using var a = new Generator(9);
        using var b = new Generator(9);
        Assert.Equal(objective.Loss((zt, t) => cpuConv.forward(zt), z, a).item<float>(),
                     objective.Loss((zt, t) => cpuConv.forward(zt), z, b).item<float>());
    }

    /// <summary>Every scheduler steps on the sample's device (no tensor of its own left on the CPU).</summary>
    [Theory]
    [InlineData("DDIMScheduler")]
    [InlineData("DDPMScheduler")]
    [InlineData("PNDMScheduler")]
    [InlineData("EulerDiscreteScheduler")]
    [InlineData("EulerAncestralDiscreteScheduler")]
    [InlineData("HeunDiscreteScheduler")]
    [InlineData("LMSDiscreteScheduler")]
    [InlineData("DPMSolverMultistepScheduler")]
    [InlineData("UniPCMultistepScheduler")]
    public void Schedulers_step_on_the_samples_device(string cls)
    {
        var meta = OnDevice("meta", () => Lab.Device);
        var scheduler = Scheduler.Create(cls, new System.Text.Json.Nodes.JsonObject());
        var noise = zeros([2, 4, 8, 8], device: meta);
        var x = Sampling.Sample(scheduler, (z, t) => z * 0.1f, noise, 4);
        Assert.Equal(DeviceType.META, x.device_type);
    }
}

/// <summary>Tests that change process-wide environment variables (LDMLAB_DEVICE) run alone, after the others.</summary>
[CollectionDefinition("environment", DisableParallelization = true)]
public class EnvironmentCollection;
