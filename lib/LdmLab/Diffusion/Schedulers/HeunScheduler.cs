using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// Heun's 2nd-order method on the probability-flow ODE (Karras et al. 2022, Alg. 1; diffusers' HeunDiscreteScheduler):
///   Euler predictor  d = (x − x̂_0(x, σ))/σ,  x' = x + d (σ_next − σ),
///   trapezoid corrector  d' = (x' − x̂_0(x', σ_next))/σ_next,  x_next = x + (d + d')/2 · (σ_next − σ).
/// The model is called twice per step, except the last (σ_next = 0: plain Euler): diffusers lists every σ but the
/// first and last twice (2n σ, 2n − 1 timesteps), and the scheduler remembers the predictor's state between calls.
/// </summary>
public sealed class HeunScheduler(SchedulerConfig config) : SigmaScheduler(config)
{
    Tensor? _prevDerivative, _sample;
    double? _dt;

    public override int Order => 2;

    /// <summary>True between the predictor and the corrector call.</summary>
    public bool InSecondOrderState => _dt is not null;

    public override void SetTimesteps(int n)
    {
        var (ts, sigmas) = SigmaTimesteps(n);
        UseSchedule(n, ts, sigmas);
        // [σ_0, σ_1, σ_1, …, σ_{n−1}, σ_{n−1}, 0] and [t_0, t_1, t_1, …, t_{n−1}, t_{n−1}]
        var s = Sigmas;
        Sigmas = s.Take(1).Concat(s[1..^1].SelectMany(v => new[] { v, v })).Append(s[^1]).ToArray();
        Timesteps = Timesteps.Take(1).Concat(Timesteps[1..].SelectMany(v => new[] { v, v })).ToArray();
        ClearState();
    }

    void ClearState()
    {
        _prevDerivative?.Dispose(); _sample?.Dispose();
        _prevDerivative = null; _sample = null; _dt = null;
    }

    public override StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null)
    {
        int i = CurrentIndex(timestep);
        bool first = _dt is null;
        double sigma = first ? Sigmas[i] : Sigmas[i - 1];
        double sigmaNext = first ? Sigmas[i + 1] : Sigmas[i];
        // 1. x̂_0 at the point the model was evaluated (σ for the predictor, σ_next for the corrector)
        var x0 = PredictX0(modelOutput, sample, first ? sigma : sigmaNext);
        x0 = MaybeClip(x0);
        Tensor prev;
        if (first)
        {
            // 2. predictor: d = (x − x̂_0)/σ, kept (outside the caller's dispose scope) for the corrector
            var derivative = (sample - x0) / sigma;
            _dt = sigmaNext - sigma;
            _prevDerivative = derivative.detach().clone().DetachFromDisposeScope();
            _sample = sample.detach().clone().DetachFromDisposeScope();
            prev = sample + derivative * _dt.Value;
        }
        else
        {
            // 3. corrector: average the two slopes, step from the predictor's starting point
            var derivative = (_prevDerivative! + (sample - x0) / sigmaNext) / 2;
            prev = _sample! + derivative * _dt!.Value;
            ClearState();
        }
        Advance();
        return new StepOutput(prev, x0);
    }
}
