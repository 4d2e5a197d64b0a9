using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// PNDM (Liu et al. 2022): Runge–Kutta warm-up (PRK), then the linear multistep PLMS update
/// ε' = (55ε_0 − 59ε_1 + 37ε_2 − 9ε_3)/24 plugged into the transfer x_{t−δ} = √(ᾱ_{t−δ}/ᾱ_t) x_t − (ᾱ_{t−δ} − ᾱ_t) ε' / (ᾱ_t√(1−ᾱ_{t−δ}) + √(ᾱ_t(1−ᾱ_t)ᾱ_{t−δ})).
/// With skip_prk_steps (Stable Diffusion's default) the warm-up is PLMS with lower orders.
/// </summary>
public sealed class PndmScheduler(SchedulerConfig config) : Scheduler(config)
{
    const int PndmOrder = 4;
    double[] _prk = [];
    readonly List<Tensor> _ets = new();
    int _counter;
    Tensor? _curSample;
    Tensor? _curModelOutput;
    double FinalAlphaCumprod => Config.SetAlphaToOne ? 1.0 : Acp[0];

    public override void SetTimesteps(int numInferenceSteps)
    {
        NumInferenceSteps = numInferenceSteps;
        int T = Config.NumTrainTimesteps;
        long[] ts = SpacedTimesteps(numInferenceSteps).Reverse().ToArray();   // ascending
        double[] plms;
        if (Config.SkipPrkSteps)
        {
            _prk = [];
            plms = ts[..^1].Concat(ts[^2..^1]).Concat(ts[^1..]).Reverse().Select(v => (double)v).ToArray();
        }
        else
        {
            var last = ts[^PndmOrder..];
            long half = T / numInferenceSteps / 2;
            var prk = last.SelectMany(v => new[] { v, v }).Select((v, i) => v + (i % 2 == 0 ? 0 : half)).ToArray();   // repeat(2) + tile([0, half])
            var rep = prk[..^1].SelectMany(v => new[] { v, v }).ToArray()[1..^1];
            _prk = rep.Reverse().Select(v => (double)v).ToArray();
            plms = ts[..^3].Reverse().Select(v => (double)v).ToArray();
        }
        Timesteps = _prk.Concat(plms).ToArray();
        foreach (var t in _ets) t.Dispose();
        _ets.Clear();
        _counter = 0;
        _curSample?.Dispose(); _curSample = null;
        _curModelOutput?.Dispose(); _curModelOutput = null;
    }

    public override StepOutput Step(Tensor modelOutput, double timestep, Tensor sample, Tensor? noise = null)
    {
        if (NumInferenceSteps == 0) throw new InvalidOperationException("call SetTimesteps before Step");
        var prev = _counter < _prk.Length && !Config.SkipPrkSteps ? StepPrk(modelOutput, (int)timestep, sample) : StepPlms(modelOutput, (int)timestep, sample);
        return new StepOutput(prev, null);
    }

    Tensor StepPrk(Tensor modelOutput, int timestep, Tensor sample)
    {
        int diffToPrev = _counter % 2 == 1 ? 0 : Config.NumTrainTimesteps / NumInferenceSteps / 2;
        int prevTimestep = timestep - diffToPrev;
        timestep = (int)_prk[_counter / 4 * 4];
        switch (_counter % 4)
        {
            case 0:
                Keep(ref _curModelOutput, _curModelOutput is null ? modelOutput / 6.0 : _curModelOutput + modelOutput / 6.0);
                _ets.Add(Own(modelOutput));
                Keep(ref _curSample, sample);
                break;
            case 1:
            case 2:
                Keep(ref _curModelOutput, _curModelOutput! + modelOutput / 3.0);
                break;
            case 3:
                modelOutput = _curModelOutput! + modelOutput / 6.0;
                _curModelOutput!.Dispose();
                _curModelOutput = null;
                break;
        }
        var prevSample = PrevSample(_curSample ?? sample, timestep, prevTimestep, modelOutput);
        _counter++;
        return prevSample;
    }

    Tensor StepPlms(Tensor modelOutput, int timestep, Tensor sample)
    {
        if (!Config.SkipPrkSteps && _ets.Count < 3) throw new InvalidOperationException("PLMS needs the PRK warm-up (12 steps) first");
        int stride = Config.NumTrainTimesteps / NumInferenceSteps;
        int prevTimestep = timestep - stride;
        if (_counter != 1) _ets.Add(Own(modelOutput));
        else { prevTimestep = timestep; timestep += stride; }

        Tensor e;
        Tensor? heldSample = null;
        if (_ets.Count == 1 && _counter == 0) { e = modelOutput; Keep(ref _curSample, sample); }
        else if (_ets.Count == 1 && _counter == 1) { e = (modelOutput + _ets[^1]) / 2; sample = heldSample = _curSample!; _curSample = null; }
        else if (_ets.Count == 2) e = (3 * _ets[^1] - _ets[^2]) / 2;
        else if (_ets.Count == 3) e = (23 * _ets[^1] - 16 * _ets[^2] + 5 * _ets[^3]) / 12;
        else e = (55 * _ets[^1] - 59 * _ets[^2] + 37 * _ets[^3] - 9 * _ets[^4]) / 24;
        while (_ets.Count > 4) { _ets[0].Dispose(); _ets.RemoveAt(0); }

        var prev = PrevSample(sample, timestep, prevTimestep, e);
        heldSample?.Dispose();
        _counter++;
        return prev;
    }

    // History outlives the caller's per-step dispose scope: hold private copies and free them when dropped.
    static Tensor Own(Tensor t) => t.detach().clone().DetachFromDisposeScope();
    static void Keep(ref Tensor? slot, Tensor value) { var old = slot; slot = Own(value); old?.Dispose(); }

    Tensor PrevSample(Tensor sample, int t, int prevT, Tensor modelOutput)
    {
        double at = Acp[t], aPrev = prevT >= 0 ? Acp[prevT] : FinalAlphaCumprod;
        double bt = 1 - at, bPrev = 1 - aPrev;
        if (Config.PredictionType == "sample") throw new NotSupportedException("PNDM: prediction_type 'sample'");
        modelOutput = Predictions.Noise(Config.PredictionType, modelOutput, sample, Math.Sqrt(at), Math.Sqrt(bt));
        double sampleCoeff = Math.Sqrt(aPrev / at);
        double denom = at * Math.Sqrt(bPrev) + Math.Sqrt(at * bt * aPrev);
        return sampleCoeff * sample - (aPrev - at) * modelOutput / denom;
    }
}
