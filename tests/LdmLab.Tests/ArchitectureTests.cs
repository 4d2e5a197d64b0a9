using System.Reflection;
using System.Reflection.Emit;
using System.Runtime.CompilerServices;
using System.Text;

// Block-scoped namespaces: the analyser's self-check needs fixture namespaces declared in this file.
namespace LdmLab.Tests
{
    public class ArchitectureTests
    {
        static readonly Assembly Library = typeof(LdmLab.Runtime.Lab).Assembly;

        [Fact]
        public void Library_namespaces_form_no_cycle()
        {
            var graph = NamespaceGraph.Build(Library, 2, out var examples);
            Assert.Contains("LdmLab.Runtime", graph.Keys); // the analysis saw the library at all
            var cycles = NamespaceGraph.Cycles(graph);
            Assert.True(cycles.Count == 0,
                "LdmLab's namespaces depend on each other in a cycle; move a type or invert a dependency:\n"
                + string.Join("\n", cycles.Select(c => NamespaceGraph.Describe(c, graph, examples))));
        }

        [Fact]
        public void The_graph_sees_references_made_only_inside_method_bodies()
        {
            const string Fx = "LdmLab.Tests.ArchFixture.";
            var all = NamespaceGraph.Build(typeof(ArchitectureTests).Assembly, 4, out var examples);
            // only the fixture namespaces below, and only their edges to each other
            var graph = all
                .Where(kv => kv.Key.StartsWith(Fx, StringComparison.Ordinal))
                .ToDictionary(
                    kv => kv.Key,
                    kv => kv.Value.Where(to => to.StartsWith(Fx, StringComparison.Ordinal)).ToHashSet());

            Assert.Contains(Fx + "B", graph[Fx + "A"]); // a call in a method body
            Assert.Contains(Fx + "C", graph[Fx + "A"]); // inside a lambda (a compiler-generated nested class)
            Assert.Contains(Fx + "G", graph[Fx + "A"]); // only as a generic argument (List<G.Item>)
            Assert.DoesNotContain(Fx + "A", graph[Fx + "B"]);
            Assert.Contains("UsesBOnlyInBody", examples[(Fx + "A", Fx + "B")]);

            // D and E call each other only inside method bodies
            var cycle = Assert.Single(NamespaceGraph.Cycles(graph));
            Assert.Equal(new[] { Fx + "D", Fx + "E" }, cycle);
            var text = NamespaceGraph.Describe(cycle, graph, examples);
            Assert.Contains($"{Fx}D → {Fx}E: {Fx}D.Ping uses {Fx}E.Pong", text);
            Assert.Contains($"{Fx}E → {Fx}D: {Fx}E.Pong uses {Fx}D.Ping", text);
        }

        [Fact]
        public void The_library_does_not_reference_the_labs_or_the_cli()
        {
            var ours = Library.GetReferencedAssemblies()
                .Select(a => a.Name ?? "")
                .Where(n => n.StartsWith("LdmLab.", StringComparison.Ordinal))
                .ToList();
            Assert.Empty(ours);
        }
    }

    /// <summary>
    /// Which areas (namespaces cut to their first <c>depth</c> segments) of an assembly use which others: through
    /// signatures, attributes, and the IL of method bodies (calls, fields, types, tokens, locals, catch clauses).
    /// </summary>
    public static class NamespaceGraph
    {
        const BindingFlags Declared =
            BindingFlags.DeclaredOnly | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance
            | BindingFlags.Static;

        // every IL opcode by its value: one byte, or 0xFE00 | second byte for the two-byte ones
        static readonly Dictionary<int, OpCode> OpCodesByValue = typeof(OpCodes)
            .GetFields(BindingFlags.Public | BindingFlags.Static)
            .Where(f => f.FieldType == typeof(OpCode))
            .Select(f => (OpCode)f.GetValue(null)!)
            .ToDictionary(op => (int)(ushort)op.Value);

        public static Dictionary<string, HashSet<string>> Build(Assembly assembly, int depth = 2) =>
            Build(assembly, depth, out _);

        /// <summary>As above; <paramref name="examples"/> holds the first use found for each edge.</summary>
        public static Dictionary<string, HashSet<string>> Build(
            Assembly assembly, int depth, out Dictionary<(string From, string To), string> examples)
        {
            var scan = new Scan(assembly, depth);
            foreach (var type in LoadableTypes(assembly))
                scan.Add(type);
            examples = scan.Examples;
            return scan.Graph;
        }

