using System.Text.Json.Nodes;
using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Interop;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class SchedulerParityTests
{
    static string Dir => Path.Combine(AppContext.BaseDirectory, "fixtures", "schedulers");

    [Fact]
    public void Every_recorded_tensor_matches_diffusers()
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Dir);
        Assert.True(checks.Count >= 40, $"only {checks.Count} checks");
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
        // every trajectory's final sample was compared
        foreach (var n in new[] { "ddim_50", "euler_30", "dpmpp2m_20", "ddpm_50", "pndm_50" })
            Assert.Contains(checks, c => c.Name == $"{n}/prev_sample");
    }

    [Fact]
    public void Schedule_tables_match_the_fixture_exactly_enough()
    {
        TorchRuntime.Setup();
        var t = SafeTensors.Load(Path.Combine(Dir, "beta_schedules.safetensors"));
        var cos = NoiseSchedule.Cosine();
        Assert.Equal(t["squaredcos_cap_v2.betas"].data<float>().ToArray(), cos.Betas);
        Assert.True(Parity.MaxAbsDiff(tensor(NoiseSchedule.ScaledLinear().AlphasCumprod), t["scaled_linear.alphas_cumprod"]) < 1e-6);
        Assert.True(Parity.MaxAbsDiff(tensor(NoiseSchedule.Linear().Betas), t["linear.betas"]) < 1e-8);
    }

    [Fact]
    public void A_perturbed_reference_fails()
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("parity-bad");
        foreach (var f in Directory.GetFiles(Dir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var file = Path.Combine(dir, "ddim_50.safetensors");
        var tensors = SafeTensors.Load(file);
        tensors["prev_sample"][10] += 1e-2f;
        SafeTensors.Save(file, tensors);
        var checks = Parity.CheckFolder(dir);
        Assert.Contains(checks, c => c.Name == "ddim_50/prev_sample" && !c.Passed);
        Assert.Contains(checks, c => c.Name == "euler_30/prev_sample" && c.Passed);
    }
}

public class NoiseScheduleTests
{
    [Fact]
    public void Snr_in_decibels_of_a_known_case()
    {
        var s = NoiseSchedule.ScaledLinear();
        // ᾱ_0 = 1 − 0.00085 → SNR = 0.99915/0.00085 = 1175.5 → 30.70 dB
        Assert.Equal(10 * Math.Log10((1 - 0.00085) / 0.00085), s.SnrDb(0), 3);
        // SD's final ᾱ is 0.0047 (its known non-zero terminal SNR): about −23.3 dB
        Assert.Equal(10 * Math.Log10(s.AlphasCumprod[999] / (1.0 - s.AlphasCumprod[999])), s.SnrDb(999), 9);
        Assert.True(s.SnrDb(999) is < -23 and > -23.6, $"SD's final SNR is about -23.3 dB, got {s.SnrDb(999)}");
        // latents with σ_z = 1/0.18215: SNR_eff = σ_z² · SNR
        Assert.Equal(s.SnrDb(999) + 20 * Math.Log10(1 / 0.18215), s.SnrDb(999, 1 / 0.18215), 6);
        // monotone decreasing
        var curve = s.SnrDbCurve();
        Assert.All(Enumerable.Range(1, 999), t => Assert.True(curve[t] < curve[t - 1]));
    }

    [Fact]
    public void Zero_terminal_snr_rescale()
    {
        var s = NoiseSchedule.ScaledLinear(zeroTerminalSnr: true);
        var plain = NoiseSchedule.ScaledLinear();
        Assert.Equal(0f, s.AlphasCumprod[^1]);
        Assert.Equal(plain.AlphasCumprod[0], s.AlphasCumprod[0], 6);
        Assert.Equal(1f, s.Betas[^1]);
    }

    [Theory]
    [InlineData(1.0)]
    [InlineData(5.49)]   // SD latents before scaling (1/0.18215)
    [InlineData(0.5)]
    public void Snr_adaptive_schedule_reaches_its_target(double sigmaZ)
    {
        var s = NoiseSchedule.SnrAdaptive(sigmaZ, -20);
        Assert.Equal(-20, s.SnrDb(999, sigmaZ), 2);
        Assert.Equal(0.00085f, s.Betas[0], 6);
    }

