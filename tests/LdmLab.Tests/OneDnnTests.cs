using System.Diagnostics;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>The oneDNN decision: the self-check finds wrong results, a failed check turns oneDNN off, the cap reaches oneDNN.</summary>
public class OneDnnTests
{
    /// <summary>A convolution that is right except for 17 input channels (the AVX-512 forward bug, injected).</summary>
    static Tensor WrongFor17Inputs(Tensor x, Tensor w, long stride)
    {
        var y = nn.functional.conv2d(x, w, strides: [stride, stride], padding: [1, 1]);
        return x.shape[1] == 17 ? y + 1e-2 * y.abs().max() : y;
    }

    /// <summary>Right forward, wrong input gradient when out_channels is not a multiple of 16 (the AVX-512 gradient bug).</summary>
    static Tensor WrongInputGradient(Tensor x, Tensor w, long stride)
    {
        var y = nn.functional.conv2d(x, w, strides: [stride, stride], padding: [1, 1]);
        if (w.shape[0] % 16 == 0) return y;
        // adds 0 to the value, 0.01·x to the input's gradient path
        var bump = nn.functional.avg_pool2d(x, 3, stride, 1).sum(1, keepdim: true) * 1e-2;
        return y + (bump - bump.detach());
    }

    [Fact]
    public void Self_check_passes_for_the_plain_op_in_float32()
    {
        TorchRuntime.Setup();
        var r = OneDnn.SelfCheck((x, w, s) => nn.functional.conv2d(x, w, strides: [s, s], padding: [1, 1]));
        Assert.True(r.Passed, r.ToString());
        Assert.True(r.WorstError > 0, "float32 against float64 cannot be exact: the comparison did not run");
    }

    [Fact]
    public void Self_check_detects_a_wrong_forward()
    {
        TorchRuntime.Setup();
        var r = OneDnn.SelfCheck(WrongFor17Inputs);
        Assert.False(r.Passed, r.ToString());
        Assert.Contains("forward, 17→", r.WorstCase);
    }

    [Fact]
    public void Self_check_detects_a_wrong_input_gradient()
    {
        TorchRuntime.Setup();
        var r = OneDnn.SelfCheck(WrongInputGradient);
        Assert.False(r.Passed, r.ToString());
        Assert.Contains("input gradient", r.WorstCase);
    }

    [Fact]
    public void A_failed_check_turns_onednn_off_and_says_why()
    {
        var before = TorchRuntime.Setup().MkldnnEnabled ?? false;
        var forced = Environment.GetEnvironmentVariable("LDMLAB_MKLDNN");
        try
        {
            Environment.SetEnvironmentVariable("LDMLAB_MKLDNN", null);
            var d = OneDnn.Decide("AVX2", TorchRuntime.SetMkldnn, WrongFor17Inputs);
            Assert.False(d.Enabled);
            Assert.False(TorchRuntime.SetMkldnn(false));
            Assert.Contains("self-check failed", d.ToString());
            Assert.Contains("FAILED", d.ToString());
            var ok = OneDnn.Decide("AVX2", TorchRuntime.SetMkldnn);
            Assert.True(ok.Enabled == ok.Check!.Passed, ok.ToString());
        }
        finally
        {
            Environment.SetEnvironmentVariable("LDMLAB_MKLDNN", forced);
            TorchRuntime.SetMkldnn(before);
        }
    }

    [Theory]
    [InlineData("fpu sse4_1 sse4_2 avx avx2 fma", "AVX2")]
    [InlineData("sse4_1 avx avx2 avx512f avx512bw avx512vl avx512dq", "AVX512_CORE")]
    [InlineData("sse4_1 avx avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni avx512_bf16 avx512_fp16 amx_tile", "AVX512_CORE_AMX")]
    [InlineData("sse4_1 avx", "AVX")]
    [InlineData("neon", "unknown")]
    public void Cpu_flags_map_to_onednn_isa_names(string flags, string isa) =>
        Assert.Equal(isa, OneDnn.IsaFromFlags(flags.Split(' ').ToHashSet()));

