using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// DPM-Solver++ (Lu et al. 2022), multistep, on the data prediction x̂_0. With α_t = 1/√(σ²+1), σ_t = σ α_t and
/// λ = log α_t − log σ_t, h = λ_t − λ_s:
/// 1st order: x_t = (σ_t/σ_s) x − α_t (e^{−h} − 1) D0;  2nd order (midpoint): … − ½ α_t (e^{−h} − 1) D1,
/// D1 = (D0 − D0_prev)/r, r = h_prev/h. The last steps drop to lower order as diffusers does.
/// </summary>
public sealed class DpmSolverMultistepScheduler : Scheduler
{
    public double[] Sigmas { get; private set; } = [];
    readonly Tensor?[] _modelOutputs;
    int _lowerOrderNums;
    int? _stepIndex;

    public DpmSolverMultistepScheduler(SchedulerConfig config) : base(config, finiteFirstSigma: true)
    {
        if (config.AlgorithmType is not ("dpmsolver++" or "dpmsolver"))
            throw new NotSupportedException($"algorithm_type '{config.AlgorithmType}' (supported: dpmsolver++, dpmsolver)");
        if (config.SolverType is not ("midpoint" or "heun")) throw new NotSupportedException($"solver_type '{config.SolverType}'");
        if (config.SolverOrder is < 1 or > 3) throw new NotSupportedException($"solver_order {config.SolverOrder}");
        if (config.AlgorithmType == "dpmsolver" && config.FinalSigmasType == "zero")
            throw new ArgumentException("final_sigmas_type 'zero' needs algorithm_type dpmsolver++");
        _modelOutputs = new Tensor?[config.SolverOrder];
    }

