using System.Text.Json.Serialization;
using LdmLab.Interop;
using LdmLab.Metrics;
using LdmLab.Autoencoders;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Training;

/// <summary>
/// The autoencoder objective of latent diffusion (CompVis' LPIPSWithDiscriminator / VQLPIPSWithDiscriminator):
/// L_G = ‖x − x̂‖₁ (or ₂) + w_p·d_perc(x, x̂) + regulariser (β·KL or the VQ codebook + commitment losses)
///       + f(step)·λ_adaptive·(−D(x̂)),      L_D = f(step)·hinge(D(x), D(x̂)) [+ R1 penalty].
/// Weights of 0 switch a term off, which gives the chapter's ablations (pixel only / + perceptual / + adversarial).
/// </summary>
public sealed record AutoencoderLossOptions
{
    public ReconstructionLoss Pixel { get; init; } = ReconstructionLoss.L1;
    public double PerceptualWeight { get; init; }
    public int PerceptualResolution { get; init; } = 64;
    public double KlWeight { get; init; } = 1e-6;
    public double DiscriminatorWeight { get; init; }
    public long DiscriminatorStart { get; init; }
    public bool SpectralNorm { get; init; }
    public double GradientPenalty { get; init; }
    public int DiscriminatorWidth { get; init; } = 32;
    public int DiscriminatorLayers { get; init; } = 2;
}

public sealed record AutoencoderTrainerOptions
{
    public int Steps { get; init; } = 1000;
    public int BatchSize { get; init; } = 32;
    public double LearningRate { get; init; } = 1e-3;
    public double DiscriminatorLearningRate { get; init; } = 1e-3;
    public int WarmupSteps { get; init; } = 50;
    public double ClipGradNorm { get; init; } = 1.0;
    /// <summary>VQ only: restart codes unused for this many steps (0 = off).</summary>
    public int DeadCodePatience { get; init; } = 200;
    public int CheckpointEvery { get; init; }
    public string? CheckpointDir { get; init; }
    public long Seed { get; init; }
    /// <summary>
    /// KL only: the posterior's starting log σ² (the log-variance half of quant_conv's bias), or null for the
    /// untouched initialisation (0, σ = 1). Short runs decode less noise when it starts narrow.
    /// </summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public double? InitialLogVariance { get; init; }
}

/// <summary>One step's numbers.</summary>
public sealed record AutoencoderStep(int Step, double Reconstruction, double Perceptual, double Regulariser, double Generator, double Discriminator,
    double AdaptiveWeight, double CodebookUsage, double Perplexity);

/// <summary>Trains an <see cref="AutoencoderKL"/> or a <see cref="VQModel"/> with the objective above; resumable, atomic checkpoints.</summary>
public sealed class AutoencoderTrainer
{
    public const string CheckpointFile = "autoencoder-checkpoint.safetensors";
    readonly nn.Module _model;
    readonly AutoencoderLossOptions _loss;
    readonly AutoencoderTrainerOptions _o;
    readonly ResNet18Features? _perceptual;
    readonly PatchGan? _disc;
    readonly AdamW _optG;
    readonly AdamW? _optD;
    readonly List<AutoencoderStep> _log = new();

    public int CompletedSteps { get; private set; }
    public IReadOnlyList<AutoencoderStep> Log => _log;
    public PatchGan? Discriminator => _disc;

    public AutoencoderTrainer(nn.Module model, AutoencoderLossOptions loss, AutoencoderTrainerOptions options, ResNet18Features? perceptual = null)
    {
        if (model is not (AutoencoderKL or VQModel)) throw new ArgumentException("model must be an AutoencoderKL or a VQModel", nameof(model));
        if (loss.PerceptualWeight > 0 && perceptual is null) perceptual = new ResNet18Features(loss.PerceptualResolution);
        _model = model; _loss = loss; _o = options; _perceptual = perceptual;
        if (options.InitialLogVariance is double logVariance && model is AutoencoderKL vae)
            vae.SetPosteriorLogVarianceBias(logVariance);
        _optG = new AdamW(model.named_parameters().Select(kv => (kv.name, kv.parameter)), options.LearningRate);
        int channels = model is AutoencoderKL kl ? kl.Config.InChannels : ((VQModel)model).Config.InChannels;
        if (loss.DiscriminatorWeight > 0)
        {
            _disc = new PatchGan(channels, loss.DiscriminatorWidth, loss.DiscriminatorLayers, loss.SpectralNorm);
            _optD = new AdamW(_disc.named_parameters().Select(kv => ("disc." + kv.name, kv.parameter)),
                options.DiscriminatorLearningRate, beta1: 0.5, beta2: 0.9);
        }
    }

    (Tensor recon, Tensor reg, double usage, double perplexity) Run(Tensor x, Generator gen, int step)
    {
        if (_model is AutoencoderKL vae)
        {
            var q = vae.Encode(x);
            var z = q.Mean + q.Std * randn(q.Mean.shape, generator: gen).to(x.device);
            return (vae.Decode(z), _loss.KlWeight * q.Kl().mean() / x[0].numel(), double.NaN, double.NaN);
        }
        var vq = (VQModel)_model;
        var h = vq.Encode(x);
        var qo = vq.Quantize(h);
        // dead-code restarts draw from (seed, step) too, so that a resumed run restarts the same codes
        if (_o.DeadCodePatience > 0 && (step - 1) % 50 == 0)
            vq.Quantizer.RestartDeadCodes(h, _o.DeadCodePatience, new Random((int)((_o.Seed * 1_000_003 + step) & int.MaxValue)));
        return (vq.Decode(qo.Quantized), qo.CodebookLoss + qo.CommitmentLoss, qo.Usage, qo.Perplexity);
    }

