using LdmLab.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Interop;

/// <summary>Copies weights between modules and safetensors files by diffusers key name, strictly.</summary>
public static class StateDicts
{
    /// <summary>
    /// Loads every tensor of the file into the module (converted to the module's dtype); missing, unexpected or
    /// mis-shaped keys are an error listing them. <paramref name="optional"/> names file keys that may be present
    /// and are ignored (e.g. the position_ids buffer older CLIP checkpoints carry).
    /// </summary>
    public static void Load(nn.Module module, string path, IReadOnlyCollection<string>? optional = null)
    {
        var tensors = SafeTensors.Load(path);
        try { CopyInto(module, tensors, path, optional); }
        finally
        {
            // what was read is freed on every path, an error included
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    /// <summary>
    /// Copies <paramref name="tensors"/> into the module's state dict (converted to its dtypes), strictly: missing,
    /// unexpected and mis-shaped keys are one <see cref="DatasetException"/> naming <paramref name="source"/> and listing
    /// them, with <paramref name="keyPrefix"/> before each name (the tensors' own prefix in the file, e.g. "model.").
    /// </summary>
    public static void CopyInto(nn.Module module, IReadOnlyDictionary<string, Tensor> tensors, string source,
        IReadOnlyCollection<string>? optional = null, string keyPrefix = "")
    {
        var sd = module.state_dict();
        var missing = sd.Keys.Where(k => !tensors.ContainsKey(k)).Select(k => keyPrefix + k).ToList();
        var unexpected = tensors.Keys.Where(k => !sd.ContainsKey(k) && optional?.Contains(k) != true).Select(k => keyPrefix + k).ToList();
        var misShaped = sd.Keys.Where(k => tensors.ContainsKey(k) && !sd[k].shape.SequenceEqual(tensors[k].shape))
            .Select(k => $"{keyPrefix}{k}: file [{string.Join(",", tensors[k].shape)}], model [{string.Join(",", sd[k].shape)}]")
            .ToList();
        if (missing.Count + unexpected.Count + misShaped.Count > 0)
            throw new DatasetException(source, "weights do not fit the model:" + KeyReport.Lines(missing, unexpected, misShaped));
        using var _ = no_grad();
        foreach (var (k, t) in sd) t.copy_(tensors[k].to_type(t.dtype));
    }

    public static void Save(nn.Module module, string path) =>
        SafeTensors.Save(path, module.state_dict().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)), new Dictionary<string, string> { ["format"] = "pt" });
}

/// <summary>The "missing / unexpected / wrong shape" listing every loader prints (first ten of each).</summary>
public static class KeyReport
{
    public static string Lines(IReadOnlyCollection<string> missing, IReadOnlyCollection<string> unexpected,
        IReadOnlyCollection<string> misShaped) =>
        (missing.Count > 0 ? $"\n  missing ({missing.Count}): {string.Join(", ", missing.Take(10))}" : "") +
        (unexpected.Count > 0 ? $"\n  unexpected ({unexpected.Count}): {string.Join(", ", unexpected.Take(10))}" : "") +
        (misShaped.Count > 0 ? $"\n  wrong shape ({misShaped.Count}): {string.Join("; ", misShaped.Take(10))}" : "");
}
