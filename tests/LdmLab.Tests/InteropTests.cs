using LdmLab.Cli;
using LdmLab.Data;
using LdmLab.Interop;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

public class SafeTensorsTests
{
    [Fact]
    public void Round_trip_keeps_names_dtypes_shapes_and_bits()
    {
        TorchRuntime.Setup();
        var path = Path.Combine(TestPaths.TempDir("st"), "w.safetensors");
        var tensors = new Dictionary<string, Tensor>
        {
            ["b.weight"] = randn(3, 4),
            ["a.ids"] = tensor(new long[] { 1, 2, 49407 }),
            ["c.half"] = randn(2, 2).to_type(ScalarType.Float16),
            ["d.empty"] = zeros(0, 3),
        };
        SafeTensors.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });
        var (entries, meta) = SafeTensors.ReadHeader(path);
        Assert.Equal(["a.ids", "b.weight", "c.half", "d.empty"], entries.OrderBy(e => e.Begin).ThenBy(e => e.Name).Select(e => e.Name).OrderBy(n => n));
        Assert.Equal("pt", meta["format"]);
        var back = SafeTensors.Load(path);
        foreach (var (k, v) in tensors)
        {
            Assert.Equal(v.dtype, back[k].dtype);
            Assert.Equal(v.shape, back[k].shape);
            Assert.True(v.equal(back[k]).all().item<bool>(), k);
        }
        // the data section starts 8-byte aligned
        Assert.Equal(0L, (8 + (long)BitConverter.ToUInt64(File.ReadAllBytes(path), 0)) % 8);
    }

    [Fact]
    public void Truncated_and_garbage_files_are_clear_errors()
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("st-bad");
        var path = Path.Combine(dir, "w.safetensors");
        SafeTensors.Save(path, new Dictionary<string, Tensor> { ["x"] = randn(100) });
        var bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..(bytes.Length - 10)]);
        var e = Assert.Throws<DatasetException>(() => SafeTensors.Load(path));
        Assert.Equal(path, e.FilePath);
        Assert.Contains("truncated", e.Message);
        File.WriteAllText(path, "not safetensors at all");
        Assert.Throws<DatasetException>(() => SafeTensors.Load(path));
        Assert.Contains("not found", Assert.Throws<DatasetException>(() => SafeTensors.Load(Path.Combine(dir, "none.safetensors"))).Message);
    }

    [Fact]
    public void Python_json_infinities_parse()
    {
        var n = PyJson.Parse("{\"a\": -Infinity, \"b\": \"-Infinity stays a string\", \"c\": NaN, \"d\": [Infinity, 1]}")!;
        Assert.Equal("-inf", (string?)n["a"]);
        Assert.Equal("-Infinity stays a string", (string?)n["b"]);
        Assert.Equal("nan", (string?)n["c"]);
        Assert.Equal("inf", (string?)n["d"]![0]);
    }
}

public class ParityCommandTests
{
    static int Run(out string output, params string[] args)
    {
        var sw = new StringWriter();
        var saved = Console.Out;
        Console.SetOut(sw);
        try { return Commands.Run(args); }
        finally { Console.SetOut(saved); output = sw.ToString(); }
    }

    [Fact]
    public void Scheduler_fixtures_pass_with_the_documented_output_format()
    {
        int rc = Run(out var text, "parity", Path.Combine(AppContext.BaseDirectory, "fixtures", "schedulers"));
        var lines = text.Trim().Split('\n').Select(l => l.TrimEnd()).ToArray();
        Assert.Equal(0, rc);
        Assert.Matches(@"^\d+ passed, 0 failed$", lines[^1]);
        Assert.All(lines[..^1], l => Assert.Matches(@"^PASS \S+ \S+", l));
        Assert.Contains(lines, l => l.StartsWith("PASS dpmpp2m_20/prev_sample "));
    }

    [Fact]
    public void Unknown_folders_fail_with_a_reason()
    {
        var dir = TestPaths.TempDir("not-fixture");
        int rc = Run(out var text, "parity", dir, Path.Combine(dir, "missing"));
        Assert.Equal(1, rc);
        Assert.Contains("not a fixture folder", text);
        Assert.Contains("folder not found", text);
        Assert.Contains("0 passed, 2 failed", text);
        Assert.Equal(2, Run(out _, "parity"));
    }
}

public class CliTests
{
    [Fact]
    public void Help_info_and_bench_listing_work_and_unknown_commands_fail()
    {
        Assert.Equal(0, Commands.Run(["--help"]));
        Assert.Equal(2, Commands.Run([]));
        Assert.Equal(2, Commands.Run(["frobnicate"]));
        Assert.Equal(0, Commands.Run(["info"]));
        var sw = new StringWriter(); var saved = Console.Out; Console.SetOut(sw);
        try { Assert.Equal(0, Commands.Run(["bench", "--list", "flat"])); }
        finally { Console.SetOut(saved); }
        Assert.Contains("ConvBench", sw.ToString());
    }

    /// <summary>`ldmlab train fashion-denoiser --schedule S`: the study's names, all five, the default, and a typo
    /// refused before anything runs, with the names it accepts.</summary>
    [Fact]
    public void Train_fashion_denoiser_names_the_schedules_it_accepts()
    {
        Assert.Equal(["fashion-denoiser"], TrainCommand.Schedules(null).Select(s => s.Name));
        Assert.Equal(5, TrainCommand.Schedules("all").Count);
        var zero = Assert.Single(TrainCommand.Schedules("zero-snr"));
        Assert.Equal("fashion-denoiser-zero-snr", zero.Name);
        Assert.Equal(0f, zero.Schedule.AlphasCumprod[^1]);
        var error = Assert.Throws<CliArgumentException>(
            () => TrainCommand.Run(["fashion-denoiser", "--schedule", "cosin", "--out", TestPaths.TempDir("no-train")]));
        Assert.Contains("--schedule cosin", error.Message);
        Assert.Contains("linear, cosine, scaled-linear, snr-adaptive, zero-snr", error.Message);
        Assert.Equal(2, Commands.Run(["train", "fashion-denoiser", "--schedule", "cosin"]));
    }
}
