using LdmLab.Conditioning;
using LdmLab.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Training;

/// <summary>Settings of a latent diffusion training run.</summary>
public sealed record TrainerOptions
{
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 64;
    public double LearningRate { get; init; } = 2e-4;
    public int WarmupSteps { get; init; } = 100;
    /// <summary>Micro-batches per optimizer step (the gradient is their mean).</summary>
    public int GradAccumulation { get; init; } = 1;
    /// <summary>Global L2 norm the gradient is clipped to; 0 = off.</summary>
    public double ClipGradNorm { get; init; } = 1.0;
    public double EmaDecay { get; init; } = 0.999;
    /// <summary>Probability of replacing a label by the null class (classifier-free guidance training).</summary>
    public double ConditionDropout { get; init; } = 0.1;
    public int CheckpointEvery { get; init; }
    public string? CheckpointDir { get; init; }
    public long Seed { get; init; }
}

/// <summary>Training stopped because the loss became NaN or infinite.</summary>
public sealed class NonFiniteLossException(int step, double value)
    : Exception($"training loss is {value} at step {step}: stopped before the weights were updated (lower the learning rate, enable gradient clipping, or check the data for NaN/Inf)")
{
    public int Step { get; } = step;
}

public sealed record DiffusionTrainingLog(IReadOnlyList<double> Losses, IReadOnlyList<double> LearningRates, int ResumedFromStep, TimeSpan Elapsed)
{
    /// <summary>The loss and learning rate per step as a safetensors file (what ships beside a trained denoiser).</summary>
    public void Save(string path) => SafeTensors.Save(path, new Dictionary<string, Tensor>
    {
        ["losses"] = tensor(Losses.ToArray()), ["learning_rates"] = tensor(LearningRates.ToArray()),
    });

    /// <summary>A log written by <see cref="Save"/>: a finished run (every step counted as resumed, no time).</summary>
    public static DiffusionTrainingLog Load(string path)
    {
        var log = SafeTensors.Load(path);
        Tensor Column(string name) => log.TryGetValue(name, out var t) && t.dim() == 1 ? t
            : throw new Data.DatasetException(path, $"expected a 1-D '{name}' tensor");
        var losses = Column("losses").to_type(ScalarType.Float64).data<double>().ToArray();
        var rates = Column("learning_rates").to_type(ScalarType.Float64).data<double>().ToArray();
        return new DiffusionTrainingLog(losses, rates, losses.Length, TimeSpan.Zero);
    }
}

/// <summary>
/// Trains a conditional latent denoiser (class labels, prompts): AdamW with linear warm-up, gradient accumulation and clipping,
/// EMA of the weights, condition dropout, min-SNR weighting (via the objective), a NaN/Inf guard, and atomic
/// checkpoints that a later run resumes from bit-exactly (each step's randomness comes from (seed, step)).
/// </summary>
public sealed class LatentDiffusionTrainer
{
    public const string CheckpointFile = "checkpoint.safetensors";
    readonly ConditionalDenoiser _model;
    readonly DiffusionObjective _objective;
    readonly TrainerOptions _o;
    readonly AdamW _optimizer;
    readonly List<double> _losses = new(), _lrs = new();

    public Ema Ema { get; }
    public int CompletedSteps { get; private set; }
    public IReadOnlyList<double> Losses => _losses;

    public LatentDiffusionTrainer(ConditionalDenoiser model, DiffusionObjective objective, TrainerOptions options)
    {
        if (options.Steps < 1 || options.BatchSize < 1 || options.GradAccumulation < 1)
            throw new ArgumentOutOfRangeException(nameof(options), "Steps, BatchSize and GradAccumulation must be ≥ 1");
        _model = model; _objective = objective; _o = options;
        _optimizer = new AdamW(model.named_parameters().Select(kv => (kv.name, kv.parameter)), options.LearningRate);
        Ema = new Ema(model, options.EmaDecay);
    }

