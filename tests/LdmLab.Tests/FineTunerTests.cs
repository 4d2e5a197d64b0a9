using LdmLab.Adapters;
using LdmLab.Conditioning;
using LdmLab.Diffusion;
using LdmLab.Pipelines;
using LdmLab.ParityChecks;
using LdmLab.Runtime;
using LdmLab.Training;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Fine-tuning chosen parameters: LoRA adapters alone, and DreamBooth with prior preservation.</summary>
public class FineTunerTests
{
    static (EmbeddingConditionedUNet model, Tensor latents, Tensor conditions) Tiny(int n = 8)
    {
        var pipe = PipelineTests.Tiny();
        var model = new EmbeddingConditionedUNet(pipe.Unet, () => pipe.EncodePrompts([""])[0]);
        manual_seed(5);
        var latents = randn(n, 4, 8, 8);                                                      // [n, 4, 8, 8]
        var conditions = pipe.EncodePrompts(Enumerable.Range(0, n).Select(i => $"a photo of item {i % 2}").ToList());
        return (model, latents, conditions);
    }

    static double FixedLoss(DiffusionObjective objective, ConditionalDenoiser model, Tensor z, Tensor y)
    {
        using var _ = no_grad();
        using var g = new Generator(99);
        return objective.Loss((zt, t) => model.Forward(zt, t, y), z, g).item<float>();
    }

    [Fact]
    public void Lora_training_moves_only_the_adapter_and_fits_the_data()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var (model, latents, conditions) = Tiny();
        var objective = new DiffusionObjective(NoiseSchedule.ScaledLinear());
        var before = model.Backbone.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var lora = LoraAdapter.Create(model.Backbone, "unet", rank: 4, seed: 1);
        using var attached = lora.Attach(model.Backbone);
        double start = FixedLoss(objective, model, latents, conditions);
        var options = new FineTuneOptions { Steps = 40, BatchSize = 8, LearningRate = 1e-2, Seed = 3 };
        var log = new FineTuner(model, objective, lora.named_parameters().Select(p => (p.name, p.parameter)), options)
            .Train(latents, conditions);
        double end = FixedLoss(objective, model, latents, conditions);
        Assert.Equal(40, log.Losses.Count);
        Assert.True(end < start, $"the fixed-noise loss went {start:F4} → {end:F4}");
        var after = model.Backbone.state_dict();
        foreach (var (k, v) in before) Assert.Equal(0, Parity.MaxAbsDiff(after[k], v));    // the base is untouched
        Assert.Contains(lora.Layers.Values, l => l.Up.abs().max().item<float>() > 0);       // B left zero: trained
        Assert.All(model.Backbone.parameters(), p => Assert.True(p.requires_grad));         // flags restored
    }

    [Fact]
    public void DreamBooth_steps_log_the_instance_and_prior_terms_of_their_loss()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var (model, latents, conditions) = Tiny(n: 4);
        var objective = new DiffusionObjective(NoiseSchedule.ScaledLinear());
        manual_seed(6);
        var priorLatents = randn(6, 4, 8, 8);
        var priorConditions = conditions[..1].expand(6, -1, -1).contiguous();
        var options = new FineTuneOptions { Steps = 5, BatchSize = 2, LearningRate = 1e-4, PriorWeight = 0.5 };
        var log = new FineTuner(model, objective, model.Backbone.named_parameters().Select(p => (p.name, p.parameter)),
            options).Train(latents, conditions, priorLatents, priorConditions);
        for (int i = 0; i < 5; i++)
        {
            Assert.True(double.IsFinite(log.PriorLosses[i]));
            Assert.Equal(log.InstanceLosses[i] + 0.5 * log.PriorLosses[i], log.Losses[i], 4);
        }
        Assert.Throws<ArgumentException>(() => new FineTuner(model, objective, [], options));
        Assert.Throws<ArgumentException>(() => new FineTuner(model, objective,
            model.Backbone.named_parameters().Select(p => (p.name, p.parameter)), options)
            .Train(latents, conditions, priorLatents, null));
    }
}