        /// <summary>The strongly connected components with more than one area (Tarjan), each sorted.</summary>
        public static List<List<string>> Cycles(Dictionary<string, HashSet<string>> graph)
        {
            var index = new Dictionary<string, int>();
            var low = new Dictionary<string, int>();
            var stack = new Stack<string>();
            var onStack = new HashSet<string>();
            var cycles = new List<List<string>>();

            void Visit(string v)
            {
                int i = index.Count;
                index[v] = i;
                low[v] = i;
                stack.Push(v);
                onStack.Add(v);
                var next = graph.TryGetValue(v, out var targets) ? targets : [];
                foreach (var w in next.Order(StringComparer.Ordinal))
                {
                    if (!index.ContainsKey(w))
                    {
                        Visit(w);
                        low[v] = Math.Min(low[v], low[w]);
                    }
                    else if (onStack.Contains(w))
                        low[v] = Math.Min(low[v], index[w]);
                }
                if (low[v] != index[v])
                    return;
                // v is the root of a component: pop it
                var component = new List<string>();
                string popped;
                do
                {
                    popped = stack.Pop();
                    onStack.Remove(popped);
                    component.Add(popped);
                } while (popped != v);
                if (component.Count > 1)
                {
                    component.Sort(StringComparer.Ordinal);
                    cycles.Add(component);
                }
            }

            foreach (var v in graph.Keys.Order(StringComparer.Ordinal))
                if (!index.ContainsKey(v))
                    Visit(v);
            return cycles.OrderBy(c => c[0], StringComparer.Ordinal).ToList();
        }

        /// <summary>One line per edge inside the cycle, each with the first use found: which type to move.</summary>
        public static string Describe(
            IReadOnlyList<string> cycle, Dictionary<string, HashSet<string>> graph,
            Dictionary<(string From, string To), string> examples)
        {
            var text = new StringBuilder($"cycle {string.Join(" ⇄ ", cycle)}:");
            foreach (var from in cycle)
            {
                if (!graph.TryGetValue(from, out var targets))
                    continue;
                foreach (var to in targets.Where(cycle.Contains).Order(StringComparer.Ordinal))
                {
                    var example = examples.TryGetValue((from, to), out var e) ? e : "(no example recorded)";
                    text.Append($"\n  {from} → {to}: {example}");
                }
            }
            return text.ToString();
        }

        static IEnumerable<Type> LoadableTypes(Assembly assembly)
        {
            try
            {
                return assembly.GetTypes(); // nested and compiler-generated types included
            }
            catch (ReflectionTypeLoadException e)
            {
                return e.Types.OfType<Type>();
            }
        }

        /// <summary>The area of a type: its outermost declaring type's namespace, cut to <c>depth</c> segments;
        /// null for the global namespace and top-level compiler-generated types (embedded attributes etc.).</summary>
        static string? AreaOf(Type type, int depth)
        {
            var outer = type;
            while (outer.DeclaringType is { } declaring)
                outer = declaring;
            if (string.IsNullOrEmpty(outer.Namespace) || outer.IsDefined(typeof(CompilerGeneratedAttribute), false))
                return null;
            return string.Join('.', outer.Namespace.Split('.').Take(depth));
        }

        static string Name(Type type) => type.FullName ?? $"{type.Namespace}.{type.Name}";

        /// <summary>The tokens of the IL's member, field, type and ldtoken operands; other operands skipped.</summary>
        static IEnumerable<(OperandType Kind, int Token)> Tokens(byte[] il)
        {
            for (int i = 0; i < il.Length;)
            {
                int value = il[i++];
                if (value == 0xFE)
                    value = 0xFE00 | il[i++];
                if (!OpCodesByValue.TryGetValue(value, out var op))
                    throw new InvalidOperationException($"unknown IL opcode 0x{value:X} at offset {i}");
                switch (op.OperandType)
                {
                    case OperandType.InlineMethod:
                    case OperandType.InlineField:
                    case OperandType.InlineType:
                    case OperandType.InlineTok:
                        yield return (op.OperandType, BitConverter.ToInt32(il, i));
                        i += 4;
                        break;
                    case OperandType.InlineNone:
                        break;
                    case OperandType.ShortInlineBrTarget:
                    case OperandType.ShortInlineI:
                    case OperandType.ShortInlineVar:
                        i += 1;
                        break;
                    case OperandType.InlineVar:
                        i += 2;
                        break;
                    case OperandType.InlineI8:
                    case OperandType.InlineR:
                        i += 8;
                        break;
                    case OperandType.InlineSwitch:
                        i += 4 + 4 * BitConverter.ToInt32(il, i);
                        break;
                    default: // InlineBrTarget, InlineI, InlineSig, InlineString, ShortInlineR (a float32)
                        i += 4;
                        break;
                }
            }
        }