    Tensor LastLayerWeight() => _model.named_parameters().Last(kv => kv.name == "decoder.conv_out.weight").parameter;

    LoopSettings Loop => new(_o.Steps, _o.LearningRate, _o.WarmupSteps, _o.ClipGradNorm, _o.CheckpointEvery, _o.CheckpointDir, _o.Seed);

    public IReadOnlyList<AutoencoderStep> Train(Tensor images, Viz.Progress? progress = null)
    {
        if (_o.CheckpointDir is { } dir && File.Exists(Path.Combine(dir, CheckpointFile))) LoadCheckpoint(dir);
        var device = _model.parameters().First().device;
        _model.train(); _disc?.train();
        CompletedSteps = TrainingLoop.Run(Loop, CompletedSteps, (step, gen) =>
        {
            var idx = randint(0, images.shape[0], [_o.BatchSize], dtype: ScalarType.Int64, generator: gen);
            var x = images.index_select(0, idx).to(device);                                          // [B, C, H, W]
            var (xr, reg, usage, perplexity) = Run(x, gen, step);
            var rec = _loss.Pixel == ReconstructionLoss.L1 ? (xr - x).abs().mean() : (xr - x).pow(2).mean();
            Tensor perc = _perceptual is not null && _loss.PerceptualWeight > 0 ? _perceptual.PerceptualDistance(x, xr).mean() : zeros(1).squeeze();
            var nll = rec + _loss.PerceptualWeight * perc;
            double factor = AdversarialLoss.DiscriminatorFactor(step, _loss.DiscriminatorStart);
            Tensor gLoss = zeros(1).squeeze();
            double adaptive = 0;
            if (_disc is not null && factor > 0)
            {
                gLoss = AdversarialLoss.GeneratorHinge(_disc.forward(xr));
                adaptive = AdversarialLoss.AdaptiveWeight(nll, gLoss, LastLayerWeight(), _loss.DiscriminatorWeight);
            }
            var total = nll + reg + factor * adaptive * gLoss;
            TrainingLoop.CheckedValue(total, step);
            _optG.ZeroGrad();
            total.backward();
            TrainingLoop.Optimize(_optG, _model.parameters(), Loop, step);

            double dv = 0;
            if (_disc is not null && _optD is not null && factor > 0)
            {
                var dLoss = factor * AdversarialLoss.DiscriminatorHinge(_disc.forward(x), _disc.forward(xr.detach()));
                if (_loss.GradientPenalty > 0) dLoss = dLoss + AdversarialLoss.GradientPenalty(_disc, x, _loss.GradientPenalty);
                _optD.ZeroGrad();
                dLoss.backward();
                _optD.Step();
                dv = dLoss.item<float>();
            }
            CompletedSteps = step;
            _log.Add(new AutoencoderStep(step, rec.item<float>(), perc.item<float>(), reg.item<float>(), gLoss.item<float>(), dv, adaptive, usage, perplexity));
            progress?.Report(step, new Dictionary<string, double> { ["rec"] = _log.Skip(Math.Max(0, _log.Count - 50)).Average(s => s.Reconstruction) });
        }, SaveCheckpoint);
        _model.eval(); _disc?.eval();
        return _log;
    }

    const string Format = "ldmlab-autoencoder-1";
    public const int LogColumns = 9;

    /// <summary>Model, discriminator, both optimizers and the step log in one safetensors file, written atomically.</summary>
    public void SaveCheckpoint(string dir)
    {
        var t = new Dictionary<string, Tensor>();
        foreach (var (k, v) in _model.state_dict()) t["model." + k] = v;
        if (_disc is not null) foreach (var (k, v) in _disc.state_dict()) t["disc." + k] = v;
        foreach (var (k, v) in _optG.StateTensors()) t["g." + k] = v;
        if (_optD is not null) foreach (var (k, v) in _optD.StateTensors()) t["d." + k] = v;
        t["log"] = LogToTensor(_log);
        Checkpoint.Save(Path.Combine(dir, CheckpointFile), Format, CompletedSteps, _o.Steps, t);
    }

    /// <summary>Restores a run from its checkpoint; every error names the file (format, step, keys, shapes).</summary>
    public void LoadCheckpoint(string dir)
    {
        using var c = Checkpoint.Load(Path.Combine(dir, CheckpointFile), Format, _o.Steps);
        c.LoadInto(_model, "model.");
        if (_disc is not null) c.LoadInto(_disc, "disc.");
        _optG.LoadStateTensors(c.Section("g."), c.Path);
        if (_optD is not null) _optD.LoadStateTensors(c.Section("d."), c.Path);
        _log.Clear();
        _log.AddRange(LogFromTensor(c.Require("log", [c.Step, LogColumns])));
        CompletedSteps = c.Step;
    }

    /// <summary>The step log as a [steps, 9] float64 tensor, one <see cref="AutoencoderStep"/> per row (fields in order).</summary>
    public static Tensor LogToTensor(IReadOnlyList<AutoencoderStep> log) =>
        tensor(log.SelectMany(s => new[] { s.Step, s.Reconstruction, s.Perceptual, s.Regulariser, s.Generator,
            s.Discriminator, s.AdaptiveWeight, s.CodebookUsage, s.Perplexity }).ToArray(), [log.Count, LogColumns]);

    /// <summary>The inverse of <see cref="LogToTensor"/>; the caller has checked the shape.</summary>
    public static List<AutoencoderStep> LogFromTensor(Tensor log)
    {
        var data = log.to_type(ScalarType.Float64).data<double>().ToArray();
        var steps = new List<AutoencoderStep>();
        for (int i = 0; i < log.shape[0]; i++)
        {
            var r = data.AsSpan(i * LogColumns, LogColumns);
            steps.Add(new AutoencoderStep((int)r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8]));
        }
        return steps;
    }
}