    [Fact]
    public void Effective_isa_is_the_lower_of_cpu_and_cap()
    {
        Assert.Equal("AVX2", new OneDnnDecision(true, "", "AVX2", "AVX512_CORE_AMX", null).EffectiveIsa);
        Assert.Equal("AVX2", new OneDnnDecision(true, "", "AVX512_CORE", "AVX2", null).EffectiveIsa);
        Assert.Equal("AVX512_CORE", new OneDnnDecision(true, "", "DEFAULT", "AVX512_CORE", null).EffectiveIsa);
    }

    /// <summary>The cap is set in the C environment before LibTorch starts: oneDNN's own verbose log shows the ISA.</summary>
    [SkippableFact]
    public void The_isa_cap_reaches_onednn_in_a_fresh_process()
    {
        Skip.IfNot(OperatingSystem.IsLinux(), "the ISA cap is set through Linux libc");
        var cpu = OneDnn.CpuIsa();
        Skip.If(!cpu.StartsWith("AVX2") && !cpu.StartsWith("AVX512"), $"CPU ISA {cpu}: the AVX2 cap changes nothing below AVX2");
        var cli = Path.Combine(TestPaths.RepoRoot, "lib", "LdmLab.Cli", "bin", "Release", "net10.0", "LdmLab.Cli.dll");
        Assert.True(File.Exists(cli), $"{cli} is not built (./lab build)");
        var psi = new ProcessStartInfo("dotnet", [cli, "info"]) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.Environment.Remove("ONEDNN_MAX_CPU_ISA");
        psi.Environment.Remove("DNNL_MAX_CPU_ISA");
        psi.Environment["ONEDNN_VERBOSE"] = "1";
        psi.Environment["LDMLAB_MKLDNN"] = "1";
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        Assert.True(p.WaitForExit(120_000), "ldmlab info did not finish");
        var text = stdout.Result + stderr;
        Assert.Equal(0, p.ExitCode);
        Assert.Contains("onednn_verbose,v1,info,cpu,isa:Intel AVX2", text);
        Assert.Contains("ISA AVX2", text);
    }
}

/// <summary>`ldmlab bench --json`: the documented cases, one JSON document, clear errors for bad arguments.</summary>
public class BenchCommandTests
{
    static int Run(out string output, params string[] args) => Run(out output, out _, args);

    static int Run(out string output, out string errors, params string[] args)
    {
        var (savedOut, savedErr) = (Console.Out, Console.Error);
        var (sw, se) = (new StringWriter(), new StringWriter());
        Console.SetOut(sw);
        Console.SetError(se);
        try { return LdmLab.Cli.Commands.Run(args); }
        finally { Console.SetOut(savedOut); Console.SetError(savedErr); output = sw.ToString(); errors = se.ToString(); }
    }

    [Fact]
    public void Json_run_of_one_case_prints_its_median_and_the_setup_decision()
    {
        int rc = Run(out var text, "bench", "--json", "--case", "vae-decode-64", "--threads", "1", "--onednn", "on,off");
        Assert.Equal(0, rc);
        var doc = System.Text.Json.Nodes.JsonNode.Parse(text)!;
        Assert.Contains("oneDNN (mkldnn) for CPU", (string)doc["setup_decision"]!);
        var results = doc["results"]!.AsArray();
        Assert.Equal(2, results.Count);
        Assert.All(results, r =>
        {
            Assert.Equal("vae-decode-64", (string)r!["case"]!);
            Assert.Equal(1, (int)r["threads"]!);
            Assert.Equal(10, (int)r["runs"]!);
            Assert.True((double)r["median_ms"]! > 0);
        });
        Assert.Equal([false, true], results.Select(r => (bool)r!["onednn"]!).Order());
    }

    [Theory]
    [InlineData("--case", "no-such-case", "no-such-case")]
    [InlineData("--threads", "3", "expected 1, 2")]
    [InlineData("--onednn", "maybe", "expected on, off")]
    [InlineData("--steps", "5", "unknown argument '--steps'")]
    public void Bad_arguments_name_the_argument(string name, string value, string expected)
    {
        int rc = Run(out _, out var errors, "bench", "--json", name, value);
        Assert.Equal(2, rc);
        Assert.Contains(expected, errors);
        Assert.Contains("ldmlab: ", errors);
    }
}
