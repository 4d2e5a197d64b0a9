using TorchSharp;
using System.Text.Json.Nodes;
using LdmLab.UNet;
using static TorchSharp.torch;

using LdmLab.Interop;

namespace LdmLab.ParityChecks;

/// <summary>Model fixtures: a diffusers model folder with tensors.safetensors (inputs, outputs, intermediates).</summary>
public static class ModelParity
{
    public const double Tolerance = 1e-4;

    public static IReadOnlyList<ParityCheck> CheckUNet(string dir)
    {
        using var scope = NewDisposeScope();
        var name = Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar));
        var model = UNet2DConditionModel.FromPretrained(dir);
        model.eval();
        var device = Parity.Device;
        model.to(device);
        var r = Parity.OnDevice(SafeTensors.Load(Path.Combine(dir, "tensors.safetensors")), device);
        var checks = new List<ParityCheck>();
        using var _ = no_grad();
        var record = new Dictionary<string, Tensor>();
        var classLabels = r.GetValueOrDefault("class_labels");
        var sample = model.Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"], classLabels, record);
        Parity.Compare(checks, $"{name}/sample", sample, r, "sample", Tolerance);
        foreach (var (k, v) in record) Parity.Compare(checks, $"{name}/intermediate.{k}", v, r, "intermediate." + k, Tolerance);
        foreach (var key in r.Keys.Where(k => k.StartsWith("intermediate.") && !record.ContainsKey(k["intermediate.".Length..])))
            checks.Add(new ParityCheck($"{name}/{key}", double.PositiveInfinity, Tolerance, "not produced by LdmLab"));
        if (r.TryGetValue("sample_scalar_t500", out var scalarRef))
            checks.Add(new ParityCheck($"{name}/sample_scalar_t500",
                Parity.MaxAbsDiff(model.Forward(r["latents"], tensor(500L, device: device), r["encoder_hidden_states"], classLabels),
                    scalarRef), Tolerance));
        return checks;
    }

    public static IReadOnlyList<ParityCheck> CheckVae(string dir)
    {
        using var scope = NewDisposeScope();
        var name = Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar));
        var vae = Autoencoders.AutoencoderKL.FromPretrained(dir);
        vae.eval();
        var device = Parity.Device;
        vae.to(device);
        var r = Parity.OnDevice(SafeTensors.Load(Path.Combine(dir, "tensors.safetensors")), device);
        var checks = new List<ParityCheck>();
        using var _ = no_grad();
        var record = new Dictionary<string, Tensor>();
        var q = vae.Encode(r["x"], record);
        Parity.Compare(checks, $"{name}/posterior_mean", q.Mean, r, "posterior_mean", Tolerance);
        Parity.Compare(checks, $"{name}/posterior_logvar", q.LogVar, r, "posterior_logvar", Tolerance);
        Parity.Compare(checks, $"{name}/posterior_std", q.Std, r, "posterior_std", Tolerance);
        if (r.TryGetValue("posterior_sample_noise", out var noise))
            Parity.Compare(checks, $"{name}/posterior_sample", q.Sample(noise), r, "posterior_sample", Tolerance);
        var decoded = vae.Decode(q.Mean, record);
        Parity.Compare(checks, $"{name}/decode_of_mean", decoded, r, "decode_of_mean", Tolerance);
        Parity.Compare(checks, $"{name}/forward_sample_posterior_false", vae.Forward(r["x"]), r, "forward_sample_posterior_false", Tolerance);
        foreach (var (k, v) in record) Parity.Compare(checks, $"{name}/intermediate.{k}", v, r, "intermediate." + k, Tolerance);
        foreach (var key in r.Keys.Where(k => k.StartsWith("intermediate.") && !record.ContainsKey(k["intermediate.".Length..])))
            checks.Add(new ParityCheck($"{name}/{key}", double.PositiveInfinity, Tolerance, "not produced by LdmLab"));
        return checks;
    }

    /// <summary>
    /// A state-dict manifest (sd15-manifest format): build the model from its config and compare every key (in order),
    /// shape and the parameter count. One check per aspect; the difference counts what disagrees.
    /// </summary>
    public static IReadOnlyList<ParityCheck> CheckManifest(string path)
    {
        var m = PyJson.ParseFile(path)!.AsObject();
        var cls = (string?)m["class"] ?? "";
        var name = Path.GetFileNameWithoutExtension(path);
        var config = m["config"]!.AsObject();
        // keys, shapes and counts need no storage: the model is built on the meta device (SDXL's U-Net in megabytes)
        nn.Module model = Runtime.Lab.OnMeta<nn.Module>(() => cls switch
        {
            "UNet2DConditionModel" => new UNet2DConditionModel(UNetConfig.FromJson(config, path)),
            "AutoencoderKL" => new Autoencoders.AutoencoderKL(Autoencoders.AutoencoderKLConfig.FromJson(config, path)),
            "CLIPTextModel" => new Conditioning.ClipTextModel(Conditioning.ClipTextConfig.FromJson(config, path)),
            _ => throw new ParityFormatException($"{path}: manifests of {cls} are not implemented yet"),
        });
        try
        {
            var expected = m["state_dict"]!.AsArray().Select(e => ((string)e!["key"]!, e["shape"]!.AsArray().Select(s => (long)s!).ToArray())).ToList();
            var ours = model.state_dict().Select(kv => (kv.Key, kv.Value.shape)).ToList();
            var expectedKeys = expected.Select(e => e.Item1).ToHashSet();
            var ourKeys = ours.Select(o => o.Key).ToHashSet();
            int keyDiff = expectedKeys.Except(ourKeys).Count() + ourKeys.Except(expectedKeys).Count();
            int orderDiff = expected.Zip(ours).Count(p => p.First.Item1 != p.Second.Key) + Math.Abs(expected.Count - ours.Count);
            var shapes = ours.ToDictionary(o => o.Key, o => o.shape);
            int shapeDiff = expected.Count(e => shapes.TryGetValue(e.Item1, out var s) && !s.SequenceEqual(e.Item2));
            long total = (long)m["total_parameters"]!, ourTotal = model.parameters().Sum(p => p.numel());
            return
            [
                new ParityCheck($"{name}/keys", keyDiff, 0, $"{ours.Count} keys, manifest {expected.Count}"),
                new ParityCheck($"{name}/key_order", orderDiff, 0),
                new ParityCheck($"{name}/shapes", shapeDiff, 0),
                new ParityCheck($"{name}/total_parameters", Math.Abs(ourTotal - total), 0, $"{ourTotal:N0} vs {total:N0}"),
            ];
        }
        finally { model.Dispose(); }
    }
}