    LoopSettings Loop => new(_o.Steps, _o.LearningRate, _o.WarmupSteps, _o.ClipGradNorm, _o.CheckpointEvery, _o.CheckpointDir, _o.Seed);

    /// <param name="latents">[N, C, H, W] (already scaled to unit variance).</param>
    /// <param name="conditions">one condition per latent: [N] int64 class labels, [N, L] int64 prompt ids, …</param>
    public DiffusionTrainingLog Train(Tensor latents, Tensor conditions, Viz.Progress? progress = null)
    {
        if (latents.shape[0] != conditions.shape[0])
            throw new ArgumentException($"{latents.shape[0]} latents but {conditions.shape[0]} conditions", nameof(conditions));
        if (_o.CheckpointDir is { } dir && File.Exists(Path.Combine(dir, CheckpointFile))) LoadCheckpoint(dir);
        int resumed = CompletedSteps;
        var device = _model.parameters().First().device;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        _model.train();
        CompletedSteps = TrainingLoop.Run(Loop, CompletedSteps, (step, gen) =>
        {
            _optimizer.ZeroGrad();
            double stepLoss = 0;
            for (int micro = 0; micro < _o.GradAccumulation; micro++)
            {
                var idx = randint(0, latents.shape[0], [_o.BatchSize], dtype: ScalarType.Int64, generator: gen);
                var z0 = latents.index_select(0, idx).to(device);                                    // [B, C, H, W]
                var y = DiffusionObjective.DropConditions(conditions.index_select(0, idx), _o.ConditionDropout,
                    _model.NullCondition, gen).to(device);                                           // [B, …]
                var loss = _objective.Loss((zt, t) => _model.Forward(zt, t, y), z0, gen) / _o.GradAccumulation;
                double value = TrainingLoop.CheckedValue(loss, step, _o.GradAccumulation);
                loss.backward();
                stepLoss += value / _o.GradAccumulation;
            }
            TrainingLoop.Optimize(_optimizer, _model.parameters(), Loop, step);
            Ema.Update(_model);
            CompletedSteps = step;
            _losses.Add(stepLoss);
            _lrs.Add(_optimizer.LearningRate);
            progress?.Report(step, new Dictionary<string, double> { ["loss"] = _losses.Skip(Math.Max(0, _losses.Count - 50)).Average() });
        }, SaveCheckpoint);
        _model.eval();
        return new DiffusionTrainingLog(_losses.ToList(), _lrs.ToList(), resumed, sw.Elapsed);
    }

    const string Format = "ldmlab-trainer-1";

    /// <summary>Model, EMA, optimizer state and the loss log in one safetensors file, written atomically.</summary>
    public void SaveCheckpoint(string dir)
    {
        var t = new Dictionary<string, Tensor>();
        foreach (var (k, v) in _model.state_dict()) t["model." + k] = v;
        foreach (var (k, v) in Ema.StateTensors()) t[k] = v;
        foreach (var (k, v) in _optimizer.StateTensors()) t[k] = v;
        t["log.losses"] = tensor(_losses.ToArray());
        t["log.lrs"] = tensor(_lrs.ToArray());
        Checkpoint.Save(Path.Combine(dir, CheckpointFile), Format, CompletedSteps, _o.Steps, t);
    }

    /// <summary>Restores a run from its checkpoint; every error names the file (format, step, keys, shapes).</summary>
    public void LoadCheckpoint(string dir)
    {
        using var c = Checkpoint.Load(Path.Combine(dir, CheckpointFile), Format, _o.Steps);
        c.LoadInto(_model, "model.");
        Ema.LoadStateTensors(c.Tensors, c.Path);
        _optimizer.LoadStateTensors(c.Tensors, c.Path);
        var losses = c.Require("log.losses", [c.Step]).data<double>().ToArray();
        var lrs = c.Require("log.lrs", [c.Step]).data<double>().ToArray();
        _losses.Clear(); _losses.AddRange(losses);
        _lrs.Clear(); _lrs.AddRange(lrs);
        CompletedSteps = c.Step;
    }
}
