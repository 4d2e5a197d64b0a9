using LdmLab.Adapters;
using LdmLab.Interop;
using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.ParityChecks;

/// <summary>
/// A LoRA file on a base U-Net against diffusers' outputs (fixtures <c>lora-tiny-unet/</c>,
/// <c>lora-kohya-tiny-unet/</c>: info.json names the base model folder and the file). Checks: every key matched; the
/// base output; the unmerged output at scale 1; fused at each scale, its output and the fused weights recorded;
/// unfused, the base output again.
/// </summary>
public static class LoraParity
{
    public const double Tolerance = 1e-4;

    public static IReadOnlyList<ParityCheck> Check(string dir)
    {
        using var scope = NewDisposeScope();
        var info = PyJson.ParseFile(Path.Combine(dir, "info.json"))!;
        var name = Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar));
        var baseDir = Path.GetFullPath(Path.Combine(dir, (string?)info["base_model"]
            ?? throw new ParityFormatException($"{dir}/info.json: no base_model")));
        var file = Path.Combine(dir, (string?)info["lora_file"]
            ?? throw new ParityFormatException($"{dir}/info.json: no lora_file"));
        var unet = UNet2DConditionModel.FromPretrained(baseDir);
        unet.eval();
        var r = SafeTensors.Load(Path.Combine(dir, "tensors.safetensors"));
        var checks = new List<ParityCheck>();
        var load = LoraFiles.Read(file, unet);
        checks.Add(new ParityCheck($"{name}/keys matched ({load.Dialect}, {load.Adapter.Layers.Count} layers)",
            load.Unmatched.Count, 0,
            load.Unmatched.Count == 0 ? null : "unmatched: " + string.Join(", ", load.Unmatched)));
        using var _ = no_grad();
        Tensor Run() => unet.Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"]);
        Parity.Compare(checks, $"{name}/sample_base", Run(), r, "sample_base", Tolerance);
        using (load.Adapter.Attach(unet))
            Parity.Compare(checks, $"{name}/sample_lora_scale_1", Run(), r, "sample_lora_scale_1", Tolerance);
        var weights = unet.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var scale in info["lora_scales"]!.AsArray().Select(s => (double)s!))
        {
            string tag = (scale == Math.Floor(scale) ? ((long)scale).ToString()                 // 1 → "1", 0.5 → "0_5"
                : scale.ToString(System.Globalization.CultureInfo.InvariantCulture)).Replace('.', '_');
            load.Adapter.Fuse(unet, scale: scale);
            Parity.Compare(checks, $"{name}/sample_lora_scale_{tag}_fused", Run(), r, $"sample_lora_scale_{tag}_fused",
                Tolerance);
            foreach (var key in r.Keys.Where(k => k.StartsWith($"fused_weight_scale_{tag}.")))
                Parity.Compare(checks, $"{name}/{key}", weights[key[$"fused_weight_scale_{tag}.".Length..]], r, key,
                    Tolerance);
            load.Adapter.Unfuse(unet);
        }
        Parity.Compare(checks, $"{name}/sample_base after unfuse", Run(), r, "sample_base", Tolerance);
        return checks;
    }
}
