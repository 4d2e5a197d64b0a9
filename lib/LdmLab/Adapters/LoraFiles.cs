using LdmLab.Interop;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Adapters;

/// <summary>What <see cref="LoraFiles.Read"/> made of a file: the adapter, its dialect, and the keys that name no
/// module of the models given (a LoRA for another architecture, or for a text encoder not passed in).</summary>
public sealed record LoraLoad(LoraAdapter Adapter, string Dialect, IReadOnlyList<string> Unmatched);

/// <summary>
/// LoRA files as the ecosystem writes them (safetensors only; pickles are refused):
/// <list type="bullet">
/// <item>diffusers: <c>unet.&lt;module path&gt;.lora.down.weight</c> / <c>.lora.up.weight</c> (also without the
/// <c>unet.</c> prefix, <c>text_encoder.</c> keys, the attention-processor spelling
/// <c>…attn1.processor.to_q_lora.down.weight</c> with <c>to_out_lora</c> = <c>to_out.0</c>, and
/// <c>.lora_linear_layer.</c>); no alpha.</item>
/// <item>PEFT: <c>….lora_A.weight</c> (down) and <c>….lora_B.weight</c> (up).</item>
/// <item>kohya-ss / A1111: <c>lora_unet_&lt;path with "." → "_"&gt;.lora_down.weight</c>, <c>.lora_up.weight</c> and a
/// 0-dim <c>.alpha</c>; <c>lora_te_</c> (or <c>lora_te1_</c>) for the text encoder. Module names hold "_" too, so
/// names are looked up in a table of the model's own paths with "." → "_" (what A1111 does).</item>
/// </list>
/// Without a stored alpha the factor is 1 (α = r), as in diffusers, kohya-ss and A1111.
/// </summary>
public static class LoraFiles
{
    /// <summary>diffusers' file name for LoRA weights.</summary>
    public const string DiffusersFileName = "pytorch_lora_weights.safetensors";

