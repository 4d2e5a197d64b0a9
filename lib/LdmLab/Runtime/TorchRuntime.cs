using System.Reflection;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;

namespace LdmLab.Runtime;

/// <summary>What <see cref="TorchRuntime.Setup"/> did, step by step.</summary>
public sealed record RuntimeReport(
    bool Ok,
    string? Error,
    string? LibTorchDirectory,
    string? LibTorchSharpPath,
    bool PatchedGlibcxxNeed,
    OneDnnDecision? OneDnn,
    IReadOnlyList<string> Steps)
{
    /// <summary>Whether oneDNN is on for CPU ops after setup (null: its switch was not found).</summary>
    public bool? MkldnnEnabled => OneDnn?.Enabled;

    public override string ToString()
    {
        var sb = new StringBuilder();
        sb.AppendLine(Ok ? "LdmLab runtime: ready" : $"LdmLab runtime: FAILED — {Error}");
        foreach (var s in Steps) sb.AppendLine("  - " + s);
        return sb.ToString().TrimEnd();
    }
}

/// <summary>Thrown when TorchSharp's native libraries cannot be made to load; the message says why.</summary>
public sealed class TorchRuntimeException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>
/// Makes TorchSharp work before anything touches <c>torch</c>:
/// 1. loads LibTorch (c10, torch_cpu, torch) by absolute path, so a system libtorch cannot shadow it;
/// 2. loads libLibTorchSharp, marking its GLIBCXX_3.4.32 need weak when the system libstdc++ lacks it;
/// 3. decides oneDNN for CPU by evidence: ISA capped at AVX2, then a self-check (see <see cref="OneDnn"/>).
/// Idempotent and thread-safe; runs automatically when the library is first used.
/// </summary>
public static class TorchRuntime
{
    const string GlibcxxNeed = "GLIBCXX_3.4.32";
    static readonly object Gate = new();
    static RuntimeReport? _report;

    /// <summary>The report of the last setup, or null if it has not run.</summary>
    public static RuntimeReport? Report => _report;

    /// <summary>Runs the setup once and throws <see cref="TorchRuntimeException"/> if it failed.</summary>
    public static RuntimeReport Setup()
    {
        var r = TrySetup();
        if (!r.Ok) throw new TorchRuntimeException(r.ToString());
        return r;
    }

    /// <summary>Runs the setup once; never throws.</summary>
    public static RuntimeReport TrySetup()
    {
        lock (Gate)
        {
            return _report ??= Run();
        }
    }

    static RuntimeReport Run()
    {
        var steps = new List<string>();
        string? torchDir = null, sharpPath = null;
        bool patched = false;
        OneDnnDecision? mkldnn = null;
        try
        {
            var isaCap = OneDnn.ApplyIsaCap(steps);   // before anything in LibTorch can query the ISA
            var rid = RuntimeId();
            var torchSharpDll = typeof(TorchSharp.torch).Assembly.Location; // typeof does not run torch's cctor
            steps.Add($"TorchSharp {typeof(TorchSharp.torch).Assembly.GetName().Version} at {torchSharpDll}");

            torchDir = FindLibTorchDirectory(torchSharpDll, rid)
                ?? throw new TorchRuntimeException(
                    $"LibTorch natives for {rid} not found next to {torchSharpDll} or in the NuGet packages folder. " +
                    $"Reference the package libtorch-cpu-{rid} (version 2.10.0) or set LDMLAB_LIBTORCH_DIR to the folder holding {Lib("torch_cpu")}.");
            foreach (var name in new[] { "c10", "c10_cuda", "torch_cpu", "torch_cuda", "torch" })
            {
                var path = Path.Combine(torchDir, Lib(name));
                if (!File.Exists(path)) continue;
                Handles[name] = NativeLibrary.Load(path);
                steps.Add($"loaded {path}");
            }
            if (!Handles.ContainsKey("torch_cpu"))
                throw new TorchRuntimeException($"{Path.Combine(torchDir, Lib("torch_cpu"))} is missing.");

            sharpPath = FindLibTorchSharp(torchSharpDll, rid)
                ?? throw new TorchRuntimeException($"{Lib("LibTorchSharp")} for {rid} not found near {torchSharpDll}.");
            (sharpPath, patched) = LoadLibTorchSharp(sharpPath, steps);

            mkldnn = ConfigureMkldnn(isaCap, steps);
            return new RuntimeReport(true, null, torchDir, sharpPath, patched, mkldnn, steps);
        }
        catch (Exception e)
        {
            steps.Add("error: " + e.Message);
            return new RuntimeReport(false, e.Message, torchDir, sharpPath, patched, mkldnn, steps);
        }
    }

