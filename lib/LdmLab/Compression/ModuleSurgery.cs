using System.Reflection;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Compression;

/// <summary>
/// A module path that cannot be replaced or found: names the path (state-dict prefix, e.g.
/// <c>down_blocks.0.resnets.0.conv1</c>) and what was expected.
/// </summary>
public sealed class ModuleReplacementException(string path, string message) : Exception($"{path}: {message}")
{
    public string Path { get; } = path;
}

/// <summary>
/// Swaps one module of a tree for another by its path, as PyTorch code does with
/// <c>setattr(parent, name, new_module)</c>. A TorchSharp module is reached two ways, and both are updated:
/// <list type="bullet">
/// <item>its parent's C# field (what <c>forward</c> calls), written by reflection as TorchSharp's own
/// <c>Module.to</c> writes parameter fields; a <c>ModuleList</c> element through its indexer;</item>
/// <item>its parent's registration (what <c>named_modules</c>, <c>state_dict</c>, <c>to</c> and
/// <c>parameters</c> walk), re-registered at the same position so the state-dict order is kept.</item>
/// </list>
/// The field must be declared with a type that can hold the replacement: a field typed <c>Linear</c> cannot hold
/// an <see cref="Int8Linear"/> (TorchSharp's layers are sealed), one typed <c>nn.Module&lt;Tensor, Tensor&gt;</c>
/// can. The U-Net declares its Linear and Conv2d fields that way for this reason.
/// </summary>
public static class ModuleSurgery
{
    /// <summary>The module at <paramref name="path"/> ("" is <paramref name="root"/> itself).</summary>
    public static nn.Module Find(nn.Module root, string path)
    {
        var module = root;
        if (path.Length == 0) return module;
        foreach (var name in path.Split('.'))
        {
            var child = module.named_children().FirstOrDefault(c => c.name == name).module;
            module = child ?? throw new ModuleReplacementException(path,
                $"no module '{name}' under '{module.GetName()}'");
        }
        return module;
    }

    /// <summary>
    /// Puts <paramref name="replacement"/> where <paramref name="path"/> is and returns the module it replaced
    /// (not disposed: the caller decides). Throws <see cref="ModuleReplacementException"/> when the path names
    /// nothing, or when the parent's field cannot hold the replacement's type.
    /// </summary>
    public static nn.Module Replace(nn.Module root, string path, nn.Module replacement)
    {
        int dot = path.LastIndexOf('.');
        if (path.Length == 0) throw new ModuleReplacementException(path, "the root itself cannot be replaced");
        var parent = Find(root, dot < 0 ? "" : path[..dot]);
        string name = path[(dot + 1)..];
        var old = parent.named_children().FirstOrDefault(c => c.name == name).module
                  ?? throw new ModuleReplacementException(path, $"no module '{name}' under '{parent.GetName()}'");

        SetField(parent, name, old, replacement, path);
        Reregister(parent, name, replacement);
        return old;
    }

    /// <summary>Writes the C# field (or list element) of <paramref name="parent"/> that holds <paramref name="old"/>.
    /// </summary>
    static void SetField(nn.Module parent, string name, nn.Module old, nn.Module replacement, string path)
    {
        // ModuleList<T>: the element at index `name`, through the typed indexer.
        var listType = parent.GetType();
        while (listType is not null &&
               !(listType.IsGenericType && listType.GetGenericTypeDefinition() == typeof(ModuleList<>)))
            listType = listType.BaseType;
        if (listType is not null)
        {
            var element = listType.GetGenericArguments()[0];
            if (!element.IsInstanceOfType(replacement))
                throw new ModuleReplacementException(path,
                    $"the ModuleList holds {element.Name}; a {replacement.GetType().Name} does not fit");
            listType.GetProperty("Item")!.SetValue(parent, replacement, [int.Parse(name)]);
            return;
        }

        // Any other module: the instance field that holds `old` (by reference; its name is the registered one).
        FieldInfo? field = null;
        for (var t = parent.GetType(); t is not null && field is null; t = t.BaseType)
            field = t.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic |
                                BindingFlags.DeclaredOnly)
                .FirstOrDefault(f => ReferenceEquals(f.GetValue(parent), old));
        if (field is null)
            throw new ModuleReplacementException(path,
                $"{parent.GetType().Name} keeps '{name}' in no field this can write (a Sequential or a dictionary)");
        if (!field.FieldType.IsInstanceOfType(replacement))
            throw new ModuleReplacementException(path,
                $"{parent.GetType().Name}.{field.Name} is declared {field.FieldType.Name}: it cannot hold a " +
                $"{replacement.GetType().Name} (declare it nn.Module<Tensor, Tensor> to make the layer replaceable)");
        field.SetValue(parent, replacement);
    }

    /// <summary>
    /// register_module refuses a name already taken and appends at the end, so the children from
    /// <paramref name="name"/> on are unregistered and registered again in their order, the new one in its place.
    /// </summary>
    static void Reregister(nn.Module parent, string name, nn.Module replacement)
    {
        var children = parent.named_children().ToList();
        int at = children.FindIndex(c => c.name == name);
        foreach (var (n, _) in children.Skip(at)) parent.register_module(n, null!);   // null: unregister
        parent.register_module(name, replacement);
        foreach (var (n, m) in children.Skip(at + 1)) parent.register_module(n, m);
    }
}