    [Fact]
    public void Forward_process_keeps_unit_variance()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        var s = NoiseSchedule.Cosine();
        var z0 = randn(4000, 16);
        var zt = s.AddNoise(z0, randn(4000, 16), full(4000, 500L, ScalarType.Int64));
        Assert.Equal(1.0, zt.std().item<float>(), 1);
        // v = √ᾱ ε − √(1−ᾱ) z0: at t = 0 (ᾱ ≈ 1) with ε = 0 it is tiny; at t = 999 (ᾱ ≈ 0) it is ≈ −z0
        var v0 = s.Velocity(z0, zeros(4000, 16), full(4000, 0L, ScalarType.Int64));
        Assert.True(v0.abs().max().item<float>() < 0.01f * z0.abs().max().item<float>());
        var vT = s.Velocity(z0, zeros(4000, 16), full(4000, 999L, ScalarType.Int64));
        Assert.True((vT + z0).abs().max().item<float>() < 1e-3f * z0.abs().max().item<float>());
    }

    [Fact]
    public void Bad_schedules_are_rejected()
    {
        Assert.Throws<ArgumentException>(() => NoiseSchedule.FromName("quadratic"));
        Assert.Throws<ArgumentException>(() => new NoiseSchedule([0.1f, 1.5f]));
        Assert.Throws<ArgumentOutOfRangeException>(() => NoiseSchedule.SnrAdaptive(0));
    }
}

/// <summary>Settings the fixtures do not cover, checked against values derived by hand from diffusers' definitions.</summary>
public class SchedulerSettingsTests
{
    static JsonObject Cfg(string spacing, int offset = 0, string pred = "epsilon", bool zeroSnr = false, bool karras = false, bool alphaToOne = false) => new()
    {
        ["num_train_timesteps"] = 1000, ["beta_start"] = 0.00085, ["beta_end"] = 0.012, ["beta_schedule"] = "scaled_linear",
        ["timestep_spacing"] = spacing, ["steps_offset"] = offset, ["prediction_type"] = pred, ["rescale_betas_zero_snr"] = zeroSnr,
        ["use_karras_sigmas"] = karras, ["set_alpha_to_one"] = alphaToOne, ["clip_sample"] = false,
    };

    [Fact]
    public void Timestep_spacings()
    {
        var leading = Scheduler.Create("DDIMScheduler", Cfg("leading", 1));
        leading.SetTimesteps(50);
        Assert.Equal(981, leading.Timesteps[0]); Assert.Equal(1, leading.Timesteps[^1]);
        var trailing = Scheduler.Create("DDIMScheduler", Cfg("trailing"));
        trailing.SetTimesteps(50);
        Assert.Equal(999, trailing.Timesteps[0]); Assert.Equal(19, trailing.Timesteps[^1]); Assert.Equal(50, trailing.Timesteps.Length);
        var linspace = Scheduler.Create("DDIMScheduler", Cfg("linspace"));
        linspace.SetTimesteps(10);
        Assert.Equal([999, 888, 777, 666, 555, 444, 333, 222, 111, 0], linspace.Timesteps);
        var dpm = Scheduler.Create("DPMSolverMultistepScheduler", Cfg("trailing"));
        dpm.SetTimesteps(4);
        Assert.Equal([999, 749, 499, 249], dpm.Timesteps);
        Assert.Throws<NotSupportedException>(() => Scheduler.Create("DDIMScheduler", Cfg("uniform")));
    }

    [Fact]
    public void Karras_sigmas_span_the_table()
    {
        TorchRuntime.Setup();
        var euler = (EulerScheduler)Scheduler.Create("EulerDiscreteScheduler", Cfg("linspace", karras: true));
        euler.SetTimesteps(20);
        var table = NoiseSchedule.ScaledLinear().AlphasCumprod.Select(a => Math.Sqrt((1 - a) / a)).ToArray();
        Assert.Equal(table[^1], euler.Sigmas[0], 3);
        Assert.Equal(table[0], euler.Sigmas[^2], 4);
        Assert.Equal(0, euler.Sigmas[^1]);
        Assert.Equal(999, euler.Timesteps[0], 2);
        Assert.Equal(0, euler.Timesteps[^1], 2);
        // ρ = 7 spacing: σ_i^(1/7) is linear in i
        var roots = euler.Sigmas[..^1].Select(s => Math.Pow(s, 1 / 7.0)).ToArray();
        for (int i = 2; i < roots.Length; i++) Assert.Equal(roots[1] - roots[0], roots[i] - roots[i - 1], 4);
    }

