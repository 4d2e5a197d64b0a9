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

/// <summary>One size bucket of multi-resolution training: latents [N, C, h, w] (scaled), one condition per latent,
/// and the batch a step draws from it.</summary>
public sealed record LatentBucket(Tensor Latents, Tensor Conditions, int BatchSize);

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
        return Run((step, gen) =>
        {
            var idx = DrawRows(latents.shape[0], _o.BatchSize, gen);                                            // [B]
            return (latents.index_select(0, idx), conditions.index_select(0, idx));              // [B, C, H, W], [B, …]
        }, progress, _o.Steps);
    }

    /// <summary>A single-size step's draw from its generator: <paramref name="batchSize"/> indices into
    /// <paramref name="count"/> latents, with replacement.</summary>
    public static Tensor DrawRows(long count, int batchSize, Generator gen) =>
        randint(0, count, [batchSize], dtype: ScalarType.Int64, generator: gen);                                // [B]

    /// <summary>
    /// The latent rows that steps 1…<paramref name="steps"/> of a single-size run with <paramref name="options"/>
    /// draw (<see cref="DrawRows"/>, the first draw of each step's generator), sorted: what a replay of a run's first
    /// steps needs encoded, a few hundred of tens of thousands. With gradient accumulation a step's later draws
    /// follow the objective's, so such runs are refused.
    /// </summary>
    public static long[] RowsDrawn(long count, TrainerOptions options, int steps)
    {
        if (options.GradAccumulation != 1)
            throw new ArgumentException($"GradAccumulation is {options.GradAccumulation}: only a step's first " +
                                        "draw can be told without running it", nameof(options));
        var rows = new SortedSet<long>();
        for (int s = 1; s <= steps; s++)
        {
            using var scope = NewDisposeScope();
            using var gen = TrainingLoop.StepGenerator(options.Seed, s);
            rows.UnionWith(DrawRows(count, options.BatchSize, gen).data<long>().ToArray());
        }
        return rows.ToArray();
    }

    /// <summary>
    /// Multi-resolution training (section 10.5.1): each step draws one bucket (with probability ∝ its latent count)
    /// and a batch of that bucket's own size from it, so a batch never mixes sizes. Give each bucket a batch that
    /// keeps the pixels per step about constant (<see cref="AdaptiveBatchSize"/>) and a step costs about the same
    /// whichever bucket it draws. <see cref="TrainerOptions.BatchSize"/> is not used; the rest is as
    /// <see cref="Train(Tensor, Tensor, Viz.Progress?)"/>. With <paramref name="untilStep"/> the call stops there,
    /// and a later call goes on from it (with other buckets: a curriculum, e.g. progressive resolution); the learning
    /// rate warms up over the whole run's steps as one.
    /// </summary>
    public DiffusionTrainingLog Train(IReadOnlyList<LatentBucket> buckets, Viz.Progress? progress = null,
        int? untilStep = null)
    {
        if (untilStep is { } until && (until < CompletedSteps || until > _o.Steps))
            throw new ArgumentOutOfRangeException(nameof(untilStep), until,
                $"must lie between the steps done ({CompletedSteps}) and the run's {_o.Steps}");
        if (buckets.Count == 0) throw new ArgumentException("give at least one bucket", nameof(buckets));
        for (int b = 0; b < buckets.Count; b++)
        {
            var (latents, conditions, batch) = buckets[b];
            if (latents.shape[0] != conditions.shape[0] || latents.shape[0] < 1)
                throw new ArgumentException($"bucket {b}: {latents.shape[0]} latents but {conditions.shape[0]} " +
                                            "conditions (need ≥ 1 and one condition per latent)", nameof(buckets));
            if (batch < 1) throw new ArgumentException($"bucket {b}: batch size {batch} must be ≥ 1", nameof(buckets));
        }
        if (CompletedSteps == 0 && _o.CheckpointDir is { } dir && File.Exists(Path.Combine(dir, CheckpointFile)))
            LoadCheckpoint(dir);
        var counts = buckets.Select(b => b.Latents.shape[0]).ToArray();
        var sizes = buckets.Select(b => b.BatchSize).ToArray();
        return Run((step, gen) =>
        {
            var (bucket, idx) = DrawBatch(counts, sizes, gen);
            return (buckets[bucket].Latents.index_select(0, idx), buckets[bucket].Conditions.index_select(0, idx));
        }, progress, untilStep ?? _o.Steps);
    }

    /// <summary>
    /// A multi-resolution step's draw from its generator: a bucket b with probability counts[b] / Σ counts (one
    /// uniform draw), then batchSizes[b] indices into it (with replacement). Exposed so that a replay can tell which
    /// latents the first steps use without encoding the others.
    /// </summary>
    public static (int bucket, Tensor indices) DrawBatch(IReadOnlyList<long> counts, IReadOnlyList<int> batchSizes,
        Generator gen)
    {
        double u = rand([1], dtype: ScalarType.Float64, generator: gen).item<double>() * counts.Sum();
        int bucket = 0;
        for (double seen = counts[0]; bucket < counts.Count - 1 && u >= seen; seen += counts[++bucket]) { }
        return (bucket, randint(0, counts[bucket], [batchSizes[bucket]], dtype: ScalarType.Int64, generator: gen));
    }

    // The loop of both paths, up to untilStep: a step's batch comes from draw (latents [B, C, h, w], conditions
    // [B, …]), which takes its randomness from the step's generator first, so the draws stay those of (seed, step).
    DiffusionTrainingLog Run(Func<int, Generator, (Tensor latents, Tensor conditions)> draw,
        Viz.Progress? progress, int untilStep)
    {
        int resumed = CompletedSteps;
        var device = _model.parameters().First().device;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        _model.train();
        CompletedSteps = TrainingLoop.Run(Loop with { Steps = untilStep }, CompletedSteps, (step, gen) =>
        {
            _optimizer.ZeroGrad();
            double stepLoss = 0;
            for (int micro = 0; micro < _o.GradAccumulation; micro++)
            {
                var (latents, conditions) = draw(step, gen);
                var z0 = latents.to(device);                                                         // [B, C, h, w]
                var y = DiffusionObjective.DropConditions(conditions, _o.ConditionDropout, _model.NullCondition, gen)
                    .to(device);                                                                     // [B, …]
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
            progress?.Report(step, new Dictionary<string, double>
            {
                ["loss"] = _losses.Skip(Math.Max(0, _losses.Count - 50)).Average(),
            });
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
