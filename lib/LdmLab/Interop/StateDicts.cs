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
        try
        {
            var sd = module.state_dict();
            var missing = sd.Keys.Where(k => !tensors.ContainsKey(k)).ToList();
            var unexpected = tensors.Keys.Where(k => !sd.ContainsKey(k) && optional?.Contains(k) != true).ToList();
            var misShaped = sd.Keys.Where(k => tensors.ContainsKey(k) && !sd[k].shape.SequenceEqual(tensors[k].shape))
                .Select(k => $"{k}: file [{string.Join(",", tensors[k].shape)}], model [{string.Join(",", sd[k].shape)}]").ToList();
            if (missing.Count + unexpected.Count + misShaped.Count > 0)
                throw new DatasetException(path, "weights do not fit the model:" + Training.KeyReport.Lines(missing, unexpected, misShaped));
            using var _ = no_grad();
            foreach (var (k, t) in sd) t.copy_(tensors[k].to_type(t.dtype));
        }
        finally
        {
            // what was read is freed on every path, an error included
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    public static void Save(nn.Module module, string path) =>
        SafeTensors.Save(path, module.state_dict().Select(kv => new KeyValuePair<string, Tensor>(kv.Key, kv.Value)), new Dictionary<string, string> { ["format"] = "pt" });
}
