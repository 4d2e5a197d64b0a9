using LdmLab.Data;
using LdmLab.Conditioning;
using LdmLab.Diffusion;
using LdmLab.Interop;
using LdmLab.Runtime;
using LdmLab.Training;
using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class TrainingTests
{
    internal static UNetConfig Small(int channels = 4) => new()
    {
        InChannels = channels, OutChannels = channels, BlockOutChannels = [16, 32], LayersPerBlock = 1, NormNumGroups = 8,
        CrossAttentionDim = 16, AttentionHeadDim = [2], DownBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D"],
        UpBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D"], SampleSize = 8,
    };

    [Fact]
    public void Ema_follows_the_closed_form()
    {
        TorchRuntime.Setup();
        var lin = nn.Linear(2, 1);
        using (no_grad()) { lin.weight!.fill_(0); lin.bias!.fill_(0); }
        var ema = new Ema(lin, decay: 0.5);
        using (no_grad()) { lin.weight!.fill_(1); lin.bias!.fill_(1); }
        double expected = 0;
        for (int i = 0; i < 20; i++)
        {
            double d = Math.Min(0.5, (1.0 + i) / (10.0 + i));
            expected = d * expected + (1 - d) * 1.0;
            ema.Update(lin);
        }
        Assert.Equal(expected, ema.Shadow["weight"][0, 0].item<float>(), 5);
        Assert.Equal(20, ema.Updates);
        var copy = nn.Linear(2, 1);
        ema.CopyTo(copy);
        Assert.Equal(expected, copy.bias![0].item<float>(), 5);
    }

    [Fact]
    public void AdamW_matches_torch_AdamW()
    {
        TorchRuntime.Setup();
        manual_seed(3);
        var a = nn.Linear(4, 3); var b = nn.Linear(4, 3);
        b.load_state_dict(a.state_dict());
        var ours = new AdamW(a.named_parameters().Select(kv => (kv.name, kv.parameter)), 1e-2, weightDecay: 0.01);
        var theirs = optim.AdamW(b.parameters(), 1e-2, weight_decay: 0.01);
        var x = randn(8, 4); var y = randn(8, 3);
        for (int i = 0; i < 5; i++)
        {
            ours.ZeroGrad(); nn.functional.mse_loss(a.forward(x), y).backward(); ours.Step();
            theirs.zero_grad(); nn.functional.mse_loss(b.forward(x), y).backward(); theirs.step();
        }
        Assert.True(Parity.MaxAbsDiff(a.weight!, b.weight!) < 1e-6);
        Assert.True(Parity.MaxAbsDiff(a.bias!, b.bias!) < 1e-6);
    }

    [Fact]
    public void Gradient_accumulation_equals_the_big_batch_gradient()
    {
        TorchRuntime.Setup();
        manual_seed(4);
        var lin = nn.Linear(3, 2);
        var x = randn(8, 3); var y = randn(8, 2);
        nn.functional.mse_loss(lin.forward(x), y).backward();
        var big = lin.weight!.grad!.clone();
        lin.weight.grad!.zero_(); lin.bias!.grad!.zero_();
        foreach (var part in new[] { (0, 4), (4, 4) })
            (nn.functional.mse_loss(lin.forward(x.narrow(0, part.Item1, part.Item2)), y.narrow(0, part.Item1, part.Item2)) / 2).backward();
        Assert.True(Parity.MaxAbsDiff(big, lin.weight.grad!) < 1e-6);
    }

    [Fact]
    public void Min_snr_weights_and_warmup()
    {
        TorchRuntime.Setup();
        var s = NoiseSchedule.ScaledLinear();
        var t = tensor(new long[] { 0, 500, 999 });
        var eps = new DiffusionObjective(s, PredictionType.Epsilon, 5).Weights(t).data<float>().ToArray();
        var v = new DiffusionObjective(s, PredictionType.VPrediction, 5).Weights(t).data<float>().ToArray();
        Assert.Equal(5 / s.Snr(0), eps[0], 5);           // high SNR: down-weighted to γ/SNR
        Assert.Equal(1, eps[2], 5);                      // low SNR: weight 1
        Assert.Equal(s.Snr(999) / (s.Snr(999) + 1), v[2], 5);
        Assert.Equal(1f, new DiffusionObjective(s).Weights(t)[1].item<float>());
        Assert.Equal(0.5e-3, LrSchedule.WarmupConstant(50, 100, 1e-3), 12);
        Assert.Equal(1e-3, LrSchedule.WarmupConstant(500, 100, 1e-3), 12);
        Assert.Equal(0, LrSchedule.WarmupCosine(1000, 100, 1000, 1e-3), 12);
    }

    [Fact]
    public void Condition_dropout_uses_the_null_label()
    {
        TorchRuntime.Setup();
        var labels = zeros(10000, ScalarType.Int64);
        var dropped = DiffusionObjective.DropLabels(labels, 0.1, 10, new Generator(1));
        double frac = dropped.eq(10).to_type(ScalarType.Float32).mean().item<float>();
        Assert.InRange(frac, 0.08, 0.12);
        Assert.True(dropped.eq(10).logical_or(dropped.eq(0)).all().item<bool>());
    }

    [Fact]
    public void Nan_guard_stops_naming_the_step()
    {
        TorchRuntime.Setup();
        var model = new ClassConditionedUNet(Small(), 3);
        var trainer = new LatentDiffusionTrainer(model, new DiffusionObjective(NoiseSchedule.ScaledLinear()), new TrainerOptions { Steps = 3, BatchSize = 2 });
        var latents = randn(4, 4, 8, 8);
        latents[1, 0, 0, 0] = float.NaN;
        latents[0, 0, 0, 0] = float.NaN; latents[2, 0, 0, 0] = float.NaN; latents[3, 0, 0, 0] = float.NaN;
        var before = model.state_dict()["unet.conv_in.weight"].clone();
        var e = Assert.Throws<NonFiniteLossException>(() => trainer.Train(latents, zeros(4, ScalarType.Int64)));
        Assert.Equal(1, e.Step);
        Assert.Contains("step 1", e.Message);
        Assert.True(before.equal(model.state_dict()["unet.conv_in.weight"]).all().item<bool>(), "weights changed before the guard");
    }

    [Fact]
    public void Resume_from_a_checkpoint_is_bit_exact()
    {
        TorchRuntime.Setup();
        var latents = randn(32, 4, 8, 8); var labels = randint(0, 3, [32], dtype: ScalarType.Int64);
        TrainerOptions Opts(int steps, string? dir) => new() { Steps = steps, BatchSize = 4, GradAccumulation = 2, WarmupSteps = 2, Seed = 9, CheckpointDir = dir, CheckpointEvery = 1 };

        manual_seed(0);
        var straight = new ClassConditionedUNet(Small(), 3);
        var init = straight.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var log1 = new LatentDiffusionTrainer(straight, new DiffusionObjective(NoiseSchedule.ScaledLinear()), Opts(4, null)).Train(latents, labels);

        var dir = TestPaths.TempDir("resume");
        var first = new ClassConditionedUNet(Small(), 3);
        first.load_state_dict(init);
        new LatentDiffusionTrainer(first, new DiffusionObjective(NoiseSchedule.ScaledLinear()), Opts(2, dir)).Train(latents, labels);
        Assert.True(File.Exists(Path.Combine(dir, LatentDiffusionTrainer.CheckpointFile)));
        Assert.Empty(Directory.GetFiles(dir, "*.tmp"));

        var second = new ClassConditionedUNet(Small(), 3);   // fresh weights: everything must come from the checkpoint
        var resumed = new LatentDiffusionTrainer(second, new DiffusionObjective(NoiseSchedule.ScaledLinear()), Opts(4, dir));
        var log2 = resumed.Train(latents, labels);
        Assert.Equal(2, log2.ResumedFromStep);
        Assert.Equal(log1.Losses, log2.Losses);
        foreach (var (k, v) in straight.state_dict()) Assert.True(v.equal(second.state_dict()[k]).all().item<bool>(), k);
    }

    [Fact]
    public void Training_lowers_the_loss_and_guided_sampling_runs()
    {
        TorchRuntime.Setup();
        manual_seed(1);
        // two classes of "latents": constant +1 and −1 fields
        var labels = randint(0, 2, [64], dtype: ScalarType.Int64);
        var latents = (labels.to_type(ScalarType.Float32) * 2 - 1).reshape(-1, 1, 1, 1).expand(-1, 4, 8, 8).contiguous();
        var model = new ClassConditionedUNet(Small(), 2);
        var log = new LatentDiffusionTrainer(model, new DiffusionObjective(NoiseSchedule.ScaledLinear()),
            new TrainerOptions { Steps = 60, BatchSize = 16, LearningRate = 2e-3, WarmupSteps = 5, EmaDecay = 0.9 }).Train(latents, labels);
        Assert.True(log.Losses.TakeLast(10).Average() < 0.6 * log.Losses.Take(10).Average(),
            $"loss {log.Losses.Take(10).Average():F3} → {log.Losses.TakeLast(10).Average():F3}");
        var scheduler = Diffusion.Schedulers.Scheduler.Create("DDIMScheduler", new System.Text.Json.Nodes.JsonObject
        { ["beta_schedule"] = "scaled_linear", ["beta_start"] = 0.00085, ["beta_end"] = 0.012, ["steps_offset"] = 1, ["set_alpha_to_one"] = false });
        var y = tensor(new long[] { 0, 1 });
        var x = Sampling.Sample(scheduler, (zin, t) => model.Guided(zin, tensor((long)t), y, 3.0), randn(2, 4, 8, 8), 20);
        Assert.True(x.isfinite().all().item<bool>());
        Assert.True(x[0].mean().item<float>() < x[1].mean().item<float>(), "class 0 (−1 fields) should come out darker than class 1");
    }
}

