using LdmLab.Data;
using LdmLab.Interop;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Training;

/// <summary>
/// A training checkpoint: one safetensors file with the tensors of a run (weights, optimizer moments, EMA, logs) and
/// its format, step and total steps in the metadata.
/// Saving is atomic (temp file beside it, flushed to disk, then renamed over), so a reader — or a run killed while
/// saving — sees either the previous checkpoint or the new one, never half of one.
/// Loading is checked: the format, a step within the run, and every tensor a model needs with its shape; each error
/// is a <see cref="DatasetException"/> that names the file.
/// </summary>
public sealed class Checkpoint : IDisposable
{
    public string Path { get; }
    public string Format { get; }
    public int Step { get; }
    public IReadOnlyDictionary<string, Tensor> Tensors { get; }

    Checkpoint(string path, string format, int step, Dictionary<string, Tensor> tensors)
    {
        Path = path; Format = format; Step = step; Tensors = tensors;
    }

    public static void Save(string path, string format, int step, int totalSteps, IEnumerable<KeyValuePair<string, Tensor>> tensors) =>
        SafeTensors.Save(path, tensors, new Dictionary<string, string>
        {
            ["format"] = format, ["step"] = step.ToString(), ["total_steps"] = totalSteps.ToString(),
        });

    /// <summary>The step a checkpoint file is at, from its header alone (null when the file is missing or unreadable).</summary>
    public static int? StepOf(string path)
    {
        if (!File.Exists(path)) return null;
        try { return int.TryParse(SafeTensors.ReadHeader(path).metadata.GetValueOrDefault("step"), out var s) ? s : null; }
        catch (DatasetException) { return null; }
    }

    /// <param name="maxStep">the run's total steps: a checkpoint beyond it belongs to another run.</param>
    public static Checkpoint Load(string path, string format, int maxStep)
    {
        var (_, meta) = SafeTensors.ReadHeader(path);
        if (meta.GetValueOrDefault("format") != format)
            throw new DatasetException(path, $"not an LdmLab checkpoint of format '{format}' " +
                                             $"(its format is '{meta.GetValueOrDefault("format") ?? "none"}')");
        if (!int.TryParse(meta.GetValueOrDefault("step"), out var step) || step < 0)
            throw new DatasetException(path, $"checkpoint step '{meta.GetValueOrDefault("step")}' is not a step count");
        if (step > maxStep)
            throw new DatasetException(path, $"checkpoint is at step {step}, beyond this run's {maxStep} steps " +
                                             "(another run's checkpoint: raise Steps or use another checkpoint folder)");
        return new Checkpoint(path, format, step, SafeTensors.Load(path));
    }

    /// <summary>A tensor the run needs (optionally of a given shape).</summary>
    public Tensor Require(string key, long[]? shape = null)
    {
        if (!Tensors.TryGetValue(key, out var t)) throw new DatasetException(Path, $"checkpoint has no tensor '{key}'");
        if (shape is not null && !t.shape.SequenceEqual(shape))
            throw new DatasetException(Path, $"'{key}' is [{string.Join(",", t.shape)}], expected [{string.Join(",", shape)}]");
        return t;
    }

    /// <summary>The tensors under a prefix, with the prefix stripped.</summary>
    public Dictionary<string, Tensor> Section(string prefix) =>
        Tensors.Where(kv => kv.Key.StartsWith(prefix, StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key[prefix.Length..], kv => kv.Value);

    /// <summary>
    /// Copies "prefix + name" into every entry of the module's state dict; missing, mis-shaped and unexpected keys under
    /// the prefix are one error that lists them by name.
    /// </summary>
    public void LoadInto(nn.Module module, string prefix) => StateDicts.CopyInto(module, Section(prefix), Path, keyPrefix: prefix);

    public void Dispose()
    {
        foreach (var t in Tensors.Values) t.Dispose();
    }
}