        /// <summary>Walks one type at a time, adding an edge for each use of another area's type.</summary>
        sealed class Scan(Assembly assembly, int depth)
        {
            public Dictionary<string, HashSet<string>> Graph { get; } = [];
            public Dictionary<(string From, string To), string> Examples { get; } = [];

            string from = "";
            Type fromType = typeof(object);

            public void Add(Type type)
            {
                if (AreaOf(type, depth) is not { } area)
                    return;
                from = area;
                fromType = type;
                if (!Graph.ContainsKey(area))
                    Graph[area] = [];

                Use(type.BaseType, "base type");
                foreach (var i in type.GetInterfaces())
                    Use(i, "interface");
                GenericParameters(type.IsGenericTypeDefinition ? type.GetGenericArguments() : [], "type");
                Attributes(type.GetCustomAttributesData(), "attribute on the type");

                foreach (var f in type.GetFields(Declared))
                {
                    Use(f.FieldType, $"field {f.Name}");
                    Attributes(f.GetCustomAttributesData(), $"attribute on field {f.Name}");
                }
                foreach (var p in type.GetProperties(Declared))
                {
                    Use(p.PropertyType, $"property {p.Name}");
                    foreach (var index in p.GetIndexParameters())
                        Use(index.ParameterType, $"indexer {p.Name}");
                    Attributes(p.GetCustomAttributesData(), $"attribute on property {p.Name}");
                }
                foreach (var e in type.GetEvents(Declared))
                {
                    Use(e.EventHandlerType, $"event {e.Name}");
                    Attributes(e.GetCustomAttributesData(), $"attribute on event {e.Name}");
                }
                foreach (var m in type.GetMethods(Declared))
                {
                    Use(m.ReturnType, $"signature of {m.Name}");
                    Attributes(m.ReturnParameter.GetCustomAttributesData(), $"attribute on {m.Name}");
                    GenericParameters(m.IsGenericMethodDefinition ? m.GetGenericArguments() : [], m.Name);
                    Method(type, m);
                }
                foreach (var c in type.GetConstructors(Declared))
                    Method(type, c);
            }

            // parameters, attributes and body of a method or constructor
            void Method(Type type, MethodBase method)
            {
                foreach (var p in method.GetParameters())
                {
                    Use(p.ParameterType, $"signature of {method.Name}");
                    Attributes(p.GetCustomAttributesData(), $"attribute on a parameter of {method.Name}");
                }
                Attributes(method.GetCustomAttributesData(), $"attribute on {method.Name}");

                var body = method.GetMethodBody(); // null for abstract, extern and runtime-implemented methods
                if (body is null)
                    return;
                foreach (var local in body.LocalVariables)
                    Use(local.LocalType, $"local in {method.Name}");
                foreach (var clause in body.ExceptionHandlingClauses)
                    if (clause.Flags == ExceptionHandlingClauseOptions.Clause)
                        Use(clause.CatchType, $"catch in {method.Name}");

                var typeArgs = type.IsGenericType ? type.GetGenericArguments() : null;
                var methodArgs = method is MethodInfo { IsGenericMethod: true } ? method.GetGenericArguments() : null;
                foreach (var (kind, token) in Tokens(body.GetILAsByteArray() ?? []))
                {
                    MemberInfo? member;
                    try
                    {
                        member = kind switch
                        {
                            OperandType.InlineMethod => method.Module.ResolveMethod(token, typeArgs, methodArgs),
                            OperandType.InlineField => method.Module.ResolveField(token, typeArgs, methodArgs),
                            OperandType.InlineType => method.Module.ResolveType(token, typeArgs, methodArgs),
                            _ => method.Module.ResolveMember(token, typeArgs, methodArgs),
                        };
                    }
                    catch (Exception)
                    {
                        continue; // a token that does not resolve (e.g. a missing dependency): skipped
                    }
                    Member(member, $"body of {method.Name}");
                }
            }