/// <summary>Checkpoints: atomic under a hard kill, checked on load, every error naming the file.</summary>
public class CheckpointTests
{
    /// <summary>
    /// A child process saves a 16 MB checkpoint over and over; it is killed (SIGKILL) at random moments, repeatedly.
    /// After each kill the file on disk is a whole checkpoint of one step, at least the last step the child reported.
    /// Without the temp-file-and-rename save, a kill mid-write leaves a truncated file that fails to load.
    /// </summary>
    [Fact]
    public void A_process_killed_while_saving_always_leaves_the_last_good_checkpoint()
    {
        TorchRuntime.Setup();
        var cli = Path.Combine(TestPaths.RepoRoot, "lib", "LdmLab.Cli", "bin", "Release", "net10.0", "LdmLab.Cli.dll");
        Assert.True(File.Exists(cli), $"{cli} is not built (./lab build)");
        var dir = TestPaths.TempDir("kill-during-save");
        var path = Path.Combine(dir, "soak-checkpoint.safetensors");
        var rng = new Random(11);
        int kills = 0, lastSeen = 0;
        for (int round = 0; round < 12; round++)
        {
            var psi = new System.Diagnostics.ProcessStartInfo("dotnet", [cli, "checkpoint-soak", dir])
            { RedirectStandardOutput = true, RedirectStandardError = true };
            using var p = System.Diagnostics.Process.Start(psi)!;
            p.ErrorDataReceived += (_, _) => { };
            p.BeginErrorReadLine();
            int reported = 0;
            // wait for a few saves, then kill at a random moment, most likely inside a save (it writes 16 MB)
            var target = rng.Next(2, 6);
            string? line;
            while (reported < target && (line = p.StandardOutput.ReadLine()) is not null) reported = int.Parse(line);
            Assert.True(reported >= target, "the soak process stopped by itself");
            Thread.Sleep(rng.Next(0, 40));
            p.Kill();
            p.WaitForExit();
            kills++;
            using var c = LdmLab.Training.Checkpoint.Load(path, "ldmlab-soak-1", int.MaxValue);
            Assert.True(c.Step >= reported, $"round {round}: the file holds step {c.Step}, the child had reported {reported}");
            Assert.True(c.Step >= lastSeen);
            foreach (var (name, t) in c.Tensors)
                Assert.True(t.eq(c.Step).all().item<bool>(), $"round {round}: {name} is not all {c.Step}: a mix of two saves");
            lastSeen = c.Step;
            File.Delete(path);   // each round starts from step 1 again
            lastSeen = 0;
        }
        Assert.Equal(12, kills);
        Directory.Delete(dir, true);
    }

