using System.Text.Json.Nodes;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Interop;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Euler ancestral, Heun, LMS and UniPC: parity with diffusers, class defaults, and a perfect model.</summary>
public class SamplerTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);

    /// <summary>The published folder (schedulers-more) and one with other settings, both made by diffusers v0.27.2.</summary>
    [Theory]
    [InlineData("schedulers-more", 30)]
    [InlineData("schedulers-more-settings", 100)]
    public void Trajectories_match_diffusers(string folder, int minimumChecks)
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Fixture(folder));
        Assert.True(checks.Count >= minimumChecks, $"only {checks.Count} checks");
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
        var names = PyJson.ParseFile(Path.Combine(Fixture(folder), "schedulers.json"))!["trajectories"]!.AsObject()
            .Select(kv => kv.Key).ToList();
        foreach (var n in names)
        {
            Assert.Contains(checks, c => c.Name == $"{n}/prev_sample");
            Assert.Contains(checks, c => c.Name == $"{n}/sigmas");
        }
    }

    [Fact]
    public void A_changed_step_noise_fails_euler_ancestral_parity()
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("ea-noise");
        foreach (var f in Directory.GetFiles(Fixture("schedulers-more"))) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        var path = Path.Combine(dir, "euler_ancestral_30.safetensors");
        var t = SafeTensors.Load(path);
        t["step_noise"] = t["step_noise"].flip(0);   // the right noise in the wrong steps
        SafeTensors.Save(path, t);
        var checks = Parity.CheckFolder(dir);
        Assert.Contains(checks, c => c.Name == "euler_ancestral_30/prev_sample" && !c.Passed);
        Assert.Contains(checks, c => c.Name == "heun_15/prev_sample" && c.Passed);
    }

    /// <summary>diffusers' class defaults: linear β 1e-4 → 0.02, "linspace" spacing, ε-prediction, LMS order 4,
    /// UniPC order 2 / bh2 / predict_x0 / lower_order_final, no Karras σ; x_T scaled by σ_max (UniPC: 1).</summary>
    [Theory]
    [InlineData("EulerAncestralDiscreteScheduler", 10, 999.0, 10)]
    [InlineData("HeunDiscreteScheduler", 10, 999.0, 19)]
    [InlineData("LMSDiscreteScheduler", 10, 999.0, 10)]
    [InlineData("UniPCMultistepScheduler", 10, 999.0, 10)]
    public void Class_defaults_are_diffusers(string cls, int steps, double firstTimestep, int modelCalls)
    {
        TorchRuntime.Setup();
        var s = Scheduler.Create(cls, new JsonObject());
        Assert.Equal("linspace", s.Config.TimestepSpacing);
        Assert.Equal("epsilon", s.Config.PredictionType);
        Assert.Equal("linear", s.Config.BetaSchedule);
        Assert.False(s.Config.UseKarrasSigmas);
        s.SetTimesteps(steps);
        Assert.Equal(firstTimestep, s.Timesteps[0]);
        Assert.Equal(modelCalls, s.Timesteps.Length);
        double sigmaMax = Math.Sqrt((1 - s.Schedule.AlphasCumprod[^1]) / s.Schedule.AlphasCumprod[^1]);
        Assert.Equal(cls == "UniPCMultistepScheduler" ? 1.0 : sigmaMax, s.InitNoiseSigma, 3);
        switch (s)
        {
            case LmsScheduler lms: Assert.Equal(4, lms.LmsOrder); break;
            case UniPcMultistepScheduler:
                Assert.Equal(2, s.Config.SolverOrder);
                Assert.True(s.Config.PredictX0);
                Assert.True(s.Config.LowerOrderFinal);
                Assert.Equal([999.0, 899, 799, 699, 599, 500, 400, 300, 200, 100], s.Timesteps);
                break;
            case HeunScheduler h:
                Assert.Equal(2, h.Order);
                Assert.Equal(20, h.Sigmas.Length);
                Assert.Equal(0.0, h.Sigmas[^1]);
                Assert.Equal(h.Timesteps[1], h.Timesteps[2]);
                break;
        }
    }

    [Fact]
    public void Unsupported_settings_are_named()
    {
        var e = Assert.Throws<NotSupportedException>(() =>
            Scheduler.Create("EulerAncestralDiscreteScheduler", new JsonObject { ["use_karras_sigmas"] = true }).SetTimesteps(10));
        Assert.Contains("use_karras_sigmas", e.Message);
        var ea = Scheduler.Create("EulerAncestralDiscreteScheduler", new JsonObject { ["prediction_type"] = "sample" });
        ea.SetTimesteps(4);
        Assert.Contains("prediction_type 'sample'", Assert.Throws<NotSupportedException>(() =>
            ea.Step(zeros(1, 1, 2, 2), ea.Timesteps[0], zeros(1, 1, 2, 2), zeros(1, 1, 2, 2))).Message);
        Assert.Contains("solver_type 'foo'", Assert.Throws<NotSupportedException>(() =>
            Scheduler.Create("UniPCMultistepScheduler", new JsonObject { ["solver_type"] = "foo" })).Message);
        Assert.Contains("solver_p", Assert.Throws<NotSupportedException>(() =>
            Scheduler.Create("UniPCMultistepScheduler", new JsonObject { ["solver_p"] = new JsonObject() })).Message);
        var heun = Scheduler.Create("HeunDiscreteScheduler", new JsonObject());
        heun.SetTimesteps(5);
        Assert.Contains("is not one of this scheduler's timesteps",
            Assert.Throws<ArgumentException>(() => heun.ScaleModelInput(zeros(1), 123.25)).Message);
    }

    /// <summary>The Lagrange basis sums to 1, so LMS's coefficients integrate to σ_{i+1} − σ_i at every order.</summary>
    [Fact]
    public void Lms_coefficients_sum_to_the_step_in_sigma()
    {
        var s = (LmsScheduler)Scheduler.Create("LMSDiscreteScheduler", new JsonObject
        {
            ["beta_schedule"] = "scaled_linear",
            ["beta_start"] = 0.00085, ["beta_end"] = 0.012
        });
        s.SetTimesteps(12);
        for (int i = 0; i < 12; i++)
            for (int k = 1; k <= Math.Min(i + 1, 4); k++)
            {
                double sum = Enumerable.Range(0, k).Sum(m => s.Coefficient(k, i, m));
                Assert.Equal(s.Sigmas[i + 1] - s.Sigmas[i], sum, 10);
            }
        // order 1 is the Euler step
        Assert.Equal(s.Sigmas[1] - s.Sigmas[0], s.Coefficient(1, 0, 0), 12);
    }

    /// <summary>
    /// A perfect model (it returns the true ε, v or x_0 of a fixed x_0 along x = x_0 + σ ε) takes the σ-samplers to
    /// x_0 (their last σ is 0) and UniPC to α x_0 + σ ε at its last σ = σ(t=0); Euler a's injected noise vanishes
    /// at σ_next = 0 too.
    /// </summary>
    [Theory]
    [InlineData("EulerAncestralDiscreteScheduler", "epsilon", null)]
    [InlineData("EulerAncestralDiscreteScheduler", "v_prediction", null)]
    [InlineData("HeunDiscreteScheduler", "epsilon", null)]
    [InlineData("HeunDiscreteScheduler", "v_prediction", "karras")]
    [InlineData("HeunDiscreteScheduler", "sample", null)]
    [InlineData("LMSDiscreteScheduler", "epsilon", null)]
    [InlineData("LMSDiscreteScheduler", "v_prediction", "karras")]
    [InlineData("LMSDiscreteScheduler", "sample", null)]
    [InlineData("UniPCMultistepScheduler", "epsilon", null)]
    [InlineData("UniPCMultistepScheduler", "v_prediction", "bh1")]
    [InlineData("UniPCMultistepScheduler", "epsilon", "order3")]
    [InlineData("UniPCMultistepScheduler", "epsilon", "eps-space")]
    [InlineData("UniPCMultistepScheduler", "sample", "karras")]
    public void Perfect_model_lands_on_x0(string cls, string prediction, string? variant)
    {
        TorchRuntime.Setup();
        manual_seed(5);
        var cfg = new JsonObject
        {
            ["beta_schedule"] = "scaled_linear", ["beta_start"] = 0.00085, ["beta_end"] = 0.012, ["prediction_type"] = prediction,
            ["use_karras_sigmas"] = variant == "karras",
        };
        if (variant == "bh1") cfg["solver_type"] = "bh1";
        if (variant == "order3") cfg["solver_order"] = 3;
        if (variant == "eps-space") cfg["predict_x0"] = false;
        var s = Scheduler.Create(cls, cfg);
        s.SetTimesteps(20);
        var x0 = randn(1, 4, 8, 8).to_type(ScalarType.Float64) * 0.5;
        var eps0 = randn(1, 4, 8, 8).to_type(ScalarType.Float64);
        bool vp = s is UniPcMultistepScheduler;
        double[] sigmas = s is SigmaScheduler ss ? ss.Sigmas : ((UniPcMultistepScheduler)s).Sigmas;
        // x_T: VE samplers x = x_0 + σ ε; UniPC (VP) x = α x_0 + σ_t ε with α = 1/√(σ²+1), σ_t = σ α
        Tensor At(double sigma)
        {
            var (a, st) = SigmaMath.AlphaSigma(sigma);
            return vp ? a * x0 + st * eps0 : x0 + sigma * eps0;
        }
        var x = At(sigmas[0]);
        for (int call = 0; call < s.Timesteps.Length; call++)
        {
            double t = s.Timesteps[call];
            var input = s.ScaleModelInput(x, t);
            double sigma = sigmas[call];
            var (a, st) = SigmaMath.AlphaSigma(sigma);
            // the true ε at the point the model sees: the scaled input is α x_0 + σ_t ε for both kinds of sampler
            var eps = (input - a * x0) / st;
            var output = prediction switch { "epsilon" => eps, "sample" => x0, _ => a * eps - st * x0 };
            x = s.Step(output, t, x, zeros_like(x)).PrevSample;
        }
        var target = vp ? At(sigmas[^1]) : x0;
        double err = Parity.MaxAbsDiff(x, target);
        Assert.True(err < 1e-4, $"{cls}/{prediction}/{variant}: |x − target| = {err}");
    }
}