    static readonly Dictionary<string, IntPtr> Handles = new();

    static (string path, bool patched) LoadLibTorchSharp(string original, List<string> steps)
    {
        try
        {
            NativeLibrary.Load(original);
            steps.Add($"loaded {original}");
            return (original, false);
        }
        catch (DllNotFoundException e) when (OperatingSystem.IsLinux() && e.Message.Contains(GlibcxxNeed))
        {
            steps.Add($"system libstdc++ lacks {GlibcxxNeed} (needed only by the unused _ZSt21ios_base_library_initv)");
        }
        var patchedPath = WeakenedCopy(original);
        try
        {
            NativeLibrary.Load(patchedPath);
        }
        catch (DllNotFoundException e)
        {
            throw new TorchRuntimeException($"{patchedPath} (copy of {original} with {GlibcxxNeed} marked weak) still fails to load: {e.Message}", e);
        }
        steps.Add($"loaded {patchedPath} ({GlibcxxNeed} need marked weak; the NuGet cache is untouched)");
        return (patchedPath, true);
    }

    /// <summary>Writes (once per content hash) a copy whose GLIBCXX_3.4.32 need is weak; temp file + atomic rename.</summary>
    public static string WeakenedCopy(string original)
    {
        var bytes = File.ReadAllBytes(original);
        var hash = Convert.ToHexString(SHA256.HashData(bytes))[..16].ToLowerInvariant();
        var dir = Path.Combine(Path.GetTempPath(), "ldmlab-natives", hash);
        var target = Path.Combine(dir, Path.GetFileName(original));
        if (File.Exists(target)) return target;
        if (ElfVersionNeeds.MarkWeak(bytes, GlibcxxNeed, original) == 0)
            throw new TorchRuntimeException($"{original} does not need {GlibcxxNeed}; its load failure has another cause.");
        Directory.CreateDirectory(dir);
        var tmp = target + "." + Environment.ProcessId + ".tmp";
        File.WriteAllBytes(tmp, bytes);
        File.Move(tmp, target, overwrite: true);
        return target;
    }

    static OneDnnDecision? ConfigureMkldnn(string? isaCap, List<string> steps)
    {
        if (SwitchMkldnn(false) is null)
        {
            steps.Add("oneDNN switch not found in torch_cpu (non-Itanium C++ ABI); left at LibTorch's default");
            return null;
        }
        var decision = OneDnn.Decide(isaCap, on => SwitchMkldnn(on)!.Value);
        steps.Add(decision.ToString());
        return decision;
    }

    /// <summary>Sets oneDNN on or off for CPU ops at run time; returns the new state.</summary>
    public static bool SetMkldnn(bool enabled)
    {
        Setup();
        return SwitchMkldnn(enabled) ?? throw new TorchRuntimeException("oneDNN switch not found in torch_cpu (non-Itanium C++ ABI)");
    }

    // at::globalContext().setUserEnabledMkldnn(on), read back with userEnabledMkldnn(); null if the exports are absent.
    static unsafe bool? SwitchMkldnn(bool on)
    {
        var h = Handles["torch_cpu"];
        if (!NativeLibrary.TryGetExport(h, "_ZN2at13globalContextEv", out var ctxFn) ||
            !NativeLibrary.TryGetExport(h, "_ZN2at7Context20setUserEnabledMkldnnEb", out var setFn) ||
            !NativeLibrary.TryGetExport(h, "_ZNK2at7Context17userEnabledMkldnnEv", out var getFn))
            return null;
        var ctx = ((delegate* unmanaged<IntPtr>)ctxFn)();
        ((delegate* unmanaged<IntPtr, byte, void>)setFn)(ctx, on ? (byte)1 : (byte)0);
        return ((delegate* unmanaged<IntPtr, byte>)getFn)(ctx) != 0;
    }

