using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// UniPC (Zhao et al. 2023; diffusers' UniPCMultistepScheduler): a multistep predictor (UniP) followed, at the next
/// call, by a corrector (UniC) that reuses the new model output at no extra model call. In λ = log α − log σ with
/// h = λ_t − λ_s, on the data prediction m = x̂_0 (predict_x0) or on ε:
///   x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) m_s − α_t B(h) Σ_k ρ_k D_k,   D_k = (m_{s_k} − m_s)/r_k,  r_k = (λ_{s_k} − λ_s)/h,
/// with B(h) = −h (bh1) or e^{−h} − 1 (bh2) and ρ solving the order conditions R ρ = b, R_{ij} = r_j^{i}, b_i from
/// the φ functions of −h. The corrector adds the term of D_t = m_t − m_s with the full system. Orders 1–3; the last
/// steps drop to lower order (lower_order_final), and the first ones warm up.
/// </summary>
public sealed class UniPcMultistepScheduler : Scheduler
{
    public double[] Sigmas { get; private set; } = [];
    readonly Tensor?[] _modelOutputs;
    Tensor? _lastSample;
    int _lowerOrderNums, _thisOrder;
    int? _stepIndex;
    readonly string _solverType;

    public UniPcMultistepScheduler(SchedulerConfig config) : base(config)
    {
        if (config.SolverOrder is < 1 or > 3) throw new NotSupportedException($"UniPC solver_order {config.SolverOrder} (supported: 1–3)");
        // diffusers maps the DPM-Solver solver types onto bh2
        _solverType = config.SolverType switch
        {
            "bh1" => "bh1",
            "bh2" or "midpoint" or "heun" or "logrho" => "bh2",
            var t => throw new NotSupportedException($"UniPC solver_type '{t}' (supported: bh1, bh2)"),
        };
        _modelOutputs = new Tensor?[config.SolverOrder];
    }