    public override void SetTimesteps(int n)
    {
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(n), n, "num_inference_steps must be ≥ 1");
        int T = Config.NumTrainTimesteps;
        // λ_min clipping (for the cosine schedule): drop the last timesteps whose λ is below lambda_min_clipped
        var lambdas = Acp.Select(a => (float)(Math.Log(Math.Sqrt(a)) - Math.Log(Math.Sqrt(1 - a)))).Reverse().ToArray();
        int clipped = lambdas.Count(l => l < Config.LambdaMinClipped);   // searchsorted on the ascending flipped λ
        var (ts, sigmas) = SigmaMath.MultistepTimesteps(Config, Acp, n, T - clipped);
        double sigmaLast = Config.FinalSigmasType switch
        {
            "zero" => 0,
            "sigma_min" => Math.Sqrt((1 - Acp[0]) / (double)Acp[0]),
            var f => throw new NotSupportedException($"final_sigmas_type '{f}'"),
        };
        Sigmas = sigmas.Append(sigmaLast).Select(s => (double)(float)s).ToArray();
        Timesteps = ts.Select(t => (double)t).ToArray();
        NumInferenceSteps = ts.Length;
        foreach (var t in _modelOutputs) t?.Dispose();
        Array.Clear(_modelOutputs);
        _lowerOrderNums = 0;
        _stepIndex = null;
    }

    static (double alpha, double sigma) AlphaSigma(double sigma) => SigmaMath.AlphaSigma(sigma);

    Tensor ConvertModelOutput(Tensor modelOutput, Tensor sample, int i)
    {
        var (a, s) = AlphaSigma(Sigmas[i]);
        // DPM-Solver++ works on x̂_0, DPM-Solver on ε̂
        return Config.AlgorithmType == "dpmsolver++"
            ? Predictions.Data(Config.PredictionType, modelOutput, sample, a, s)
            : Predictions.Noise(Config.PredictionType, modelOutput, sample, a, s);
    }

    static double Lambda(double sigma) => SigmaMath.Lambda(sigma);

    public override StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null)
    {
        if (NumInferenceSteps == 0) throw new InvalidOperationException("call SetTimesteps before Step");
        int i = _stepIndex ??= IndexOfTimestep(timestep, lastIfMissing: true);
        int n = Timesteps.Length;
        bool lowerOrderFinal = i == n - 1 && (Config.EulerAtFinal || (Config.LowerOrderFinal && n < 15) || Config.FinalSigmasType == "zero");
        bool lowerOrderSecond = i == n - 2 && Config.LowerOrderFinal && n < 15;

        // History outlives the caller's per-step dispose scope: keep our own copies, free the one that drops out.
        var m = ConvertModelOutput(modelOutput, sample, i);
        _modelOutputs[0]?.Dispose();
        for (int k = 0; k < _modelOutputs.Length - 1; k++) _modelOutputs[k] = _modelOutputs[k + 1];
        _modelOutputs[^1] = m.detach().clone().DetachFromDisposeScope();

        Tensor prev;
        if (Config.SolverOrder == 1 || _lowerOrderNums < 1 || lowerOrderFinal) prev = FirstOrder(m, sample, i);
        else if (Config.SolverOrder == 2 || _lowerOrderNums < 2 || lowerOrderSecond) prev = SecondOrder(sample, i);
        else prev = ThirdOrder(sample, i);
        if (_lowerOrderNums < Config.SolverOrder) _lowerOrderNums++;
        _stepIndex = i + 1;
        return new StepOutput(prev, Config.AlgorithmType == "dpmsolver++" ? m : null);
    }

    Tensor FirstOrder(Tensor m, Tensor x, int i)
    {
        var (at, st) = AlphaSigma(Sigmas[i + 1]);
        var (as_, ss) = AlphaSigma(Sigmas[i]);
        double h = Lambda(Sigmas[i + 1]) - Lambda(Sigmas[i]);
        return Config.AlgorithmType == "dpmsolver++"
            ? (st / ss) * x - at * (Math.Exp(-h) - 1) * m
            : (at / as_) * x - st * (Math.Exp(h) - 1) * m;
    }

    Tensor SecondOrder(Tensor x, int i)
    {
        var (at, st) = AlphaSigma(Sigmas[i + 1]);
        var (as0, ss0) = AlphaSigma(Sigmas[i]);
        double lt = Lambda(Sigmas[i + 1]), l0 = Lambda(Sigmas[i]), l1 = Lambda(Sigmas[i - 1]);
        var m0 = _modelOutputs[^1]!; var m1 = _modelOutputs[^2]!;
        double h = lt - l0, h0 = l0 - l1, r0 = h0 / h;
        var d0 = m0; var d1 = (1.0 / r0) * (m0 - m1);
        if (Config.AlgorithmType == "dpmsolver++")
            return Config.SolverType == "midpoint"
                ? (st / ss0) * x - at * (Math.Exp(-h) - 1) * d0 - 0.5 * (at * (Math.Exp(-h) - 1)) * d1
                : (st / ss0) * x - at * (Math.Exp(-h) - 1) * d0 + at * ((Math.Exp(-h) - 1) / h + 1) * d1;
        return Config.SolverType == "midpoint"
            ? (at / as0) * x - st * (Math.Exp(h) - 1) * d0 - 0.5 * (st * (Math.Exp(h) - 1)) * d1
            : (at / as0) * x - st * (Math.Exp(h) - 1) * d0 - st * ((Math.Exp(h) - 1) / h - 1) * d1;
    }

    Tensor ThirdOrder(Tensor x, int i)
    {
        var (at, st) = AlphaSigma(Sigmas[i + 1]);
        var (as0, ss0) = AlphaSigma(Sigmas[i]);
        double lt = Lambda(Sigmas[i + 1]), l0 = Lambda(Sigmas[i]), l1 = Lambda(Sigmas[i - 1]), l2 = Lambda(Sigmas[i - 2]);
        var m0 = _modelOutputs[^1]!; var m1 = _modelOutputs[^2]!; var m2 = _modelOutputs[^3]!;
        double h = lt - l0, h0 = l0 - l1, h1 = l1 - l2, r0 = h0 / h, r1 = h1 / h;
        var d10 = (1.0 / r0) * (m0 - m1); var d11 = (1.0 / r1) * (m1 - m2);
        var d1 = d10 + (r0 / (r0 + r1)) * (d10 - d11);
        var d2 = (1.0 / (r0 + r1)) * (d10 - d11);
        if (Config.AlgorithmType == "dpmsolver++")
            return (st / ss0) * x - at * (Math.Exp(-h) - 1) * m0 + at * ((Math.Exp(-h) - 1) / h + 1) * d1 - at * ((Math.Exp(-h) - 1 + h) / (h * h) - 0.5) * d2;
        return (at / as0) * x - st * (Math.Exp(h) - 1) * m0 - st * ((Math.Exp(h) - 1) / h - 1) * d1 - st * ((Math.Exp(h) - 1 - h) / (h * h) - 0.5) * d2;
    }
}
