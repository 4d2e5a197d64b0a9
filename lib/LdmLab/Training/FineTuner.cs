using LdmLab.Conditioning;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Training;

/// <summary>The settings of one fine-tuning run (diffusers' training scripts' names where they have one).</summary>
public sealed record FineTuneOptions
{
    public int Steps { get; init; } = 400;
    /// <summary>Instance examples per step (and as many class examples with prior preservation).</summary>
    public int BatchSize { get; init; } = 4;
    public double LearningRate { get; init; } = 1e-4;
    public double WeightDecay { get; init; }
    public int WarmupSteps { get; init; }
    public double ClipGradNorm { get; init; } = 1.0;
    /// <summary>w of DreamBooth's prior term (diffusers' prior_loss_weight: 1; the chapter: 0.5).</summary>
    public double PriorWeight { get; init; } = 1.0;
    public long Seed { get; init; }
}

/// <summary>The losses of a fine-tuning run per step: the total, and with prior preservation its two terms.</summary>
public sealed record FineTuneLog(IReadOnlyList<double> Losses, IReadOnlyList<double> InstanceLosses,
    IReadOnlyList<double> PriorLosses, TimeSpan Elapsed);

/// <summary>
/// Teaches a trained conditional latent denoiser something new by training only chosen parameters — LoRA adapters
/// (<see cref="Adapters.LoraAdapter"/>), textual-inversion rows of the token table
/// (<see cref="Adapters.TokenRowTraining"/>, whose RestoreFrozenRows goes in <c>afterStep</c>), or the whole U-Net
/// (DreamBooth) — with the denoising objective, and for DreamBooth with prior preservation: each step draws instance
/// examples and as many class examples and minimises <see cref="DiffusionObjective.PriorPreservationLoss"/>. Every
/// other parameter of the model is frozen for the run (requires_grad false: no gradient is computed for it) and
/// restored after. The steps run through <see cref="TrainingLoop"/>: one dispose scope and one seeded generator per
/// step, the NaN guard, clipping, warm-up.
/// </summary>
public sealed class FineTuner
{
    readonly ConditionalDenoiser _model;
    readonly DiffusionObjective _objective;
    readonly (string name, Parameter p)[] _trainable;
    readonly FineTuneOptions _o;
    readonly Action? _afterStep;

    public FineTuner(ConditionalDenoiser model, DiffusionObjective objective,
        IEnumerable<(string name, Parameter parameter)> trainable, FineTuneOptions options, Action? afterStep = null)
    {
        _model = model;
        _objective = objective;
        _trainable = trainable.ToArray();
        if (_trainable.Length == 0)
            throw new ArgumentException("nothing to train: no parameters given", nameof(trainable));
        _o = options;
        _afterStep = afterStep;
    }

    /// <summary>
    /// Trains on <paramref name="latents"/> [N, c, h, w] (scaled, as the denoiser sees them) with their
    /// <paramref name="conditions"/> [N, …]; with <paramref name="priorLatents"/> and their conditions, DreamBooth's
    /// prior preservation. Returns the losses; the model is left in eval mode.
    /// </summary>
    public FineTuneLog Train(Tensor latents, Tensor conditions, Tensor? priorLatents = null,
        Tensor? priorConditions = null, Viz.Progress? progress = null)
    {
        if (latents.shape[0] != conditions.shape[0])
            throw new ArgumentException($"{latents.shape[0]} latents but {conditions.shape[0]} conditions",
                nameof(conditions));
        if ((priorLatents is null) != (priorConditions is null)
            || priorLatents is not null && priorLatents.shape[0] != priorConditions!.shape[0])
            throw new ArgumentException("class latents and class conditions come together, one row each",
                nameof(priorConditions));
        var trainable = _trainable.Select(t => t.p).ToHashSet();
        var frozen = _model.parameters().Where(p => !trainable.Contains(p))
            .Select(p => (p, p.requires_grad)).ToList();
        foreach (var (p, _) in frozen) p.requires_grad = false;
        foreach (var p in trainable) p.requires_grad = true;
        var optimizer = new AdamW(_trainable, _o.LearningRate, _o.WeightDecay);
        var device = _model.parameters().First().device;
        var settings = new LoopSettings(_o.Steps, _o.LearningRate, _o.WarmupSteps, _o.ClipGradNorm, 0, null, _o.Seed);
        var (losses, instance, prior) = (new List<double>(), new List<double>(), new List<double>());
        var clock = System.Diagnostics.Stopwatch.StartNew();
        _model.train();
        try
        {
            TrainingLoop.Run(settings, 0, (step, gen) =>
            {
                optimizer.ZeroGrad();
                (Tensor z, Tensor y) Batch(Tensor z0, Tensor rows)
                {
                    var idx = randint(0, z0.shape[0], [_o.BatchSize], dtype: ScalarType.Int64, generator: gen);
                    return (z0.index_select(0, idx).to(device), rows.index_select(0, idx).to(device));
                }
                var (z, y) = Batch(latents, conditions);                                     // [B, c, h, w], [B, …]
                Tensor loss;
                if (priorLatents is null)
                {
                    loss = _objective.Loss((zt, t) => _model.Forward(zt, t, y), z, gen);
                    instance.Add(TrainingLoop.CheckedValue(loss, step));
                    prior.Add(double.NaN);
                }
                else
                {
                    var (zp, yp) = Batch(priorLatents, priorConditions!);
                    var rows = cat([y, yp]);                                                 // [instance; class]
                    var (total, inst, pri) = _objective.PriorPreservationLoss(
                        (zt, t) => _model.Forward(zt, t, rows), z, zp, _o.PriorWeight, gen);
                    loss = total;
                    instance.Add(inst.item<float>());
                    prior.Add(pri.item<float>());
                }
                losses.Add(TrainingLoop.CheckedValue(loss, step));
                loss.backward();
                TrainingLoop.Optimize(optimizer, trainable, settings, step);
                _afterStep?.Invoke();
                progress?.Report(step, new Dictionary<string, double> { ["loss"] = losses[^1] });
            }, _ => { });
        }
        finally
        {
            foreach (var (p, flag) in frozen) p.requires_grad = flag;
            _model.eval();
        }
        return new FineTuneLog(losses, instance, prior, clock.Elapsed);
    }
}
