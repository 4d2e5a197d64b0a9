using System.Text.Json.Nodes;

namespace LdmLab.Diffusion;

/// <summary>The diffusers scheduler config keys LdmLab understands, with diffusers' defaults.</summary>
public sealed record SchedulerConfig
{
    public int NumTrainTimesteps { get; init; } = 1000;
    public double BetaStart { get; init; } = 0.0001;
    public double BetaEnd { get; init; } = 0.02;
    public string BetaSchedule { get; init; } = "linear";
    public float[]? TrainedBetas { get; init; }
    public string PredictionType { get; init; } = "epsilon";     // epsilon | v_prediction | sample
    public string TimestepSpacing { get; init; } = "leading";    // leading | trailing | linspace
    public int StepsOffset { get; init; }
    public bool RescaleBetasZeroSnr { get; init; }
    public bool ClipSample { get; init; }
    public double ClipSampleRange { get; init; } = 1.0;
    public bool SetAlphaToOne { get; init; } = true;
    public string VarianceType { get; init; } = "fixed_small";
    public bool SkipPrkSteps { get; init; }
    // Euler
    public string InterpolationType { get; init; } = "linear";
    public bool UseKarrasSigmas { get; init; }
    public double? SigmaMin { get; init; }
    public double? SigmaMax { get; init; }
    public string TimestepType { get; init; } = "discrete";
    // DPM-Solver
    public int SolverOrder { get; init; } = 2;
    public string AlgorithmType { get; init; } = "dpmsolver++";
    public string SolverType { get; init; } = "midpoint";
    public bool LowerOrderFinal { get; init; } = true;
    public bool EulerAtFinal { get; init; }
    public string FinalSigmasType { get; init; } = "zero";
    public double LambdaMinClipped { get; init; } = double.NegativeInfinity;
    // UniPC
    public bool PredictX0 { get; init; } = true;
    public int[] DisableCorrector { get; init; } = [];

    public NoiseSchedule Schedule() =>
        NoiseSchedule.FromName(BetaSchedule, NumTrainTimesteps, BetaStart, BetaEnd, RescaleBetasZeroSnr, TrainedBetas);

    /// <summary>
    /// Reads a diffusers scheduler_config.json object; a missing key takes the value of <paramref name="classDefaults"/>
    /// (the scheduler class's own defaults, which differ between classes), unknown keys are ignored, unsupported values
    /// rejected.
    /// </summary>
    public static SchedulerConfig FromJson(JsonObject o, SchedulerConfig? classDefaults = null)
    {
        var d = classDefaults ?? new SchedulerConfig();
        T Get<T>(string key, T fallback)
        {
            var n = o[key];
            if (n is null) return fallback;
            if (typeof(T) == typeof(double) && n.ToString() is "-inf" or "inf" or "nan")
                return (T)(object)(n.ToString() == "-inf" ? double.NegativeInfinity : n.ToString() == "inf" ? double.PositiveInfinity : double.NaN);
            try { return n.GetValue<T>(); }
            catch (Exception e) when (e is FormatException or InvalidOperationException)
            {
                if (typeof(T) == typeof(double) && double.TryParse(n.ToString(), System.Globalization.CultureInfo.InvariantCulture, out var d)) return (T)(object)d;
                throw new FormatException($"scheduler config: '{key}' = {n.ToJsonString()} is not a {typeof(T).Name}", e);
            }
        }
        double? GetOpt(string key) => o[key] is null ? null : Get(key, 0.0);
        var c = new SchedulerConfig
        {
            NumTrainTimesteps = Get("num_train_timesteps", d.NumTrainTimesteps),
            BetaStart = Get("beta_start", d.BetaStart),
            BetaEnd = Get("beta_end", d.BetaEnd),
            BetaSchedule = Get("beta_schedule", d.BetaSchedule),
            TrainedBetas = o["trained_betas"] is JsonArray tb ? tb.Select(x => (float)x!.GetValue<double>()).ToArray() : d.TrainedBetas,
            PredictionType = Get("prediction_type", d.PredictionType),
            TimestepSpacing = Get("timestep_spacing", d.TimestepSpacing),
            StepsOffset = Get("steps_offset", d.StepsOffset),
            RescaleBetasZeroSnr = Get("rescale_betas_zero_snr", d.RescaleBetasZeroSnr),
            ClipSample = Get("clip_sample", d.ClipSample),
            ClipSampleRange = Get("clip_sample_range", d.ClipSampleRange),
            SetAlphaToOne = Get("set_alpha_to_one", d.SetAlphaToOne),
            VarianceType = Get<string?>("variance_type", null) ?? d.VarianceType,
            SkipPrkSteps = Get("skip_prk_steps", d.SkipPrkSteps),
            InterpolationType = Get("interpolation_type", d.InterpolationType),
            UseKarrasSigmas = Get("use_karras_sigmas", d.UseKarrasSigmas),
            SigmaMin = GetOpt("sigma_min") ?? d.SigmaMin,
            SigmaMax = GetOpt("sigma_max") ?? d.SigmaMax,
            TimestepType = Get("timestep_type", d.TimestepType),
            SolverOrder = Get("solver_order", d.SolverOrder),
            AlgorithmType = Get("algorithm_type", d.AlgorithmType),
            SolverType = Get("solver_type", d.SolverType),
            LowerOrderFinal = Get("lower_order_final", d.LowerOrderFinal),
            EulerAtFinal = Get("euler_at_final", d.EulerAtFinal),
            FinalSigmasType = Get("final_sigmas_type", d.FinalSigmasType),
            LambdaMinClipped = Get("lambda_min_clipped", d.LambdaMinClipped),
            PredictX0 = Get("predict_x0", d.PredictX0),
            DisableCorrector = o["disable_corrector"] is JsonArray dc ? dc.Select(x => (int)x!).ToArray() : d.DisableCorrector,
        };
        if (o["solver_p"] is JsonNode sp && sp.GetValueKind() != System.Text.Json.JsonValueKind.Null)
            throw new NotSupportedException("scheduler config: solver_p (an external predictor) is not supported");
        if (Get("thresholding", false)) throw new NotSupportedException("scheduler config: thresholding=true is not supported");
        if (Get("use_lu_lambdas", false)) throw new NotSupportedException("scheduler config: use_lu_lambdas=true is not supported");
        if (Get("use_exponential_sigmas", false) || Get("use_beta_sigmas", false)) throw new NotSupportedException("scheduler config: exponential/beta sigmas are not supported");
        if (c.PredictionType is not ("epsilon" or "v_prediction" or "sample"))
            throw new NotSupportedException($"scheduler config: prediction_type '{c.PredictionType}' is not one of epsilon, v_prediction, sample");
        if (c.TimestepSpacing is not ("leading" or "trailing" or "linspace"))
            throw new NotSupportedException($"scheduler config: timestep_spacing '{c.TimestepSpacing}' is not one of leading, trailing, linspace");
        return c;
    }
}
