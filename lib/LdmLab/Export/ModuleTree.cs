using System.Collections;
using System.Reflection;
using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;

namespace LdmLab.Export;

/// <summary>
/// A module the ONNX exporter cannot write: its state-dict path in the exported model ("" for the model itself),
/// its type, and why (a type the exporter does not know, a setting it does not export, an attached hook).
/// </summary>
public sealed class OnnxExportException(string layerPath, string layerType, string message)
    : Exception($"{(layerPath.Length == 0 ? "(the model)" : layerPath)} ({layerType}): {message}")
{
    public string LayerPath { get; } = layerPath;
    public string LayerType { get; } = layerType;
}

/// <summary>
/// The exporters' view of a module tree: children by their registered (diffusers) names, checked for their type,
/// and a first pass over every module that refuses what the emitters would silently get wrong — a module type they
/// do not know (its computation would be missing from the graph) or a forward hook (an attached LoRA adapter adds
/// its branch through one; the graph would hold the base weights alone).
/// </summary>
internal static class ModuleTree
{
    /// <summary>Every module type the emitters write, and the containers and no-ops around them.</summary>
    static readonly HashSet<Type> Known =
    [
        typeof(UNet2DConditionModel), typeof(TimestepEmbedding), typeof(DownBlock), typeof(MidBlock), typeof(UpBlock),
        typeof(ResnetBlock2D), typeof(Downsample2D), typeof(Upsample2D), typeof(Transformer2DModel),
        typeof(BasicTransformerBlock), typeof(Attention), typeof(FeedForward), typeof(GEGLU),
        typeof(AutoencoderKL), typeof(VaeEncoder), typeof(VaeDecoder), typeof(VaeMidBlock),
        typeof(DownEncoderBlock2D), typeof(UpDecoderBlock2D), typeof(SpatialSelfAttention),
        typeof(ClipTextModel), typeof(ClipTextTransformer), typeof(ClipTextEmbeddings), typeof(ClipEncoder),
        typeof(ClipEncoderLayer), typeof(ClipAttention), typeof(ClipMlp),
        typeof(Conv2d), typeof(Linear), typeof(GroupNorm), typeof(LayerNorm), typeof(Embedding), typeof(Dropout),
    ];

    static readonly string[] HookFields = ["pre_hooks", "post_hooks", "module_pre_hooks", "module_post_hooks"];

    /// <summary>Throws <see cref="OnnxExportException"/> for the first module under <paramref name="root"/> whose
    /// type is unknown or that carries a forward hook.</summary>
    public static void CheckAll(torch.nn.Module root, string prefix = "")
    {
        // TorchSharp's named_modules() leaves the root out
        foreach (var (name, module) in root.named_modules().Prepend(("", root)))
        {
            var path = name.Length == 0 ? prefix : Join(prefix, name);
            var type = module.GetType();
            bool known = Known.Contains(type)
                         || type.IsGenericType && type.GetGenericTypeDefinition() == typeof(ModuleList<>);
            if (!known)
                throw new OnnxExportException(path, TypeName(module),
                    "the ONNX exporter does not know this module type, so its computation would be missing " +
                    "from the graph");
            if (HasHooks(module))
                throw new OnnxExportException(path, TypeName(module),
                    "a forward hook is attached (an attached LoRA adapter adds its branch through one), which the " +
                    "graph would leave out: fuse the adapter (LoraAdapter.Fuse) or detach it before exporting");
        }
    }

    /// <summary>TorchSharp keeps hooks in protected dictionaries of HookableModule; any entry counts.</summary>
    static bool HasHooks(torch.nn.Module module)
    {
        for (var t = module.GetType(); t is not null; t = t.BaseType)
            foreach (var field in HookFields)
                if (t.GetField(field, BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.DeclaredOnly)
                        ?.GetValue(module) is ICollection { Count: > 0 })
                    return true;
        return false;
    }

    /// <summary>The child <paramref name="name"/> of <paramref name="parent"/> (at <paramref name="path"/>), which
    /// must be a <typeparamref name="T"/>.</summary>
    public static T Child<T>(torch.nn.Module parent, string path, string name) where T : torch.nn.Module =>
        TryChild<T>(parent, path, name)
        ?? throw new OnnxExportException(Join(path, name), typeof(T).Name,
            $"expected a child '{name}' of {TypeName(parent)}, found none");

    /// <summary>The child, or null when the module has none of that name (an optional layer left out).</summary>
    public static T? TryChild<T>(torch.nn.Module parent, string path, string name) where T : torch.nn.Module
    {
        foreach (var (n, m) in parent.named_children())
        {
            if (n != name) continue;
            return m as T ?? throw new OnnxExportException(Join(path, name), TypeName(m),
                $"expected a {typeof(T).Name} here");
        }
        return null;
    }

    /// <summary>The items of a ModuleList child, in order, each checked for its type; empty when absent.</summary>
    public static IReadOnlyList<T> Items<T>(torch.nn.Module parent, string path, string name)
        where T : torch.nn.Module
    {
        var list = TryChild<torch.nn.Module>(parent, path, name);
        if (list is null) return [];
        return list.named_children()
            .Select(c => c.module as T ?? throw new OnnxExportException(Join(Join(path, name), c.name),
                TypeName(c.module), $"expected a {typeof(T).Name} here"))
            .ToList();
    }

    public static string Join(string path, string name) => path.Length == 0 ? name : $"{path}.{name}";

    public static string TypeName(torch.nn.Module m)
    {
        var t = m.GetType();
        return t.IsGenericType ? t.Name[..t.Name.IndexOf('`')] : t.Name;
    }
}