    /// <summary>With a perfect model (it returns the true ε, v or x_0 of a fixed x_0), deterministic samplers land on x_0.</summary>
    [Theory]
    [InlineData("DDIMScheduler", "epsilon")]
    [InlineData("DDIMScheduler", "v_prediction")]
    [InlineData("DDIMScheduler", "sample")]
    [InlineData("EulerDiscreteScheduler", "epsilon")]
    [InlineData("EulerDiscreteScheduler", "v_prediction")]
    [InlineData("DPMSolverMultistepScheduler", "epsilon")]
    [InlineData("DPMSolverMultistepScheduler", "v_prediction")]
    [InlineData("PNDMScheduler", "epsilon")]
    [InlineData("PNDMScheduler", "v_prediction")]
    public void Perfect_model_recovers_x0(string cls, string prediction)
    {
        TorchRuntime.Setup();
        manual_seed(5);
        var cfg = Cfg(cls is "EulerDiscreteScheduler" or "DPMSolverMultistepScheduler" ? "linspace" : "leading", 1, prediction, alphaToOne: true);
        cfg["skip_prk_steps"] = true;
        var s = Scheduler.Create(cls, cfg);
        var x0 = randn(1, 4, 8, 8).to_type(ScalarType.Float64) * 0.5;
        var acp = s.Schedule.AlphasCumprod;
        Tensor Perfect(Tensor input, double t, Tensor x)
        {
            // the true ε of x = √ᾱ x0 + √(1−ᾱ) ε at the current (fractional) t, from the unscaled sample x
            double a = cls == "EulerDiscreteScheduler" ? 1 / (1 + Math.Pow(((EulerScheduler)s).Sigmas[Array.IndexOf(s.Timesteps, t)], 2))
                : acp[(int)Math.Round(t)];
            var eps = cls == "EulerDiscreteScheduler"
                ? (x - x0) / ((EulerScheduler)s).Sigmas[Array.IndexOf(s.Timesteps, t)]
                : (x - Math.Sqrt(a) * x0) / Math.Sqrt(1 - a);
            return prediction switch
            {
                "epsilon" => eps,
                "sample" => x0,
                _ => Math.Sqrt(a) * eps - Math.Sqrt(1 - a) * x0,
            };
        }
        s.SetTimesteps(25);
        var x = randn(1, 4, 8, 8).to_type(ScalarType.Float64) * s.InitNoiseSigma;
        foreach (var t in s.Timesteps)
        {
            var output = Perfect(s.ScaleModelInput(x, t), t, x);
            x = s.Step(output, t, x).PrevSample;
        }
        double err = Parity.MaxAbsDiff(x, x0);
        Assert.True(err < (cls == "PNDMScheduler" ? 1e-2 : 1e-3), $"{cls}/{prediction}: |x − x0| = {err}");
    }

    [Fact]
    public void Ddpm_with_recorded_noise_is_reproducible_and_stochastic_without()
    {
        TorchRuntime.Setup();
        var s = Scheduler.Create("DDPMScheduler", Cfg("leading", 1));
        s.SetTimesteps(10);
        var x = ones(1, 2, 2, 2);
        var noise = full(1, 2, 2, 2, 0.5f);
        var a = s.Step(zeros(1, 2, 2, 2), s.Timesteps[0], x, noise).PrevSample;
        var b = s.Step(zeros(1, 2, 2, 2), s.Timesteps[0], x, noise).PrevSample;
        Assert.True(a.equal(b).all().item<bool>());
        manual_seed(1); var c = s.Step(zeros(1, 2, 2, 2), s.Timesteps[0], x).PrevSample;
        Assert.False(c.equal(a).all().item<bool>());
    }

    [Fact]
    public void Img2img_start_index_from_strength()
    {
        var s = Scheduler.Create("DDIMScheduler", Cfg("leading", 1));
        s.SetTimesteps(50);
        Assert.Equal(50, s.StartIndexForStrength(0));
        Assert.Equal(10, s.StartIndexForStrength(0.8));
        Assert.Equal(0, s.StartIndexForStrength(1));
        Assert.Throws<ArgumentOutOfRangeException>(() => s.StartIndexForStrength(1.5));
    }

    [Fact]
    public void Sampling_loop_calls_back_every_step()
    {
        TorchRuntime.Setup();
        var s = Scheduler.Create("EulerDiscreteScheduler", Cfg("linspace"));
        var seen = new List<(int, double, double)>();
        manual_seed(0);
        var x = Sampling.Sample(s, (xin, t) => SchedulerParity.FakeModel(xin, t), randn(1, 4, 8, 8), 12,
            st => seen.Add((st.Index, st.Timestep, st.PrevSample.norm().item<float>())));
        Assert.Equal(12, seen.Count);
        Assert.Equal(Enumerable.Range(0, 12), seen.Select(v => v.Item1));
        Assert.Equal(seen[^1].Item3, x.norm().item<float>(), 3);
    }
}

