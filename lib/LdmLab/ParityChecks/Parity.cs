using System.Text.Json.Nodes;
using LdmLab.Data;
using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using static TorchSharp.torch;

using LdmLab.Interop;

namespace LdmLab.ParityChecks;

/// <summary>One compared tensor: its name, the largest absolute difference and the tolerance it had to meet.</summary>
public sealed record ParityCheck(string Name, double MaxAbsDiff, double Tolerance, string? Note = null)
{
    public bool Passed => MaxAbsDiff <= Tolerance;
    public override string ToString() => $"{(Passed ? "PASS" : "FAIL")} {Name} {MaxAbsDiff:G3}{(Note is null ? "" : "  (" + Note + ")")}";
}

/// <summary>Thrown when a folder is not in a fixture format LdmLab can check.</summary>
public sealed class ParityFormatException(string message) : Exception(message);

/// <summary>
/// Compares LdmLab against reference outputs in the format of the shared fixtures (see their README):
/// the kind of a folder is detected from its files.
/// </summary>
public static class Parity
{
    public static IReadOnlyList<ParityCheck> CheckFolder(string dir)
    {
        if (!Directory.Exists(dir)) throw new ParityFormatException($"{dir}: folder not found");
        if (File.Exists(Path.Combine(dir, "schedulers.json"))) return SchedulerParity.Check(dir);
        if (File.Exists(Path.Combine(dir, "prompts.json"))) return TextParity.CheckTokenizer(dir);
        if (File.Exists(Path.Combine(dir, "info.json")) && PyJson.ParseFile(Path.Combine(dir, "info.json"))?["pipeline"] is not null)
            return PipelineParity.Check(dir);
        if (File.Exists(Path.Combine(dir, "info.json"))
            && PyJson.ParseFile(Path.Combine(dir, "info.json"))?["lora_file"] is not null)
            return LoraParity.Check(dir);
        if (File.Exists(Path.Combine(dir, "info.json"))
            && PyJson.ParseFile(Path.Combine(dir, "info.json"))?["single_file"] is not null)
            return SingleFileParity.Check(dir);
        var config = Path.Combine(dir, "config.json");
        if (File.Exists(config))
        {
            var json = PyJson.ParseFile(config);
            var cls = (string?)json?["_class_name"];
            return cls switch
            {
                "UNet2DConditionModel" => ModelParity.CheckUNet(dir),
                "AutoencoderKL" => ModelParity.CheckVae(dir),
                null when json?["model_type"]?.ToString() == "clip_text_model" => TextParity.CheckTextModel(dir),
                _ => throw new ParityFormatException($"{dir}: parity for {cls ?? "this model"} is not implemented yet"),
            };
        }
        var manifests = Directory.GetFiles(dir, "*_manifest.json").Order(StringComparer.Ordinal).ToList();
        if (manifests.Count > 0)
        {
            var checks = new List<ParityCheck>();
            foreach (var m in manifests)
                Entry(checks, Path.GetFileNameWithoutExtension(m), () => ModelParity.CheckManifest(m));
            return checks;
        }
        // a folder of fixture folders (e.g. pipeline-more/): each checked, one that fails to build fails alone
        var children = Directory.GetDirectories(dir).Order(StringComparer.Ordinal).Where(IsFixtureFolder).ToList();
        if (children.Count > 0)
        {
            var checks = new List<ParityCheck>();
            foreach (var child in children) Entry(checks, Path.GetFileName(child), () => CheckFolder(child));
            return checks;
        }
        throw new ParityFormatException($"{dir}: no schedulers.json, config.json or *_manifest.json: not a fixture folder");
    }

    static bool IsFixtureFolder(string dir) =>
        new[] { "schedulers.json", "prompts.json", "info.json", "config.json" }.Any(f => File.Exists(Path.Combine(dir, f)))
        || Directory.GetFiles(dir, "*_manifest.json").Length > 0;

    /// <summary>
    /// Adds one entry's checks. An entry LdmLab cannot build or read (an unknown scheduler class or β-schedule name, an
    /// unsupported config field, a missing or unreadable tensor) fails alone, with its reason; the others are still checked.
    /// </summary>
    public static void Entry(List<ParityCheck> checks, string name, Func<IEnumerable<ParityCheck>> check)
    {
        try { checks.AddRange(check()); }
        catch (Exception e) when (e is ParityFormatException or NotSupportedException or ArgumentException or FormatException
                                      or KeyNotFoundException or DatasetException or InvalidOperationException)
        {
            checks.Add(new ParityCheck(name, double.PositiveInfinity, 0, e.Message));
        }
    }