    static Dictionary<string, Tensor> Small() => new() { ["model.w"] = ones(2, 3), ["log"] = zeros(4) };

    [Fact]
    public void Loading_checks_format_step_keys_and_shapes_and_names_the_file()
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("checkpoint-checks");
        var path = Path.Combine(dir, "c.safetensors");
        LdmLab.Training.Checkpoint.Save(path, "fmt-1", 4, 10, Small());
        Assert.Equal(4, LdmLab.Training.Checkpoint.StepOf(path));
        var wrongFormat = Assert.Throws<DatasetException>(() => LdmLab.Training.Checkpoint.Load(path, "fmt-2", 10));
        Assert.Contains(path, wrongFormat.Message);
        Assert.Contains("fmt-2", wrongFormat.Message);
        var beyond = Assert.Throws<DatasetException>(() => LdmLab.Training.Checkpoint.Load(path, "fmt-1", 3));
        Assert.Contains("step 4, beyond this run's 3 steps", beyond.Message);
        using var c = LdmLab.Training.Checkpoint.Load(path, "fmt-1", 10);
        Assert.Contains(path, Assert.Throws<DatasetException>(() => c.Require("log.missing")).Message);
        Assert.Contains("expected [5]", Assert.Throws<DatasetException>(() => c.Require("log", [5])).Message);
        var model = nn.Linear(3, 3);   // weight [3, 3], bias [3]: nothing under "model." fits
        var misfit = Assert.Throws<DatasetException>(() => c.LoadInto(model, "model."));
        Assert.Contains("missing (2): model.weight, model.bias", misfit.Message);
        Assert.Contains("unexpected (1): model.w", misfit.Message);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Ema_and_optimizer_state_must_fit_the_model()
    {
        TorchRuntime.Setup();
        var model = nn.Linear(3, 2);
        var ema = new Ema(model, 0.9);
        var state = ema.StateTensors();
        var missing = new Dictionary<string, Tensor>(state);
        missing.Remove("ema.bias");
        var e = Assert.Throws<DatasetException>(() => ema.LoadStateTensors(missing, "ckpt.safetensors"));
        Assert.Contains("ckpt.safetensors", e.Message);
        Assert.Contains("missing (1): ema.bias", e.Message);
        var misShaped = new Dictionary<string, Tensor>(state) { ["ema.weight"] = zeros(5) };
        Assert.Contains("wrong shape", Assert.Throws<DatasetException>(() => ema.LoadStateTensors(misShaped)).Message);

        var adam = new AdamW(model.named_parameters().Select(kv => (kv.name, kv.parameter)), 1e-3);
        var noSteps = new Dictionary<string, Tensor> { ["adam.m.weight"] = zeros(2, 3) };
        Assert.Contains("missing (1): adam.steps", Assert.Throws<DatasetException>(() => adam.LoadStateTensors(noSteps)).Message);
        var stranger = new Dictionary<string, Tensor> { ["adam.steps"] = tensor(3L), ["adam.v.other"] = zeros(1) };
        Assert.Contains("unexpected (1): adam.v.other",
            Assert.Throws<DatasetException>(() => adam.LoadStateTensors(stranger)).Message);
        // a parameter that has had no gradient yet has no moments: that is a valid state
        adam.LoadStateTensors(new Dictionary<string, Tensor> { ["adam.steps"] = tensor(3L) });
        Assert.Equal(3, adam.Steps);
    }
}