    static string RuntimeId()
    {
        string os = OperatingSystem.IsWindows() ? "win" : OperatingSystem.IsMacOS() ? "osx" : "linux";
        string arch = RuntimeInformation.ProcessArchitecture.ToString().ToLowerInvariant();
        return $"{os}-{arch}";
    }

    static string Lib(string name) =>
        OperatingSystem.IsWindows() ? name + ".dll" : OperatingSystem.IsMacOS() ? $"lib{name}.dylib" : $"lib{name}.so";

    /// <summary>
    /// NuGet package folders, in search order: the one the running TorchSharp came from (a notebook kernel has its
    /// own), NUGET_PACKAGES, ~/.nuget/packages. TorchSharp.dll sits at
    /// &lt;root&gt;/torchsharp/&lt;version&gt;/lib/&lt;tfm&gt;/.
    /// </summary>
    public static IReadOnlyList<string> NuGetPackageRoots(string? torchSharpDll = null)
    {
        torchSharpDll ??= typeof(TorchSharp.torch).Assembly.Location;   // typeof does not run torch's cctor
        var roots = new List<string>
        {
            Path.GetFullPath(Path.Combine(Path.GetDirectoryName(torchSharpDll)!, "..", "..", "..", "..")),
        };
        if (Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } np) roots.Add(np);
        roots.Add(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages"));
        return roots.Distinct().ToList();
    }

    /// <summary>Folders to search, nearest first: LDMLAB_LIBTORCH_DIR, the app folder, the package folders.</summary>
    static IEnumerable<string> NativeDirs(string torchSharpDll, string rid, string packagePrefix)
    {
        var dllDir = Path.GetDirectoryName(torchSharpDll)!;
        yield return dllDir;
        yield return Path.Combine(dllDir, "runtimes", rid, "native");
        yield return Path.Combine(AppContext.BaseDirectory, "runtimes", rid, "native");
        yield return AppContext.BaseDirectory;
        // .../<packages>/torchsharp/<version>/lib/<tfm>/TorchSharp.dll
        var torchSharpPackage = Path.GetFullPath(Path.Combine(dllDir, "..", ".."));
        var roots = NuGetPackageRoots(torchSharpDll);
        if (packagePrefix == "torchsharp") yield return Path.Combine(torchSharpPackage, "runtimes", rid, "native");
        foreach (var root in roots.Distinct())
        {
            if (!Directory.Exists(root)) continue;
            if (packagePrefix == "torchsharp")
            {
                // only the version of the managed TorchSharp.dll: natives and bindings must match
                yield return Path.Combine(root, "torchsharp", Path.GetFileName(torchSharpPackage), "runtimes", rid, "native");
                continue;
            }
            foreach (var pkg in Directory.EnumerateDirectories(root, packagePrefix + "*")
                         .Where(p => Path.GetFileName(p).EndsWith(rid, StringComparison.OrdinalIgnoreCase))
                         .OrderBy(p => p.Contains("cuda") ? 0 : 1))
                foreach (var ver in Directory.EnumerateDirectories(pkg).OrderByDescending(Path.GetFileName, StringComparer.Ordinal))
                    yield return Path.Combine(ver, "runtimes", rid, "native");
        }
    }

    static string? FindLibTorchDirectory(string torchSharpDll, string rid)
    {
        if (Environment.GetEnvironmentVariable("LDMLAB_LIBTORCH_DIR") is { Length: > 0 } d)
            return File.Exists(Path.Combine(d, Lib("torch_cpu"))) ? d
                : throw new TorchRuntimeException($"LDMLAB_LIBTORCH_DIR={d} holds no {Lib("torch_cpu")}.");
        return NativeDirs(torchSharpDll, rid, "libtorch-").FirstOrDefault(p => File.Exists(Path.Combine(p, Lib("torch_cpu"))));
    }

    static string? FindLibTorchSharp(string torchSharpDll, string rid) =>
        NativeDirs(torchSharpDll, rid, "torchsharp").Select(p => Path.Combine(p, Lib("LibTorchSharp"))).FirstOrDefault(File.Exists);
}