    /// <summary>
    /// Where the models of a parity run compute: <see cref="Runtime.Lab.Device"/> (CUDA when present, or
    /// LDMLAB_DEVICE), so the same folders check a GPU. References stay as recorded; differences are taken on the CPU.
    /// </summary>
    public static Device Device => Runtime.Lab.Device;

    /// <summary>The recorded tensors moved to <paramref name="device"/> (the same objects on the CPU).</summary>
    public static Dictionary<string, Tensor> OnDevice(Dictionary<string, Tensor> tensors, Device device) =>
        device.type == TorchSharp.DeviceType.CPU ? tensors : tensors.ToDictionary(kv => kv.Key, kv => kv.Value.to(device));

    /// <summary>max |a − b| over all elements (shapes must match), computed in float64 on the CPU.</summary>
    public static double MaxAbsDiff(Tensor a, Tensor b)
    {
        if (!a.shape.SequenceEqual(b.shape)) return double.PositiveInfinity;
        if (a.numel() == 0) return 0;
        using var d = (a.cpu().to_type(ScalarType.Float64) - b.cpu().to_type(ScalarType.Float64)).abs().max();
        var v = d.item<double>();
        return double.IsNaN(v) ? double.PositiveInfinity : v;
    }

    /// <summary>
    /// Adds the check of <paramref name="ours"/> against <paramref name="reference"/>[<paramref name="key"/>] (skipped
    /// when the fixture does not record that tensor); a shape mismatch fails and is named.
    /// </summary>
    public static void Compare(List<ParityCheck> checks, string name, Tensor ours, IReadOnlyDictionary<string, Tensor> reference,
        string key, double tolerance)
    {
        if (!reference.TryGetValue(key, out var b)) return;
        checks.Add(new ParityCheck(name, MaxAbsDiff(ours, b), tolerance,
            ours.shape.SequenceEqual(b.shape) ? null : $"shape [{string.Join(",", ours.shape)}] vs [{string.Join(",", b.shape)}]"));
    }

    public static double MaxAbs(Tensor a) => a.numel() == 0 ? 0 : a.cpu().to_type(ScalarType.Float64).abs().max().item<double>();
}

/// <summary>Scheduler trajectories and β-schedule tables (fixtures/schedulers format).</summary>
public static class SchedulerParity
{
    /// <summary>The fixtures' fake model: 0.1·x (float32) + 0.05·sin(t/100) (double, added as float32).</summary>
    public static Tensor FakeModel(Tensor x, double t) => x * 0.1f + (float)(0.05 * Math.Sin(t / 100));

    public static IReadOnlyList<ParityCheck> Check(string dir)
    {
        var json = PyJson.ParseFile(Path.Combine(dir, "schedulers.json"))!.AsObject();
        var checks = new List<ParityCheck>();
        var betasFile = Path.Combine(dir, "beta_schedules.safetensors");
        if (File.Exists(betasFile) && json["beta_schedules"] is JsonObject schedules)
        {
            var tensors = SafeTensors.Load(betasFile);
            foreach (var (name, cfg) in schedules)
                Parity.Entry(checks, $"beta_schedules/{name}", () => CheckBetaSchedule(name, cfg, tensors));
        }
        foreach (var (name, node) in json["trajectories"]?.AsObject() ?? [])
        {
            var file = Path.Combine(dir, name + ".safetensors");
            Parity.Entry(checks, name, () => File.Exists(file)
                ? CheckTrajectory(name, node as JsonObject ?? throw new ParityFormatException($"{name}: not an object"),
                    SafeTensors.Load(file))
                : throw new ParityFormatException($"{file}: trajectory file named in schedulers.json is missing"));
        }
        return checks;
    }

    static List<ParityCheck> CheckBetaSchedule(string name, JsonNode? cfg, Dictionary<string, Tensor> tensors)
    {
        var checks = new List<ParityCheck>();
        var s = NoiseSchedule.FromName(name, (int?)cfg?["num_train_timesteps"] ?? 1000,
            (double?)cfg?["beta_start"] ?? 1e-4, (double?)cfg?["beta_end"] ?? 0.02);
        Parity.Compare(checks, $"beta_schedules/{name}.betas", tensor(s.Betas), tensors, $"{name}.betas", 1e-7);
        Parity.Compare(checks, $"beta_schedules/{name}.alphas_cumprod", tensor(s.AlphasCumprod), tensors,
            $"{name}.alphas_cumprod", 1e-6);
        return checks;
    }

