using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Runtime;

/// <summary>The run profile: quick (CI, seconds), full (CPU, reproduces the reported numbers), gpu.</summary>
public enum Profile { Quick, Full, Gpu }

/// <summary>One place for device choice, seeding, threads and the run profile.</summary>
public static class Lab
{
    static RunSettings? _settings;

    /// <summary>
    /// The run's settings. The edges set them (<c>Lab.Settings = RunSettings.FromEnvironment()</c> in the CLI and in a
    /// notebook's first cell); a program that sets nothing gets the environment's, read once on first use.
    /// </summary>
    public static RunSettings Settings
    {
        get => _settings ??= RunSettings.FromEnvironment();
        set => _settings = value ?? throw new ArgumentNullException(nameof(value));
    }

    /// <summary>The profile in force (<see cref="RunSettings.Profile"/>).</summary>
    public static Profile Profile => Settings.Profile;

    public static Profile ParseProfile(string? value) => (value ?? "quick").Trim().ToLowerInvariant() switch
    {
        "" or "quick" => Profile.Quick,
        "full" => Profile.Full,
        "gpu" => Profile.Gpu,
        var v => throw new ArgumentException($"LDMLAB_PROFILE='{v}' is not one of quick, full, gpu.", nameof(value)),
    };

    /// <summary>Picks a value by profile: <c>Lab.Pick(quick: 200, full: 60000)</c>; gpu defaults to full.</summary>
    public static T Pick<T>(T quick, T full, T? gpu = default) => Profile switch
    {
        Profile.Quick => quick,
        Profile.Gpu => gpu is null || EqualityComparer<T>.Default.Equals(gpu, default!) ? full : gpu,
        _ => full,
    };

    /// <summary>CUDA when available (unless <see cref="RunSettings.Device"/> says otherwise), else CPU.</summary>
    public static Device Device
    {
        get
        {
            TorchRuntime.Setup();
            if (Settings.Device is { } wanted) return torch.device(wanted);
            return torch.cuda.is_available() ? CUDA : CPU;
        }
    }

    /// <summary>The LdmLab checkout at or above <paramref name="start"/> (the folder holding LdmLab.sln), or null.</summary>
    public static string? FindRepoRoot(string start)
    {
        if (string.IsNullOrEmpty(start)) return null;
        for (var d = new DirectoryInfo(Path.GetFullPath(start)); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "LdmLab.sln"))) return d.FullName;
        return null;
    }

    /// <summary>
    /// Builds <paramref name="create"/>'s modules on PyTorch's meta device: every parameter has its shape and dtype but
    /// no storage, so a 2.6B-parameter U-Net is counted and its state-dict keys listed in milliseconds and megabytes.
    /// Meta tensors cannot be computed with (LibTorch has no meta convolution here): count and compare, never run.
    /// </summary>
    public static T OnMeta<T>(Func<T> create)
    {
        TorchRuntime.Setup();
        var previous = torch.get_default_device();
        torch.set_default_device(torch.META);
        try { return create(); }
        finally { torch.set_default_device(previous); }
    }

    /// <summary>
    /// A model that runs but holds no weights: built <see cref="OnMeta"/>, then every parameter becomes a zero-stride
    /// view of one zero on the CPU (<c>zeros(1).expand(shape)</c>: 4 bytes whatever the shape). Forward passes run
    /// with the real shapes, so layer-by-layer counts (FLOPs, activations) equal the real model's, in the memory of
    /// its activations alone — SD 1.5's U-Net counts in under 1 GB instead of 3.4 GB of float32 weights. The outputs
    /// are those of all-zero weights: count with it, never sample. Every parameter must be settable through the
    /// module's property of the same name (TorchSharp's layers and LdmLab's are); buffers are refused, their values
    /// would be lost.
    /// </summary>
    public static T Hollow<T>(Func<T> create) where T : nn.Module
    {
        var model = OnMeta(create);
        foreach (var (path, module) in model.named_modules().Prepend(("", model)))    // TorchSharp's omits the root
        {
            if (module.named_buffers(recurse: false).FirstOrDefault() is { name: { } buffer })
                throw new NotSupportedException(
                    $"Lab.Hollow: module '{path}' ({module.GetType().Name}) holds buffer '{buffer}', whose values a " +
                    "hollow model would lose; build this model for real");
            foreach (var (name, p) in module.named_parameters(recurse: false).ToList())
            {
                var property = module.GetType().GetProperty(name);
                if (property is null || !property.CanWrite)
                    throw new NotSupportedException(
                        $"Lab.Hollow: parameter '{path}.{name}' of {module.GetType().Name} has no settable property " +
                        $"'{name}' to replace it through; build this model for real");
                var zero = torch.zeros(1, dtype: p.dtype, device: torch.CPU).expand(p.shape);   // stride 0: 1 value
                property.SetValue(module, new TorchSharp.Modules.Parameter(zero, requires_grad: false));
            }
        }
        return model;
    }

    /// <summary>Waits for the GPU's queued work (timings of CUDA work need it); nothing on the CPU.</summary>
    public static void Synchronize()
    {
        if (torch.cuda.is_available()) torch.cuda.synchronize();
    }

    /// <summary>Seeds torch with the run's seed (<see cref="RunSettings.Seed"/>, LDMLAB_SEED; default 0).</summary>
    public static Random Seed() => Seed(Settings.Seed);

    /// <summary>Seeds torch (CPU and CUDA) and returns a seeded <see cref="Random"/> for host-side choices.</summary>
    public static Random Seed(long seed)
    {
        TorchRuntime.Setup();
        torch.manual_seed(seed);
        if (torch.cuda.is_available()) torch.cuda.manual_seed_all(seed);
        return new Random(unchecked((int)seed));
    }

    /// <summary>Sets intra-op threads (<see cref="RunSettings.Threads"/>, else all cores); returns the count in
    /// force.</summary>
    public static int SetThreads(int? threads = null)
    {
        TorchRuntime.Setup();
        int n = threads ?? Settings.Threads ?? Environment.ProcessorCount;
        if (n < 1) throw new ArgumentOutOfRangeException(nameof(threads), n, "thread count must be at least 1");
        torch.set_num_threads(n);
        return torch.get_num_threads();
    }

    /// <summary>A one-paragraph description of the runtime: versions, device, threads, oneDNN, profile.</summary>
    public static string Describe()
    {
        var r = TorchRuntime.Setup();
        return string.Join(Environment.NewLine,
            r.ToString(),
            $"profile: {Profile.ToString().ToLowerInvariant()}",
            $"device: {Device.type}{(torch.cuda.is_available() ? $" ({torch.cuda.device_count()} CUDA device(s))" : "")}",
            $"threads: {torch.get_num_threads()}",
            $".NET {Environment.Version}, {System.Runtime.InteropServices.RuntimeInformation.OSDescription}");
    }
}