            void Member(MemberInfo? member, string via)
            {
                switch (member)
                {
                    case Type t:
                        Use(t, via);
                        break;
                    case MethodInfo { IsGenericMethod: true } m:
                        Use(m.DeclaringType, via);
                        foreach (var a in m.GetGenericArguments())
                            Use(a, via);
                        break;
                    case { DeclaringType: { } declaring }:
                        Use(declaring, via);
                        break;
                }
            }

            void GenericParameters(Type[] parameters, string owner)
            {
                foreach (var p in parameters)
                    foreach (var constraint in p.GetGenericParameterConstraints())
                        Use(constraint, $"constraint on {owner}");
            }

            void Attributes(IEnumerable<CustomAttributeData> attributes, string via)
            {
                foreach (var a in attributes)
                {
                    Use(a.AttributeType, via);
                    foreach (var arg in a.ConstructorArguments.Concat(a.NamedArguments.Select(n => n.TypedValue)))
                        Argument(arg, via);
                }
            }

            // an attribute argument: its type (an enum), a typeof(...) value, or an array of those
            void Argument(CustomAttributeTypedArgument arg, string via)
            {
                Use(arg.ArgumentType, via);
                if (arg.Value is Type t)
                    Use(t, via);
                else if (arg.Value is IEnumerable<CustomAttributeTypedArgument> items)
                    foreach (var item in items)
                        Argument(item, via);
            }

            /// <summary>Records an edge if <paramref name="type"/>, or a type inside it (element type, generic
            /// argument, function pointer signature), belongs to another area of the analysed assembly.</summary>
            void Use(Type? type, string via)
            {
                if (type is null)
                    return;
                while (type.HasElementType) // arrays, pointers, byrefs
                    type = type.GetElementType()!;
                if (type.IsGenericParameter)
                    return;
                if (type.IsFunctionPointer)
                {
                    Use(type.GetFunctionPointerReturnType(), via);
                    foreach (var p in type.GetFunctionPointerParameterTypes())
                        Use(p, via);
                    return;
                }
                if (type.IsGenericType && !type.IsGenericTypeDefinition)
                {
                    foreach (var a in type.GetGenericArguments())
                        Use(a, via);
                    type = type.GetGenericTypeDefinition();
                }
                if (type.Assembly != assembly || AreaOf(type, depth) is not { } to || to == from)
                    return;
                if (!Graph.TryGetValue(from, out var targets))
                    Graph[from] = targets = [];
                if (targets.Add(to))
                    Examples.TryAdd((from, to), $"{Name(fromType)} uses {Name(type)} (via {via})");
            }
        }
    }
}

// Fixtures for the analyser's self-check: each namespace mentions another only where the test says.
namespace LdmLab.Tests.ArchFixture.A
{
    static class UsesBOnlyInBody
    {
        public static int Call() => B.Helper.Value();
    }

    static class UsesCOnlyInLambda
    {
        public static int Lambda()
        {
            Func<int> f = () => new C.Thing().X;
            return f();
        }
    }

    static class UsesGOnlyAsGenericArgument
    {
        public static int Generic()
        {
            var items = new List<G.Item>();
            return items.Count;
        }
    }
}

namespace LdmLab.Tests.ArchFixture.B
{
    public static class Helper
    {
        public static int Value() => 1;
    }
}

namespace LdmLab.Tests.ArchFixture.C
{
    public sealed class Thing
    {
        public int X { get; } = 2;
    }
}

namespace LdmLab.Tests.ArchFixture.G
{
    public sealed class Item;
}

namespace LdmLab.Tests.ArchFixture.D
{
    static class Ping
    {
        public static int One() => 1;
        public static int Two() => E.Pong.Zero() + 2;
    }
}

namespace LdmLab.Tests.ArchFixture.E
{
    static class Pong
    {
        public static int Zero() => D.Ping.One() - 1;
    }
}