    static IEnumerable<ParityCheck> CheckTrajectory(string name, JsonObject spec, Dictionary<string, Tensor> r)
    {
        var checks = new List<ParityCheck>();
        var cls = (string?)spec["class"] ?? throw new ParityFormatException($"{name}: no 'class'");
        var scheduler = Scheduler.Create(cls, spec["config"]!.AsObject());
        int steps = (int)spec["num_inference_steps"]!;
        if (scheduler is DdimScheduler ddim && (spec["eta"] ?? spec["step_kwargs"]?["eta"]) is JsonNode eta) ddim.Eta = (double)eta;
        if (scheduler is DdimScheduler clipped && spec["step_kwargs"]?["use_clipped_model_output"] is JsonNode useClipped)
            clipped.UseClippedModelOutput = (bool)useClipped;
        if (scheduler is LmsScheduler lms && (spec["order"] ?? spec["step_kwargs"]?["order"]) is JsonNode order) lms.LmsOrder = (int)order;
        scheduler.SetTimesteps(steps);

        var refT = r["timesteps"].to_type(ScalarType.Float64);
        bool integerTimesteps = refT.dtype == ScalarType.Float64 && r["timesteps"].dtype == ScalarType.Int64;
        Parity.Compare(checks, $"{name}/timesteps", tensor(scheduler.Timesteps), r, "timesteps", integerTimesteps ? 0 : 1e-3);
        if (spec["init_noise_sigma"] is JsonNode ins)
            checks.Add(new ParityCheck($"{name}/init_noise_sigma", Math.Abs(scheduler.InitNoiseSigma - (double)ins), 1e-5 * Math.Max(1, (double)ins)));
        Parity.Compare(checks, $"{name}/alphas_cumprod", tensor(scheduler.Schedule.AlphasCumprod), r, "alphas_cumprod", 1e-6);
        if (r.ContainsKey("sigmas"))
        {
            var sig = scheduler switch
            {
                SigmaScheduler e => e.Sigmas,
                DpmSolverMultistepScheduler d => d.Sigmas,
                UniPcMultistepScheduler u => u.Sigmas,
                _ => []
            };
            Parity.Compare(checks, $"{name}/sigmas", tensor(sig), r, "sigmas", 1e-5 * Math.Max(1, Parity.MaxAbs(r["sigmas"])));
        }
        if (scheduler.Timesteps.Length != r["timesteps"].shape[0])
        {
            checks.Add(new ParityCheck($"{name}/trajectory", double.PositiveInfinity, 0, $"{scheduler.Timesteps.Length} steps vs {r["timesteps"].shape[0]}"));
            return checks;
        }

        var sample = r["noise"] * (float)scheduler.InitNoiseSigma;
        Parity.Compare(checks, $"{name}/sample_init", sample, r, "sample_init", 1e-5 * Math.Max(1, Parity.MaxAbs(r["sample_init"])));
        var diffs = new Dictionary<string, double>();
        void Track(string key, Tensor ours, int i)
        {
            if (!r.TryGetValue(key, out var all)) return;
            var d = Parity.MaxAbsDiff(ours, all[i]);
            diffs[key] = Math.Max(diffs.GetValueOrDefault(key), d);
        }
        for (int i = 0; i < scheduler.Timesteps.Length; i++)
        {
            double t = scheduler.Timesteps[i];
            var input = scheduler.ScaleModelInput(sample, t);
            var output = FakeModel(input, t);
            // the noise a stochastic step drew (DDPM: variance_noise, Euler ancestral: step_noise)
            var noise = r.TryGetValue("variance_noise", out var vn) || r.TryGetValue("step_noise", out vn) ? vn[i] : null;
            var step = scheduler.Step(output, t, sample, noise);
            Track("model_input", input, i);
            Track("model_output", output, i);
            Track("prev_sample", step.PrevSample, i);
            if (step.PredOriginalSample is not null) Track("pred_original_sample", step.PredOriginalSample, i);
            if (r.TryGetValue("variance_std", out var vs) && scheduler is DdpmScheduler ddpm)
                diffs["variance_std"] = Math.Max(diffs.GetValueOrDefault("variance_std"),
                    Math.Abs(Math.Sqrt(ddpm.Variance((int)t)) - vs[i].item<float>()));
            sample = step.PrevSample;
        }
        foreach (var (key, d) in diffs)
            checks.Add(new ParityCheck($"{name}/{key}", d, key == "variance_std" ? 1e-6 : 1e-5 * Math.Max(1, Parity.MaxAbs(r[key]))));
        if (r.ContainsKey("pred_original_sample") && !diffs.ContainsKey("pred_original_sample"))
            checks.Add(new ParityCheck($"{name}/pred_original_sample", double.PositiveInfinity, 0, "this scheduler returned none"));
        return checks;
    }
}
