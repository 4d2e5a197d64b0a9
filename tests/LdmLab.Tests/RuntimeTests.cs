using LdmLab.Runtime;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class RuntimeTests
{
    [Fact]
    public void Setup_loads_torch_and_decides_onednn_by_its_self_check()
    {
        var r = TorchRuntime.Setup();
        Assert.True(r.Ok, r.ToString());
        var d = Assert.IsType<OneDnnDecision>(r.OneDnn);
        Assert.NotNull(d.Check);
        bool? forced = Environment.GetEnvironmentVariable("LDMLAB_MKLDNN") switch
        {
            "1" or "true" => true,
            "0" or "false" => false,
            _ => null,
        };
        Assert.Equal(forced ?? d.Check!.Passed, r.MkldnnEnabled);
        // the report names the decision, the ISA and the check's worst error
        Assert.Contains(r.Steps, s => s.StartsWith("oneDNN (mkldnn) for CPU: ") && s.Contains("ISA ")
                                      && s.Contains("worst relative error"));
        // torch really computes: (A·I) = A
        var a = randn(3, 3);
        Assert.True(a.matmul(eye(3)).allclose(a));
        Assert.Same(r, TorchRuntime.Setup()); // idempotent
    }

    [SkippableFact]
    public void Only_the_package_libtorch_is_mapped()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "ELF/glibc checks are Linux-only");
        var r = TorchRuntime.Setup();
        var mapped = File.ReadAllLines("/proc/self/maps").Where(l => l.Contains("libtorch_cpu.so")).Select(l => l[(l.IndexOf('/'))..]).Distinct().ToList();
        Assert.NotEmpty(mapped);
        Assert.All(mapped, path => Assert.StartsWith(r.LibTorchDirectory!, path));
    }

    [SkippableFact]
    public void Weakened_copy_differs_only_in_the_glibcxx_flag()
    {
        var original = Directory.GetFiles(Path.GetDirectoryName(typeof(torch).Assembly.Location)!, "libLibTorchSharp.so", SearchOption.AllDirectories)
            .Concat(Directory.GetFiles(Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages", "torchsharp"), "libLibTorchSharp.so", SearchOption.AllDirectories))
            .FirstOrDefault(p => p.Contains("linux-x64"));
        Skip.IfNot(OperatingSystem.IsLinux(), "ELF/glibc checks are Linux-only");
        Assert.NotNull(original);
        var before = File.ReadAllBytes(original);
        var need = Assert.Single(ElfVersionNeeds.Read(before, original), n => n.Version == "GLIBCXX_3.4.32");
        Assert.False(need.IsWeak);
        Assert.Equal("libstdc++.so.6", need.File);

        var copy = TorchRuntime.WeakenedCopy(original);
        var after = File.ReadAllBytes(copy);
        Assert.True(Assert.Single(ElfVersionNeeds.Read(after, copy), n => n.Version == "GLIBCXX_3.4.32").IsWeak);
        Assert.Equal(before.Length, after.Length);
        var diff = Enumerable.Range(0, before.Length).Where(i => before[i] != after[i]).ToList();
        Assert.Equal([need.FlagsOffset], diff);
        // every other need is untouched
        Assert.All(ElfVersionNeeds.Read(after, copy).Where(n => n.Version != "GLIBCXX_3.4.32"), n => Assert.False(n.IsWeak));
    }

    [SkippableFact]
    public void Elf_reader_rejects_bad_input_naming_it()
    {
        var e1 = Assert.Throws<InvalidDataException>(() => ElfVersionNeeds.Read(new byte[100], "x.so"));
        Assert.Contains("x.so", e1.Message);
        Assert.Contains("magic", e1.Message);
        Skip.IfNot(OperatingSystem.IsLinux(), "ELF/glibc checks are Linux-only");
        var truncated = File.ReadAllBytes("/bin/true")[..200]; // a real ELF header whose section table lies beyond
        var e2 = Assert.Throws<InvalidDataException>(() => ElfVersionNeeds.Read(truncated, "short.so"));
        Assert.Contains("short.so", e2.Message);
    }

    [Theory]
    [InlineData(null, Profile.Quick)]
    [InlineData("quick", Profile.Quick)]
    [InlineData("FULL", Profile.Full)]
    [InlineData("gpu", Profile.Gpu)]
    public void Profiles_parse(string? value, Profile expected) => Assert.Equal(expected, Lab.ParseProfile(value));

    [Fact]
    public void Unknown_profile_is_a_clear_error()
    {
        var e = Assert.Throws<ArgumentException>(() => Lab.ParseProfile("fast"));
        Assert.Contains("LDMLAB_PROFILE='fast'", e.Message);
    }

    [Fact]
    public void Run_settings_are_read_from_the_environment_in_one_place()
    {
        var vars = new Dictionary<string, string>
        {
            ["LDMLAB_PROFILE"] = "full", ["LDMLAB_CACHE"] = "/tmp/c", ["LDMLAB_CHECKPOINTS"] = "/tmp/k",
            ["LDMLAB_DEVICE"] = "meta", ["LDMLAB_THREADS"] = "3", ["LDMLAB_SEED"] = "7",
            ["LDMLAB_FASHION_MNIST"] = "/tmp/f", ["LDMLAB_PHOTOS"] = "/tmp/p", ["LDMLAB_RESNET18_DIR"] = "/tmp/r",
        };
        var s = RunSettings.FromEnvironment(n => vars.GetValueOrDefault(n));
        Assert.Equal(new RunSettings(Profile.Full, "/tmp/c", "/tmp/k", "meta", 3, 7, "/tmp/f", "/tmp/p", "/tmp/r"), s);
        // the data locations are read from the settings, not from the environment deep inside
        Assert.Equal("/tmp/f", s.Apply(() => LdmLab.Data.FashionMnist.DefaultDirectory()));
        Assert.Equal("/tmp/p", s.Apply(() => LdmLab.Data.ImageFolder.DefaultDirectory()));
        var defaults = RunSettings.FromEnvironment(_ => null);
        Assert.Equal(RunSettings.Defaults, defaults);
        vars["LDMLAB_THREADS"] = "0";
        var e = Assert.Throws<ArgumentException>(() => RunSettings.FromEnvironment(n => vars.GetValueOrDefault(n)));
        Assert.Contains("LDMLAB_THREADS='0'", e.Message);
        // settings apply to a piece of work and are restored after it, also when it throws
        var before = Lab.Settings;
        Assert.Equal(Profile.Full, (before with { Profile = Profile.Full }).Apply(() => Lab.Profile));
        Assert.Throws<InvalidOperationException>(() => (before with { Device = "meta" }).Apply<int>(
            () => throw new InvalidOperationException()));
        Assert.Same(before, Lab.Settings);
    }

    [Fact]
    public void Device_is_cpu_without_cuda_and_threads_apply()
    {
        if (!cuda.is_available()) Assert.Equal(DeviceType.CPU, Lab.Device.type);
        Assert.Equal(1, Lab.SetThreads(1));
        Assert.Equal(Environment.ProcessorCount, Lab.SetThreads());
    }
}
