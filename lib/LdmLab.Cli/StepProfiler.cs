using System.Diagnostics;
using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Diffusion;
using LdmLab.Nn;
using LdmLab.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Cli;

/// <summary>
/// `ldmlab bench --profile`: where one training step goes, for the notebooks' latent U-Net (LatentDiffusionTrainer's
/// step) and for the autoencoder trainer's step on the Fashion-MNIST KL-VAE. Wall time per phase (data/noise, forward,
/// backward, clipping, AdamW, EMA) and, inside the forward, per layer family by hooks on the leaf layers (conv,
/// linear, norm); the rest of the forward is attention's products and softmax plus the elementwise ops (SiLU,
/// residual sums, reshapes). Median over the measured steps, after warm-ups. Three settings in one run: oneDNN off
/// with explicit attention (the setup before the CPU-speed work), oneDNN on with it, oneDNN on with fused attention.
/// </summary>
static class StepProfiler
{
    /// <summary>A training step split into phases: the data, the loss (forward), then what follows backward.</summary>
    sealed record Workload(string Title, nn.Module Model, Func<Func<Tensor>> Batch, (string name, Action run)[] After);

    public static int Run()
    {
        bool chosen = Runtime.TorchRuntime.Setup().MkldnnEnabled ?? false;
        try
        {
            foreach (var workload in new[] { LatentUNet(), FashionVae() })
                foreach (var (onednn, fused, label) in new[] { (false, false, "oneDNN off, explicit attention (before)"),
                         (true, false, "oneDNN on, explicit attention"), (true, true, "oneDNN on, fused attention (now)") })
                {
                    Runtime.TorchRuntime.SetMkldnn(onednn);
                    Layers.FusedAttention = fused;
                    Profile(workload, label);
                    Console.WriteLine();
                }
        }
        finally
        {
            Layers.FusedAttention = true;
            Runtime.TorchRuntime.SetMkldnn(chosen);
        }
        return 0;
    }

    static Workload LatentUNet()
    {
        manual_seed(0);
        var model = new ClassConditionedUNet(FashionLatentRecipe.DenoiserConfig, 10);
        var objective = new DiffusionObjective(NoiseSchedule.Linear());
        var optimizer = new LdmLab.Training.AdamW(model.named_parameters().Select(kv => (kv.name, kv.parameter)), 1e-3);
        var ema = new Ema(model, 0.999);
        var z0 = randn(64, 4, 7, 7);
        var labels = randint(0, 10, [64], dtype: ScalarType.Int64);
        return new Workload("latent U-Net training step (batch 64, 4×7×7)", model, () =>
        {
            var t = randint(0, 1000, [64], dtype: ScalarType.Int64);
            var noise = randn_like(z0);
            var zt = objective.Schedule.AddNoise(z0, noise, t);
            return () => (model.Forward(zt, t, labels) - noise).pow(2).mean();
        }, [
            ("clip_grad_norm", () => nn.utils.clip_grad_norm_(model.parameters(), 1.0)),
            ("AdamW", optimizer.Step), ("EMA", () => ema.Update(model)),
        ]);
    }

    /// <summary>AutoencoderTrainer's step with the Fashion recipe's settings: L1 + 1e-6·KL, batch 32, clipping, AdamW.</summary>
    static Workload FashionVae()
    {
        manual_seed(0);
        var vae = new AutoencoderKL(FashionLatentRecipe.VaeConfig);
        var optimizer = new LdmLab.Training.AdamW(vae.named_parameters().Select(kv => (kv.name, kv.parameter)), 2e-3);
        var images = rand(1024, 1, 28, 28) * 2 - 1;
        return new Workload("autoencoder trainer step, Fashion KL-VAE 8-16-32 (batch 32, 1×28×28)", vae, () =>
        {
            var x = images.index_select(0, randint(0, 1024, [32], dtype: ScalarType.Int64));
            var eps = randn(32, 4, 7, 7);
            return () =>
            {
                var q = vae.Encode(x);
                var xr = vae.Decode(q.Mean + q.Std * eps);
                return (xr - x).abs().mean() + 1e-6 * q.Kl().mean() / x[0].numel();
            };
        }, [("clip_grad_norm", () => nn.utils.clip_grad_norm_(vae.parameters(), 1.0)), ("AdamW", optimizer.Step)]);
    }

    static void Profile(Workload w, string label, int steps = 20, int warmups = 3)
    {
        var family = new Dictionary<string, double>();
        var started = new Dictionary<nn.Module, long>();
        bool recording = false;
        var removers = new List<Action>();
        foreach (var (_, m) in w.Model.named_modules())
        {
            string? kind = m switch
            {
                Conv2d => "forward: conv",
                Linear => "forward: linear",
                GroupNorm or LayerNorm => "forward: norm",
                _ => null,
            };
            if (kind is null || m is not nn.Module<Tensor, Tensor> leaf) continue;
            removers.Add(leaf.register_forward_pre_hook((mod, x) => { started[mod] = Stopwatch.GetTimestamp(); return x; }).remove);
            removers.Add(leaf.register_forward_hook((mod, _, y) =>
            {
                if (recording)
                    family[kind] = family.GetValueOrDefault(kind) + Stopwatch.GetElapsedTime(started[mod]).TotalMilliseconds;
                return y;
            }).remove);
        }
        var phases = new Dictionary<string, List<double>>();
        void Add(string k, double v) { if (!phases.TryGetValue(k, out var l)) phases[k] = l = []; l.Add(v); }
        try
        {
            for (int i = 0; i < warmups + steps; i++)
            {
                recording = i >= warmups;
                family.Clear();
                using var scope = NewDisposeScope();
                w.Model.zero_grad();
                var sw = Stopwatch.StartNew();
                double Lap() { double ms = sw.Elapsed.TotalMilliseconds; sw.Restart(); return ms; }
                var loss = w.Batch();
                double data = Lap();
                var value = loss();
                value.item<float>();
                double forward = Lap();
                value.backward();
                double backward = Lap();
                var after = w.After.Select(a => { a.run(); return (a.name, ms: Lap()); }).ToList();
                if (!recording) continue;
                Add("total", data + forward + backward + after.Sum(a => a.ms));
                Add("data, noise, q(z_t|z_0)", data);
                Add("forward", forward);
                foreach (var (k, v) in family) Add(k, v);
                Add("forward: attention products, softmax, elementwise, glue", forward - family.Values.Sum());
                Add("backward", backward);
                foreach (var (name, ms) in after) Add(name, ms);
            }
        }
        finally { foreach (var remove in removers) remove(); }
        double total = Median(phases["total"]);
        Console.WriteLine($"{w.Title} — {label}; median of {steps} steps after {warmups} warm-ups, " +
                          $"{get_num_threads()} threads, oneDNN ISA {Runtime.TorchRuntime.Report?.OneDnn?.EffectiveIsa}");
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
