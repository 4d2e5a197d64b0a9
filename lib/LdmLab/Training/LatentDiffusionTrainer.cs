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

public sealed record DiffusionTrainingLog(IReadOnlyList<double> Losses, IReadOnlyList<double> LearningRates, int ResumedFromStep, TimeSpan Elapsed);

/// <summary>
/// Trains a class-conditional latent denoiser: AdamW with linear warm-up, gradient accumulation and clipping,
/// EMA of the weights, condition dropout, min-SNR weighting (via the objective), a NaN/Inf guard, and atomic
/// checkpoints that a later run resumes from bit-exactly (each step's randomness comes from (seed, step)).
/// </summary>
public sealed class LatentDiffusionTrainer
{
    public const string CheckpointFile = "checkpoint.safetensors";
    readonly ClassConditionedUNet _model;
    readonly DiffusionObjective _objective;
    readonly TrainerOptions _o;
    readonly AdamW _optimizer;
    readonly List<double> _losses = new(), _lrs = new();

    public Ema Ema { get; }
    public int CompletedSteps { get; private set; }
    public IReadOnlyList<double> Losses => _losses;

    public LatentDiffusionTrainer(ClassConditionedUNet model, DiffusionObjective objective, TrainerOptions options)
    {
        if (options.Steps < 1 || options.BatchSize < 1 || options.GradAccumulation < 1)
            throw new ArgumentOutOfRangeException(nameof(options), "Steps, BatchSize and GradAccumulation must be ≥ 1");
        _model = model; _objective = objective; _o = options;
        _optimizer = new AdamW(model.named_parameters().Select(kv => (kv.name, kv.parameter)), options.LearningRate);
        Ema = new Ema(model, options.EmaDecay);
    }

    /// <param name="latents">[N, C, H, W] (already scaled to unit variance).</param>
    /// <param name="labels">[N] int64 class labels.</param>
    public DiffusionTrainingLog Train(Tensor latents, Tensor labels, Viz.Progress? progress = null)
    {
        if (latents.shape[0] != labels.shape[0]) throw new ArgumentException($"{latents.shape[0]} latents but {labels.shape[0]} labels");
        if (_o.CheckpointDir is { } dir && File.Exists(Path.Combine(dir, CheckpointFile))) LoadCheckpoint(dir);
        if (CompletedSteps > _o.Steps)
            throw new InvalidOperationException($"the checkpoint in {_o.CheckpointDir} is at step {CompletedSteps}, beyond the requested {_o.Steps}");
        int resumed = CompletedSteps;
        var device = _model.parameters().First().device;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        _model.train();
        for (int step = CompletedSteps + 1; step <= _o.Steps; step++)
        {
            using var scope = NewDisposeScope();
            using var gen = new Generator((ulong)(_o.Seed * 1_000_003 + step));
            _optimizer.ZeroGrad();
            double stepLoss = 0;
            for (int micro = 0; micro < _o.GradAccumulation; micro++)
            {
                var idx = randint(0, latents.shape[0], [_o.BatchSize], dtype: ScalarType.Int64, generator: gen);
                var z0 = latents.index_select(0, idx).to(device);
                var y = DiffusionObjective.DropLabels(labels.index_select(0, idx), _o.ConditionDropout, _model.NullLabel, gen).to(device);
                var loss = _objective.Loss((zt, t) => _model.Forward(zt, t, y), z0, gen) / _o.GradAccumulation;
                double value = loss.item<float>() * _o.GradAccumulation;
                if (!double.IsFinite(value)) throw new NonFiniteLossException(step, value);
                loss.backward();
                stepLoss += value / _o.GradAccumulation;
            }
            if (_o.ClipGradNorm > 0) nn.utils.clip_grad_norm_(_model.parameters(), _o.ClipGradNorm);
            _optimizer.LearningRate = LrSchedule.WarmupConstant(step, _o.WarmupSteps, _o.LearningRate);
            _optimizer.Step();
            Ema.Update(_model);
            CompletedSteps = step;
            _losses.Add(stepLoss);
            _lrs.Add(_optimizer.LearningRate);
            progress?.Report(step, new Dictionary<string, double> { ["loss"] = _losses.Skip(Math.Max(0, _losses.Count - 50)).Average() });
            if (_o.CheckpointDir is { } d && _o.CheckpointEvery > 0 && step % _o.CheckpointEvery == 0) SaveCheckpoint(d);
        }
        if (_o.CheckpointDir is { } final && CompletedSteps > resumed) SaveCheckpoint(final);
        _model.eval();
        Metrics.ProcessMemory.Release();
        return new DiffusionTrainingLog(_losses.ToList(), _lrs.ToList(), resumed, sw.Elapsed);
    }

    /// <summary>Model, EMA, optimizer state and the loss log in one safetensors file, written atomically.</summary>
    public void SaveCheckpoint(string dir)
    {
        var t = new Dictionary<string, Tensor>();
        foreach (var (k, v) in _model.state_dict()) t["model." + k] = v;
        foreach (var (k, v) in Ema.StateTensors()) t[k] = v;
        foreach (var (k, v) in _optimizer.StateTensors()) t[k] = v;
        t["log.losses"] = tensor(_losses.ToArray());
        t["log.lrs"] = tensor(_lrs.ToArray());
        SafeTensors.Save(Path.Combine(dir, CheckpointFile), t, new Dictionary<string, string>
        {
            ["step"] = CompletedSteps.ToString(), ["format"] = "ldmlab-trainer-1",
        });
    }

    public void LoadCheckpoint(string dir)
    {
        var path = Path.Combine(dir, CheckpointFile);
        var (_, meta) = SafeTensors.ReadHeader(path);
        if (!meta.TryGetValue("format", out var f) || f != "ldmlab-trainer-1")
            throw new Data.DatasetException(path, "not an LdmLab trainer checkpoint");
        var t = SafeTensors.Load(path);
        using (no_grad())
            foreach (var (k, v) in _model.state_dict())
            {
                if (!t.TryGetValue("model." + k, out var src) || !src.shape.SequenceEqual(v.shape))
                    throw new Data.DatasetException(path, $"checkpoint does not fit this model (model.{k})");
                v.copy_(src);
            }
        Ema.LoadStateTensors(t);
        _optimizer.LoadStateTensors(t);
        _losses.Clear(); _losses.AddRange(t["log.losses"].data<double>().ToArray());
        _lrs.Clear(); _lrs.AddRange(t["log.lrs"].data<double>().ToArray());
        CompletedSteps = int.Parse(meta["step"]);
    }
}