    static readonly (string suffix, string part)[] Suffixes =
    [
        (".lora.down.weight", "down"), (".lora.up.weight", "up"),
        (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
        (".lora_A.weight", "down"), (".lora_B.weight", "up"),
        (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"),
    ];

    /// <summary>
    /// Reads a LoRA file against the models it adapts (the text encoder may be null: its keys are then reported as
    /// unmatched). Every half present must have its partner and fit its target (<see cref="AdapterFormatException"/>
    /// naming the key otherwise); keys that name no module are returned in <see cref="LoraLoad.Unmatched"/>.
    /// </summary>
    public static LoraLoad Read(string path, nn.Module unet, nn.Module? textEncoder = null)
    {
        RefusePickle(path, "LoRA");
        var tensors = SafeTensors.Load(path);            // a broken file is a DatasetException naming it
        try { return Parse(path, tensors, unet, textEncoder); }
        finally { foreach (var t in tensors.Values) t.Dispose(); }
    }

    /// <summary>Adapter files are read as .safetensors only: a missing file is a FileNotFoundException, any other
    /// extension an <see cref="AdapterFormatException"/> (a .ckpt/.pt/.bin is a pickle, never opened).</summary>
    internal static void RefusePickle(string path, string what)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: {what} file not found", path);
        if (!path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
            throw new AdapterFormatException(path, Path.GetFileName(path),
                $"only .safetensors {what} files are read (a .ckpt/.pt/.bin is a pickle, which LdmLab never loads): " +
                "convert it to safetensors first");
    }

    static LoraLoad Parse(string file, Dictionary<string, Tensor> tensors, nn.Module unet, nn.Module? textEncoder)
    {
        var models = new Dictionary<string, Dictionary<string, nn.Module>>
        {
            ["unet"] = Modules(unet),
        };
        if (textEncoder is not null) models["text_encoder"] = Modules(textEncoder);
        var kohyaTables = models.ToDictionary(kv => kv.Key,
            kv => kv.Value.Keys.GroupBy(p => p.Replace('.', '_')).ToDictionary(g => g.Key, g => g.First()));
        bool kohya = tensors.Keys.Any(k => k.StartsWith("lora_unet_") || k.StartsWith("lora_te"));
        var groups = new Dictionary<(string component, string path), Dictionary<string, (string key, Tensor t)>>();
        var unmatched = new List<string>();
        foreach (var (key, t) in tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal))
        {
            var suffix = Suffixes.FirstOrDefault(s => key.EndsWith(s.suffix, StringComparison.Ordinal));
            if (suffix.suffix is null) { unmatched.Add(key); continue; }
            var stem = key[..^suffix.suffix.Length];
            var (component, name) = SplitComponent(stem);
            if (component is null || !models.ContainsKey(component)) { unmatched.Add(key); continue; }
            string? modulePath = kohya && stem.StartsWith("lora_")
                ? kohyaTables[component].GetValueOrDefault(name)
                : Processor(name) is var path && models[component].ContainsKey(path) ? path : null;
            if (modulePath is null) { unmatched.Add(key); continue; }
            var parts = groups.TryGetValue((component, modulePath), out var g) ? g
                : groups[(component, modulePath)] = new Dictionary<string, (string, Tensor)>();
            if (!parts.TryAdd(suffix.part, (key, t)))
                throw new AdapterFormatException(file, key,
                    $"a second '{suffix.part}' tensor for {component}.{modulePath}");
        }
        var layers = new List<KeyValuePair<string, LoraLayer>>();
        foreach (var ((component, modulePath), parts) in groups)
        {
            string any = parts.Values.First().key;
            if (!parts.TryGetValue("down", out var down))
                throw new AdapterFormatException(file, any, "the up (B) half has no down (A) half beside it");
            if (!parts.TryGetValue("up", out var up))
                throw new AdapterFormatException(file, any, "the down (A) half has no up (B) half beside it");
            double? alpha = null;
            if (parts.TryGetValue("alpha", out var a))
            {
                if (a.t.numel() != 1)
                    throw new AdapterFormatException(file, a.key,
                        $"alpha must hold one value, not [{string.Join(", ", a.t.shape)}]");
                alpha = a.t.to(ScalarType.Float64).item<double>();
            }
            if (down.t.dim() is not (2 or 4) || up.t.dim() != down.t.dim() || up.t.shape[1] != down.t.shape[0])
                throw new AdapterFormatException(file, down.key,
                    $"down [{string.Join(", ", down.t.shape)}] and up [{string.Join(", ", up.t.shape)}] are not a " +
                    "rank-r pair (down [r, in(, kh, kw)], up [out, r(, 1, 1)])");
            var layer = new LoraLayer(down.t, up.t, alpha);
            layer.Validate(file, down.key, models[component][modulePath]);
            layers.Add(new($"{component}.{modulePath}", layer));
        }
        if (layers.Count == 0)
            throw new AdapterFormatException(file, "(all keys)",
                "no LoRA pair matches a module of the model(s) given; unmatched: " +
                $"{string.Join(", ", unmatched.Take(5))}" +
                (unmatched.Count > 5 ? $" and {unmatched.Count - 5} more" : ""));
        return new LoraLoad(new LoraAdapter(layers), kohya ? "kohya" : "diffusers", unmatched);
    }

    static Dictionary<string, nn.Module> Modules(nn.Module model) =>
        model.named_modules().Where(m => m.module is Linear or Conv2d).ToDictionary(m => m.name, m => m.module);

    /// <summary>(component, name inside it) of a key's stem, in either dialect; component null when unknown.</summary>
    static (string? component, string name) SplitComponent(string stem)
    {
        foreach (var (prefix, component) in new[]
                 {
                     ("lora_unet_", "unet"), ("lora_te1_", "text_encoder"), ("lora_te_", "text_encoder"),
                     ("unet.", "unet"), ("text_encoder.", "text_encoder"),
                 })
            if (stem.StartsWith(prefix, StringComparison.Ordinal)) return (component, stem[prefix.Length..]);
        if (stem.StartsWith("lora_te2_") || stem.StartsWith("text_encoder_2.")) return (null, stem);
        return ("unet", stem);                                                 // old diffusers files: no prefix
    }

    /// <summary>diffusers' attention-processor spelling → the module path: <c>attn1.processor.to_q_lora</c> →
    /// <c>attn1.to_q</c>, <c>to_out_lora</c> → <c>to_out.0</c>.</summary>
    static string Processor(string name)
    {
        int i = name.IndexOf(".processor.", StringComparison.Ordinal);
        if (i < 0) return name;
        var proc = name[(i + ".processor.".Length)..];
        var projection = proc switch
        {
            "to_q_lora" => "to_q",
            "to_k_lora" => "to_k",
            "to_v_lora" => "to_v",
            "to_out_lora" => "to_out.0",
            _ => proc,
        };
        return name[..i] + "." + projection;
    }

    /// <summary>
    /// Writes diffusers' dialect (<c>component.path.lora.down.weight</c> / <c>.lora.up.weight</c>, metadata
    /// <c>{"format": "pt"}</c>). The dialect has no alpha, so α/r is folded into B — the file computes the same update.
    /// Atomic (temp file, then rename).
    /// </summary>
    public static void SaveDiffusers(LoraAdapter adapter, string path)
    {
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (key, layer) in adapter.Layers)
        {
            tensors[$"{key}.lora.down.weight"] = layer.Down.detach().cpu();
            tensors[$"{key}.lora.up.weight"] = (layer.Up.detach() * layer.Factor).cpu();
        }
        SafeTensors.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }

    /// <summary>Writes kohya-ss/A1111's dialect (<c>lora_unet_…</c>, <c>lora_te_…</c>, <c>.lora_down.weight</c>,
    /// <c>.lora_up.weight</c>, a 0-dim float32 <c>.alpha</c>), atomically.</summary>
    public static void SaveKohya(LoraAdapter adapter, string path)
    {
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (key, layer) in adapter.Layers)
        {
            int dot = key.IndexOf('.');
            string prefix = key[..dot] switch
            {
                "unet" => "lora_unet_",
                "text_encoder" => "lora_te_",
                var c => throw new AdapterFormatException(path, key,
                    $"kohya files know unet and text_encoder, not {c}"),
            };
            string name = prefix + key[(dot + 1)..].Replace('.', '_');
            tensors[$"{name}.lora_down.weight"] = layer.Down.detach().cpu();
            tensors[$"{name}.lora_up.weight"] = layer.Up.detach().cpu();
            tensors[$"{name}.alpha"] = tensor((float)layer.Alpha);
        }
        SafeTensors.Save(path, tensors, new Dictionary<string, string>
        {
            ["ss_network_module"] = "networks.lora",
            ["ss_network_dim"] = adapter.Layers.Values.Max(l => l.Rank).ToString(),
            ["ss_network_alpha"] =
                adapter.Layers.Values.First().Alpha.ToString(System.Globalization.CultureInfo.InvariantCulture),
        });
    }
}