    public override void SetTimesteps(int n)
    {
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(n), n, "num_inference_steps must be ≥ 1");
        var (ts, sigmas) = SigmaMath.MultistepTimesteps(Config, Acp, n, Config.NumTrainTimesteps);
        // the last step goes to σ(t = 0) (σ_Karras,min with Karras σ), not to 0
        double sigmaLast = Config.UseKarrasSigmas ? sigmas[^1] : Math.Sqrt((1 - Acp[0]) / (double)Acp[0]);
        Sigmas = sigmas.Append(sigmaLast).Select(s => (double)(float)s).ToArray();
        Timesteps = ts.Select(t => (double)t).ToArray();
        NumInferenceSteps = ts.Length;
        foreach (var t in _modelOutputs) t?.Dispose();
        Array.Clear(_modelOutputs);
        _lastSample?.Dispose();
        _lastSample = null;
        _lowerOrderNums = 0;
        _stepIndex = null;
    }

    /// <summary>The model output as x̂_0 (predict_x0) or as ε̂, at step i.</summary>
    Tensor Convert(Tensor modelOutput, Tensor sample, int i)
    {
        var (a, s) = SigmaMath.AlphaSigma(Sigmas[i]);
        return Config.PredictX0
            ? Predictions.Data(Config.PredictionType, modelOutput, sample, a, s)
            : Predictions.Noise(Config.PredictionType, modelOutput, sample, a, s);
    }

    public override StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null)
    {
        if (NumInferenceSteps == 0) throw new InvalidOperationException("call SetTimesteps before Step");
        int i = _stepIndex ??= IndexOfTimestep(timestep, lastIfMissing: true);
        var m = Convert(modelOutput, sample, i);
        // 1. corrector (UniC) for the previous predictor step, with this step's model output
        if (i > 0 && !Config.DisableCorrector.Contains(i - 1) && _lastSample is not null)
            sample = Update(m, _lastSample, i, _thisOrder, corrector: true);
        // 2. history (kept outside the caller's dispose scope)
        _modelOutputs[0]?.Dispose();
        for (int k = 0; k < _modelOutputs.Length - 1; k++) _modelOutputs[k] = _modelOutputs[k + 1];
        _modelOutputs[^1] = m.detach().clone().DetachFromDisposeScope();
        int order = Config.LowerOrderFinal ? Math.Min(Config.SolverOrder, Timesteps.Length - i) : Config.SolverOrder;
        _thisOrder = Math.Min(order, _lowerOrderNums + 1);   // warm-up of the multistep history
        _lastSample?.Dispose();
        _lastSample = sample.detach().clone().DetachFromDisposeScope();
        // 3. predictor (UniP) to the next σ
        var prev = Update(null, sample, i, _thisOrder, corrector: false);
        if (_lowerOrderNums < Config.SolverOrder) _lowerOrderNums++;
        _stepIndex = i + 1;
        return new StepOutput(prev, Config.PredictX0 ? m : null);
    }

    /// <summary>
    /// UniP (corrector false: from step i to i + 1) or UniC (from step i − 1 to i, using <paramref name="modelT"/>).
    /// m_s is the newest stored output; the k-th older one sits k steps before s.
    /// </summary>
    Tensor Update(Tensor? modelT, Tensor x, int i, int order, bool corrector)
    {
        int s = corrector ? i - 1 : i, t = s + 1;
        var (alphaT, sigmaT) = SigmaMath.AlphaSigma(Sigmas[t]);
        var (_, sigmaS) = SigmaMath.AlphaSigma(Sigmas[s]);
        double lambdaS = SigmaMath.Lambda(Sigmas[s]);
        double h = SigmaMath.Lambda(Sigmas[t]) - lambdaS;
        var m0 = _modelOutputs[^1]!;
        var rks = new List<double>();
        var d1s = new List<Tensor>();
        for (int k = 1; k < order; k++)
        {
            double rk = (SigmaMath.Lambda(Sigmas[s - k]) - lambdaS) / h;
            rks.Add(rk);
            d1s.Add((_modelOutputs[^(k + 1)]! - m0) / rk);
        }
        rks.Add(1.0);
        // order conditions: R_{p,j} = r_j^p, b_p = p! φ_{p+1}(hh) / B(h), φ by the recursion φ_{k+1} = φ_k/hh − 1/k!
        double hh = Config.PredictX0 ? -h : h;
        double hPhi1 = Math.Exp(hh) - 1;          // expm1
        double hPhiK = hPhi1 / hh - 1, factorial = 1;
        double bh = _solverType == "bh1" ? hh : Math.Exp(hh) - 1;
        var r = new double[order, order];
        var b = new double[order];
        for (int p = 1; p <= order; p++)
        {
            for (int j = 0; j < order; j++) r[p - 1, j] = Math.Pow(rks[j], p - 1);
            b[p - 1] = hPhiK * factorial / bh;
            factorial *= p + 1;
            hPhiK = hPhiK / hh - 1 / factorial;
        }
        // the base exponential-integrator step: x_t = (σ_t/σ_s) x − α_t hφ₁ m_s (predict_x0), or its ε twin
        var (alphaS, _) = SigmaMath.AlphaSigma(Sigmas[s]);
        var baseStep = Config.PredictX0 ? sigmaT / sigmaS * x - alphaT * hPhi1 * m0 : alphaT / alphaS * x - sigmaT * hPhi1 * m0;
        double scale = Config.PredictX0 ? alphaT * bh : sigmaT * bh;
        Tensor? residual = null;
        if (!corrector)
        {
            if (d1s.Count == 0) return baseStep;
            var rho = order == 2 ? [0.5] : Solve(Sub(r, order - 1), b[..(order - 1)]);
            for (int k = 0; k < d1s.Count; k++) residual = residual is null ? rho[k] * d1s[k] : residual + rho[k] * d1s[k];
            return baseStep - scale * residual!;
        }
        var rhoC = order == 1 ? [0.5] : Solve(r, b);
        for (int k = 0; k < d1s.Count; k++) residual = residual is null ? rhoC[k] * d1s[k] : residual + rhoC[k] * d1s[k];
        var correction = rhoC[^1] * (modelT! - m0);
        return baseStep - scale * (residual is null ? correction : residual + correction);
    }

    static double[,] Sub(double[,] a, int n)
    {
        var s = new double[n, n];
        for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) s[i, j] = a[i, j];
        return s;
    }

    /// <summary>Gaussian elimination with partial pivoting (systems of order ≤ 3).</summary>
    static double[] Solve(double[,] a, double[] b)
    {
        int n = b.Length;
        var m = (double[,])a.Clone();
        var x = (double[])b.Clone();
        for (int c = 0; c < n; c++)
        {
            int p = Enumerable.Range(c, n - c).MaxBy(k => Math.Abs(m[k, c]));
            if (p != c)
            {
                for (int j = 0; j < n; j++) (m[c, j], m[p, j]) = (m[p, j], m[c, j]);
                (x[c], x[p]) = (x[p], x[c]);
            }
            for (int k = c + 1; k < n; k++)
            {
                double f = m[k, c] / m[c, c];
                for (int j = c; j < n; j++) m[k, j] -= f * m[c, j];
                x[k] -= f * x[c];
            }
        }
        for (int c = n - 1; c >= 0; c--)
        {
            for (int j = c + 1; j < n; j++) x[c] -= m[c, j] * x[j];
            x[c] /= m[c, c];
        }
        return x;
    }
}
