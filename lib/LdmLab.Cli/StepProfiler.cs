using System.Diagnostics;
using LdmLab.Conditioning;
using LdmLab.Diffusion;
using LdmLab.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>
/// `ldmlab bench --profile`: where one training step of the notebooks' latent U-Net goes. Wall time per phase
/// (noise/data, forward, backward, clipping, AdamW, EMA) and, inside the forward, per layer family by hooks on the
/// leaf layers (conv, linear, norm); the rest of the forward is attention's batched products and softmax plus the
/// elementwise ops (SiLU, residual sums, reshapes). Median over the measured steps, after warm-ups.
/// </summary>
static class StepProfiler
{
    /// <summary>
    /// Profiles three settings in one run: oneDNN off with the explicit softmax attention (the setup before the CPU-speed
    /// work), oneDNN on with it, and oneDNN on with the fused attention (the default now where the self-check passes).
    /// An attention observer that ignores its maps forces the explicit path.
    /// </summary>
    public static int Run()
    {
        bool chosen = Runtime.TorchRuntime.Setup().MkldnnEnabled ?? false;
        try
        {
            foreach (var (onednn, fused, label) in new[] { (false, false, "oneDNN off, explicit attention (before)"),
                         (true, false, "oneDNN on, explicit attention"), (true, true, "oneDNN on, fused attention (now)") })
            {
                Runtime.TorchRuntime.SetMkldnn(onednn);
                UNet.Attention.Observer = fused ? null : (_, _) => { };
                Profile(label);
                Console.WriteLine();
            }
        }
        finally
        {
            UNet.Attention.Observer = null;
            Runtime.TorchRuntime.SetMkldnn(chosen);
        }
        return 0;
    }

    static void Profile(string label, int steps = 20, int warmups = 3)
    {
        manual_seed(0);
        var model = new ClassConditionedUNet(FashionLatentRecipe.DenoiserConfig, 10);
        var objective = new DiffusionObjective(NoiseSchedule.Linear());
        var optimizer = new LdmLab.Training.AdamW(model.named_parameters().Select(kv => (kv.name, kv.parameter)), 1e-3);
        var ema = new Ema(model, 0.999);
        var z0 = randn(64, 4, 7, 7);
        var labels = randint(0, 10, [64], dtype: ScalarType.Int64);

        var family = new Dictionary<string, double>();
        var started = new Dictionary<nn.Module, long>();
        bool recording = false;
        foreach (var (_, m) in model.named_modules())
        {
            string? kind = m switch { Conv2d => "forward: conv", Linear => "forward: linear",
                GroupNorm or LayerNorm => "forward: norm", _ => null };
            if (kind is null || m is not nn.Module<Tensor, Tensor> leaf) continue;
            leaf.register_forward_pre_hook((mod, x) => { started[mod] = Stopwatch.GetTimestamp(); return x; });
            leaf.register_forward_hook((mod, _, y) =>
            {
                if (recording) family[kind] = family.GetValueOrDefault(kind) + Stopwatch.GetElapsedTime(started[mod]).TotalMilliseconds;
                return y;
            });
        }

        var phases = new Dictionary<string, List<double>>();
        void Add(string k, double v) { if (!phases.TryGetValue(k, out var l)) phases[k] = l = []; l.Add(v); }
        for (int i = 0; i < warmups + steps; i++)
        {
            recording = i >= warmups;
            family.Clear();
            using var scope = NewDisposeScope();
            var sw = Stopwatch.StartNew();
            optimizer.ZeroGrad();
            var t = randint(0, 1000, [64], dtype: ScalarType.Int64);
            var noise = randn_like(z0);
            var zt = objective.Schedule.AddNoise(z0, noise, t);
            double data = sw.Elapsed.TotalMilliseconds;
            var loss = (model.Forward(zt, t, labels) - noise).pow(2).mean();
            loss.item<float>();
            double forward = sw.Elapsed.TotalMilliseconds - data;
            loss.backward();
            double backward = sw.Elapsed.TotalMilliseconds - data - forward;
            nn.utils.clip_grad_norm_(model.parameters(), 1.0);
            double clip = sw.Elapsed.TotalMilliseconds - data - forward - backward;
            optimizer.Step();
            double adam = sw.Elapsed.TotalMilliseconds - data - forward - backward - clip;
            ema.Update(model);
            double emaMs = sw.Elapsed.TotalMilliseconds - data - forward - backward - clip - adam;
            if (!recording) continue;
            Add("total", sw.Elapsed.TotalMilliseconds);
            Add("noise + q(z_t|z_0)", data);
            Add("forward", forward);
            foreach (var (k, v) in family) Add(k, v);
            Add("forward: attention products, softmax, elementwise, glue", forward - family.Values.Sum());
            Add("backward", backward);
            Add("clip_grad_norm", clip);
            Add("AdamW", adam);
            Add("EMA", emaMs);
        }
        double total = Median(phases["total"]);
        Console.WriteLine($"{label}: latent U-Net training step (batch 64, 4×7×7), median of {steps} steps after " +
                          $"{warmups} warm-ups, {get_num_threads()} threads, oneDNN ISA {Runtime.TorchRuntime.Report?.OneDnn?.EffectiveIsa}");
        Console.WriteLine($"{"part",-58} {"median ms",10} {"share",7}");
        foreach (var (k, v) in phases)
            Console.WriteLine($"{k,-58} {Median(v),10:F2} {Median(v) / total,7:P0}");
    }

    static double Median(List<double> v)
    {
        var s = v.Order().ToArray();
        return s.Length % 2 == 1 ? s[s.Length / 2] : (s[s.Length / 2 - 1] + s[s.Length / 2]) / 2;
    }
}