public class SamplingScopeTests
{
    /// <summary>Multistep schedulers keep history across steps; the per-step dispose scopes of the loop must not free it.</summary>
    [Theory]
    [InlineData("DPMSolverMultistepScheduler", false)]
    [InlineData("PNDMScheduler", true)]
    [InlineData("PNDMScheduler", false)]
    [InlineData("HeunDiscreteScheduler", false)]
    [InlineData("LMSDiscreteScheduler", false)]
    [InlineData("UniPCMultistepScheduler", false)]
    public void Sampling_loop_equals_a_plain_loop(string cls, bool skipPrk)
    {
        TorchRuntime.Setup();
        var cfg = new JsonObject { ["beta_schedule"] = "scaled_linear", ["beta_start"] = 0.00085, ["beta_end"] = 0.012, ["steps_offset"] = 1, ["skip_prk_steps"] = skipPrk, ["set_alpha_to_one"] = false };
        manual_seed(2);
        var noise = randn(1, 4, 8, 8);
        var viaLoop = Sampling.Sample(Scheduler.Create(cls, cfg), (x, t) => SchedulerParity.FakeModel(x, t), noise, 20);
        var s = Scheduler.Create(cls, cfg);
        s.SetTimesteps(20);
        var y = noise * s.InitNoiseSigma;
        foreach (var t in s.Timesteps) y = s.Step(SchedulerParity.FakeModel(s.ScaleModelInput(y, t), t), t, y).PrevSample;
        Assert.True(Parity.MaxAbsDiff(viaLoop, y) < 1e-6);
    }
}

/// <summary>
/// Every scheduler class built from an empty config (its class defaults) against diffusers' own class defaults
/// (fixtures/schedulers-class-defaults, made by scripts/make_scheduler_fixtures.py), and parity's per-entry reports.
/// </summary>
public class SchedulerClassDefaultsTests
{
    static string Dir => Path.Combine(AppContext.BaseDirectory, "fixtures", "schedulers-class-defaults");

