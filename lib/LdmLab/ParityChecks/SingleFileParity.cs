using LdmLab.Interop;
using LdmLab.Pipelines;
using static TorchSharp.torch;

namespace LdmLab.ParityChecks;

/// <summary>
/// A one-file checkpoint in the original SD key names against diffusers (fixture <c>single-file-sd1-tiny/</c>:
/// <c>model.safetensors</c>, the same models as diffusers folders <c>unet/</c>, <c>vae/</c>, the key map and the
/// recorded outputs). Checks: every key of the map is what LdmLab's rules name it; the inferred configs; the loaded
/// weights bit for bit against the diffusers folders and the text encoder's source; the U-Net and VAE outputs; and
/// that writing the pipeline back gives the file's tensors again.
/// </summary>
public static class SingleFileParity
{
    public const double Tolerance = 1e-4;

    public static IReadOnlyList<ParityCheck> Check(string dir)
    {
        using var scope = NewDisposeScope();
        var info = PyJson.ParseFile(Path.Combine(dir, "info.json"))!;
        var name = Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar));
        var unetJson = info["unet_config"]!.AsObject();
        var textDir = info["text_encoder_source"] is { } src ? Path.GetFullPath(Path.Combine(dir, (string)src!)) : null;
        var textConfig = textDir is null ? null : PyJson.ParseFile(Path.Combine(textDir, "config.json"));
        // what a file cannot say, from the fixture's configs (as a user would pass them)
        var options = new SingleFileOptions
        {
            ImageSize = (int)unetJson["sample_size"]! * 8,
            TextEncoderHeads = (int?)textConfig?["num_attention_heads"],
        };
        var file = Path.Combine(dir, "model.safetensors");
        var pipe = StableDiffusionPipeline.FromSingleFile(file, options);
        var checks = new List<ParityCheck>();

        // the key rules against the converter's own map
        var rows = PyJson.ParseFile(Path.Combine(dir, "key_map.json"))!["entries"]!.AsArray();
        int levels = pipe.Vae.Config.BlockOutChannels.Length, wrong = 0;
        string? firstWrong = null;
        foreach (var row in rows)
        {
            string original = (string)row![0]!, component = (string)row[1]!, diffusers = (string)row[2]!;
            var ours = component switch
            {
                "unet" => SingleFileKeys.UNetPrefix + SingleFileKeys.UNet(diffusers, pipe.Unet.Config),
                "vae" => SingleFileKeys.VaePrefix + SingleFileKeys.Vae(diffusers, levels),
                _ => SingleFileKeys.ClipPrefix + diffusers,
            };
            if (ours != original) { wrong++; firstWrong ??= $"{diffusers} → {ours}, file has {original}"; }
        }
        checks.Add(new ParityCheck($"{name}/key names ({rows.Count})", wrong, 0, firstWrong));

        // the inferred architecture equals the one the file was made from
        var inferredUNet = pipe.Unet.Config.ToJson();
        var inferredVae = pipe.Vae.Config.ToJson();
        var differ = new List<string>();
        foreach (var (config, reference, fields) in new[]
                 {
                     (inferredUNet, unetJson, new[]
                     {
                         "in_channels", "out_channels", "block_out_channels", "layers_per_block", "down_block_types",
                         "up_block_types", "cross_attention_dim", "norm_num_groups", "use_linear_projection",
                         "sample_size",
                     }),
                     (inferredVae, info["vae_config"]!.AsObject(), new[]
                     {
                         "in_channels", "out_channels", "latent_channels", "block_out_channels", "layers_per_block",
                         "norm_num_groups",
                     }),
                 })
            foreach (var f in fields)
                if (config[f]?.ToJsonString() != reference[f]?.ToJsonString())
                    differ.Add($"{f}: {config[f]?.ToJsonString()} vs {reference[f]?.ToJsonString()}");
        checks.Add(new ParityCheck($"{name}/inferred configs", differ.Count, 0,
            differ.Count == 0 ? null : string.Join("; ", differ)));

        // weights, bit for bit
        Weights(checks, $"{name}/unet weights", pipe.Unet, Path.Combine(dir, "unet", DiffusersFolder.WeightsName));
        Weights(checks, $"{name}/vae weights", pipe.Vae, Path.Combine(dir, "vae", DiffusersFolder.WeightsName));
        if (textDir is not null)
            Weights(checks, $"{name}/text encoder weights", pipe.TextEncoder,
                Path.Combine(textDir, "model.safetensors"));

        // outputs
        var r = SafeTensors.Load(Path.Combine(dir, "tensors.safetensors"));
        using (no_grad())
        {
            Parity.Compare(checks, $"{name}/unet.sample",
                pipe.Unet.Forward(r["unet.latents"], r["unet.timesteps"], r["unet.encoder_hidden_states"]), r,
                "unet.sample", Tolerance);
            Parity.Compare(checks, $"{name}/vae.decode", pipe.Vae.Decode(r["vae.latents"]), r, "vae.decode", Tolerance);
            var posterior = pipe.Vae.Encode(r["vae.image"]);
            Parity.Compare(checks, $"{name}/vae.posterior_mean", posterior.Mean, r, "vae.posterior_mean", Tolerance);
            Parity.Compare(checks, $"{name}/vae.posterior_logvar", posterior.LogVar, r, "vae.posterior_logvar",
                Tolerance);
        }

        // written back: the same keys and tensors as the file
        var back = Path.Combine(Path.GetTempPath(), $"ldmlab-single-file-{Guid.NewGuid():N}.safetensors");
        try
        {
            pipe.SaveSingleFile(back);
            var a = SafeTensors.Load(file);
            var b = SafeTensors.Load(back);
            var keyDiff = a.Keys.Except(b.Keys).Concat(b.Keys.Except(a.Keys)).ToList();
            double maxDiff = keyDiff.Count > 0 ? double.PositiveInfinity
                : a.Keys.Max(k => Parity.MaxAbsDiff(a[k], b[k]));
            checks.Add(new ParityCheck($"{name}/written back ({a.Count} tensors)", maxDiff, 0,
                keyDiff.Count == 0 ? null : "keys differ: " + string.Join(", ", keyDiff.Take(5))));
        }
        finally { File.Delete(back); }
        return checks;
    }

    /// <summary>max |ours − reference| over every tensor of a diffusers weight file (0 expected: a pure
    /// renaming).</summary>
    static void Weights(List<ParityCheck> checks, string name, nn.Module module, string path)
    {
        var reference = SafeTensors.Load(path);
        var sd = module.state_dict();
        var missing = reference.Keys.Where(k => !sd.ContainsKey(k) && !k.EndsWith("position_ids")).ToList();
        double max = missing.Count > 0 ? double.PositiveInfinity
            : reference.Where(kv => sd.ContainsKey(kv.Key)).Max(kv => Parity.MaxAbsDiff(sd[kv.Key], kv.Value));
        checks.Add(new ParityCheck($"{name} ({reference.Count})", max, 0,
            missing.Count == 0 ? null : "not in the loaded model: " + string.Join(", ", missing.Take(5))));
    }
}