    /// <summary>A copy of the folder whose configs hold only what each run set (the rest must come from the class).</summary>
    static string WithOnlyOverrides()
    {
        var dir = Directory.CreateTempSubdirectory("ldmlab-defaults-").FullName;
        foreach (var f in Directory.GetFiles(Dir)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var json = PyJson.ParseFile(Path.Combine(dir, "schedulers.json"))!;
        foreach (var (name, spec) in json["trajectories"]!.AsObject())
            spec!["config"] = name == "euler_ancestral_zero_snr_10"
                ? new JsonObject { ["rescale_betas_zero_snr"] = true, ["timestep_spacing"] = "trailing" }
                : new JsonObject();
        File.WriteAllText(Path.Combine(dir, "schedulers.json"), json.ToJsonString());
        return dir;
    }

    [Fact]
    public void Every_class_from_an_empty_config_matches_diffusers_class_defaults()
    {
        TorchRuntime.Setup();
        var dir = WithOnlyOverrides();
        try
        {
            var checks = Parity.CheckFolder(dir);
            Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
            foreach (var cls in new[] { "ddim_defaults_10", "ddim_defaults_clipped_output_10", "ddim_defaults_eta_10",
                         "ddpm_defaults_10", "pndm_defaults_10", "euler_defaults_10", "euler_ancestral_defaults_10",
                         "euler_ancestral_zero_snr_10", "heun_defaults_10", "lms_defaults_10", "dpmsolver_defaults_10",
                         "unipc_defaults_10" })
                Assert.Contains(checks, c => c.Name == $"{cls}/prev_sample");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void Ddim_clips_x0_but_keeps_the_models_epsilon_unless_told()
    {
        TorchRuntime.Setup();
        var plain = SafeTensors.Load(Path.Combine(Dir, "ddim_defaults_10.safetensors"));
        var clipped = SafeTensors.Load(Path.Combine(Dir, "ddim_defaults_clipped_output_10.safetensors"));
        // the fixture discriminates: x̂_0 leaves [−1, 1] and the two options end far apart
        Assert.True(Parity.MaxAbs(plain["pred_original_sample"]) <= 1.0 + 1e-6);
        Assert.True(Parity.MaxAbsDiff(plain["prev_sample"], clipped["prev_sample"]) > 1.0);

        var s = (DdimScheduler)Scheduler.Create("DDIMScheduler", new JsonObject());
        Assert.True(s.Config.ClipSample);
        Assert.False(s.UseClippedModelOutput);
        s.SetTimesteps(10);
        double t = s.Timesteps[0];
        var x = plain["sample_init"];
        var output = SchedulerParity.FakeModel(x, t);
        var ours = s.Step(output, t, x).PrevSample;
        Assert.True(Parity.MaxAbsDiff(ours, plain["prev_sample"][0]) < 1e-5);
        s.UseClippedModelOutput = true;
        Assert.True(Parity.MaxAbsDiff(s.Step(output, t, x).PrevSample, clipped["prev_sample"][0]) < 1e-5);
    }

    [Fact]
    public void Zero_snr_is_ignored_where_diffusers_has_no_such_option_and_patched_where_it_does()
    {
        var on = new JsonObject { ["rescale_betas_zero_snr"] = true };
        foreach (var cls in new[] { "HeunDiscreteScheduler", "LMSDiscreteScheduler", "PNDMScheduler", "UniPCMultistepScheduler" })
            Assert.Equal(Scheduler.Create(cls, new JsonObject()).Schedule.AlphasCumprod, Scheduler.Create(cls, on).Schedule.AlphasCumprod);
        foreach (var cls in new[] { "EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "DPMSolverMultistepScheduler" })
            Assert.Equal(MathF.Pow(2, -24), Scheduler.Create(cls, on).Schedule.AlphasCumprod[^1]);
        Assert.Equal(0f, Scheduler.Create("DDIMScheduler", on).Schedule.AlphasCumprod[^1]);
    }

    [Fact]
    public void One_spacing_rule_for_every_scheduler()
    {
        Assert.Equal([900, 800, 700, 600, 500, 400, 300, 200, 100, 0],
            TimestepSpacing.DescendingIntegers("leading", 1000, 10, 0));
        Assert.Equal([999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
            TimestepSpacing.DescendingIntegers("trailing", 1000, 10, 0));
        Assert.Equal([999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
            TimestepSpacing.DescendingIntegers("linspace", 1000, 10, 0));
        var e = Assert.Throws<NotSupportedException>(() => TimestepSpacing.Descending("uniform", 1000, 10, 0));
        Assert.Contains("linspace, leading, trailing", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => TimestepSpacing.Descending("leading", 1000, 1001, 0));
        // the integer schedulers and PNDM use the same rule (PNDM ascending before its own reordering)
        foreach (var cls in new[] { "DDIMScheduler", "DDPMScheduler" })
        {
            var s = Scheduler.Create(cls, new JsonObject { ["timestep_spacing"] = "trailing" });
            s.SetTimesteps(10);
            Assert.Equal(TimestepSpacing.DescendingIntegers("trailing", 1000, 10, 0).Select(v => (double)v), s.Timesteps);
        }
    }

    [Fact]
    public void A_folder_with_entries_parity_cannot_build_reports_each_and_checks_the_rest()
    {
        TorchRuntime.Setup();
        var dir = Directory.CreateTempSubdirectory("ldmlab-badentries-").FullName;
        try
        {
            var src = Path.Combine(AppContext.BaseDirectory, "fixtures", "schedulers");
            foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            var json = PyJson.ParseFile(Path.Combine(dir, "schedulers.json"))!;
            var trajectories = json["trajectories"]!.AsObject();
            trajectories["made_up"] = new JsonObject
            {
                ["class"] = "MadeUpScheduler", ["config"] = new JsonObject(),
                ["num_inference_steps"] = 5
            };
            trajectories["no_file"] = trajectories["ddim_50"]!.DeepClone();
            trajectories["bad_field"] = trajectories["ddim_50"]!.DeepClone();
            trajectories["bad_field"]!["config"]!["thresholding"] = true;
            File.Copy(Path.Combine(dir, "ddim_50.safetensors"), Path.Combine(dir, "bad_field.safetensors"));
            File.Copy(Path.Combine(dir, "ddim_50.safetensors"), Path.Combine(dir, "made_up.safetensors"));
            json["beta_schedules"]!["exotic_schedule"] = new JsonObject();
            File.WriteAllText(Path.Combine(dir, "schedulers.json"), json.ToJsonString());

            var checks = Parity.CheckFolder(dir);
            ParityCheck Only(string name) => Assert.Single(checks, c => c.Name == name);
            Assert.Contains("MadeUpScheduler", Only("made_up").Note);
            Assert.Contains("no_file.safetensors", Only("no_file").Note);
            Assert.Contains("thresholding", Only("bad_field").Note);
            Assert.Contains("exotic_schedule", Only("beta_schedules/exotic_schedule").Note);
            Assert.Equal(4, checks.Count(c => !c.Passed));
            Assert.Contains(checks, c => c.Name == "pndm_50/prev_sample" && c.Passed);
            Assert.Contains(checks, c => c.Name == "beta_schedules/linear.betas" && c.Passed);
        }
        finally { Directory.Delete(dir, true); }
    }
}
