using LdmLab.Compression;
using LdmLab.Interop;
using LdmLab.Runtime;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>int8 weight-only quantization (section 10.5.3): the per-channel maths, a quantized tiny U-Net against the
/// float one, the bytes saved, the keep predicate, the file round trip and its errors, layer replacement.</summary>
public class CompressionQuantizationTests(ITestOutputHelper output)
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);

    internal static UNet2DConditionModel TinyUNet()
    {
        var unet = UNet2DConditionModel.FromPretrained(Fixture("tiny-unet"));
        unet.eval();
        return unet;
    }

    internal static Dictionary<string, Tensor> Inputs() =>
        SafeTensors.Load(Path.Combine(Fixture("tiny-unet"), "tensors.safetensors"));

    static Tensor Run(nn.Module unet, Dictionary<string, Tensor> r)
    {
        using var _ = no_grad();
        return ((UNet2DConditionModel)unet).Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"]);
    }

    [Fact]
    public void Dequantized_weights_are_within_half_a_step_of_each_channel()
    {
        TorchRuntime.Setup();
        using var gen = new Generator(1);
        var w = randn([16, 8, 3, 3], generator: gen) * linspace(0.01, 3, 16).reshape(16, 1, 1, 1);
        w[5] = zeros(8, 3, 3);                                                // an all-zero output channel
        var (q, s) = Int8Quantizer.Quantize(w);
        Assert.Equal(ScalarType.Int8, q.dtype);
        Assert.Equal(new[] { 16L }, s.shape);
        var err = (Int8Quantizer.Dequantize(q, s) - w).abs().reshape(16, -1).amax(1);   // [16] max error per channel
        var qmax = q.to(ScalarType.Int32).abs().reshape(16, -1).amax(1);
        for (int c = 0; c < 16; c++)
        {
            float sc = s[c].item<float>();
            Assert.True(err[c].item<float>() <= sc * (0.5f + 1e-4f), $"channel {c}: {err[c].item<float>()} > {sc}/2");
            Assert.Equal(c == 5 ? 0 : 127, qmax[c].item<int>());              // the largest |W_c| maps to ±127
        }
        Assert.Equal(1f, s[5].item<float>());

        // LibTorch's own per-channel quantizer with the same scales and zero points 0 gives the same integers.
        var reference = quantize_per_channel(w, s.to(ScalarType.Float64), zeros(16, ScalarType.Int64), 0,
            ScalarType.QInt8).int_repr();
        long differ = (reference.to(ScalarType.Int32) - q.to(ScalarType.Int32)).count_nonzero().item<long>();
        output.WriteLine($"integers differing from torch.quantize_per_channel: {differ} of {q.numel()}");
        Assert.Equal(0, differ);
    }

    [Fact]
    public void A_quantized_tiny_unet_stays_close_to_the_float_one()
    {
        TorchRuntime.Setup();
        var r = Inputs();
        var unet = TinyUNet();
        var reference = Run(unet, r);
        int layers = unet.modules().Count(m => m is Linear or Conv2d);
        var report = Int8Weights.Quantize(unet);
        output.WriteLine(report.ToString());
        var quantized = Run(unet, r);

        // every Linear and Conv2d is int8 now except the kept key layers
        Assert.Equal(new[] { "conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2" },
            report.Kept.Select(k => k.path).Order());
        Assert.Equal(report.Kept.Count, unet.modules().Count(m => m is Linear or Conv2d));
        Assert.Equal(report.Quantized.Count, unet.modules().Count(m => m is Int8Linear or Int8Conv2d));
        Assert.Equal(layers - 4, report.Quantized.Count);

        double maxAbs = (quantized - reference).abs().max().item<float>();
        double rel = maxAbs / reference.abs().max().item<float>();
        double rms = (quantized - reference).pow(2).mean().sqrt().item<float>() / reference.std().item<float>();
        output.WriteLine($"max |Δ| = {maxAbs:E3} ({rel:P3} of max |y|), RMS Δ / std y = {rms:E3}");
        // measured: max |Δ| = 1.1e-2 (0.92 % of max |y|), RMS Δ / std y = 1.04e-2: each layer's rounding noise
        // (about s/√12 per weight) adds up over the layers in sequence; the bounds leave a factor of two
        Assert.True(rel < 0.02, $"max |Δ| {maxAbs} is {rel:P2} of max |y|");
        Assert.True(rms < 0.02, $"RMS Δ / std y = {rms}");
        Assert.True(maxAbs > 0, "quantization changed nothing: the layers were not replaced");
    }

    [Fact]
    public void Quantized_layers_shrink_almost_four_times()
    {
        TorchRuntime.Setup();
        var unet = TinyUNet();
        var layers = unet.named_modules().Where(m => m.module is Linear or Conv2d)
            .Where(m => !Int8Weights.UNetKeyLayers(m.name, m.module)).ToList();
        long weights = layers.Sum(l => PruningWeight(l.module).numel());
        long channels = layers.Sum(l => PruningWeight(l.module).shape[0]);
        long biases = layers.Sum(l => (l.module is Linear li ? li.bias : ((Conv2d)l.module).bias)?.numel() ?? 0);
        var report = Int8Weights.Quantize(unet);
        output.WriteLine(report.ToString());
        Assert.Equal(4 * (weights + biases), report.LayerBytesBefore);
        Assert.Equal(weights + 4 * channels + 4 * biases, report.LayerBytesAfter);   // 1 byte per weight, 4 per scale
        Assert.InRange(report.LayerCompression, 3.5, 4.0);
        Assert.Equal(report.ModelBytesBefore - report.LayerBytesBefore + report.LayerBytesAfter,
            report.ModelBytesAfter);
        Assert.Equal(report.ModelBytesAfter, Int8Weights.Bytes(unet));
    }

    static Tensor PruningWeight(nn.Module m) => m is Linear l ? l.weight : ((Conv2d)m).weight;

    [Fact]
    public void The_keep_predicate_is_honoured()
    {
        TorchRuntime.Setup();
        var unet = TinyUNet();
        var seen = new List<string>();
        var report = Int8Weights.Quantize(unet, (path, module) =>
        {
            seen.Add(path);
            Assert.True(module is Linear or Conv2d, path);
            return path.Contains(".attentions.");
        });
        Assert.NotEmpty(report.Quantized);
        Assert.All(report.Quantized, p => Assert.DoesNotContain(".attentions.", p));
        Assert.All(report.Kept, k => Assert.Contains(".attentions.", k.path));
        Assert.Equal(seen.Order(), report.Quantized.Concat(report.Kept.Select(k => k.path)).Order());
        var modules = unet.named_modules().ToDictionary(m => m.name, m => m.module);
        Assert.Contains(modules, m => m.Key == "conv_in" && m.Value is Int8Conv2d);   // not kept by this predicate
        Assert.All(report.Kept, k => Assert.True(modules[k.path] is Linear or Conv2d, k.path));
    }

    [Fact]
    public void A_quantized_state_dict_round_trips_through_a_file()
    {
        TorchRuntime.Setup();
        var r = Inputs();
        var unet = TinyUNet();
        var report = Int8Weights.Quantize(unet);
        var expected = Run(unet, r);
        var dir = Directory.CreateTempSubdirectory("ldmlab-int8-");
        try
        {
            var file = Path.Combine(dir.FullName, "unet-int8.safetensors");
            Int8Weights.Save(unet, file);
            var (entries, metadata) = SafeTensors.ReadHeader(file);
            Assert.Equal("ldmlab-int8", metadata["format"]);
            var q = entries.Single(e => e.Name == "down_blocks.0.resnets.0.conv1.weight");
            Assert.Equal("I8", q.DType);
            Assert.Equal(new long[] { 32, 32, 3, 3 }, q.Shape);
            var scale = entries.Single(e => e.Name == "down_blocks.0.resnets.0.conv1.weight_scale");
            Assert.Equal("F32", scale.DType);
            Assert.Equal(new[] { 32L }, scale.Shape);
            Assert.Equal("F32", entries.Single(e => e.Name == "conv_in.weight").DType);

            var fresh = TinyUNet();                                          // a float U-Net of the same config
            Int8Weights.Load(fresh, file);
            Assert.Equal(report.Quantized.Count, fresh.modules().Count(m => m is Int8Linear or Int8Conv2d));
            var state = unet.state_dict();
            var loaded = fresh.state_dict();
            Assert.Equal(state.Keys.Order(), loaded.Keys.Order());
            Assert.All(state, kv => Assert.True(kv.Value.equal(loaded[kv.Key]).all().item<bool>(), kv.Key));
            Assert.Equal(0.0, Parity.MaxAbsDiff(Run(fresh, r), expected));
        }
        finally { dir.Delete(true); }
    }

    [Theory]
    [InlineData("missing-scale")]
    [InlineData("wrong-shape")]
    [InlineData("negative-scale")]
    [InlineData("unknown-layer")]
    public void A_bad_quantized_file_is_refused_naming_the_key(string defect)
    {
        TorchRuntime.Setup();
        var unet = TinyUNet();
        Int8Weights.Quantize(unet);
        var tensors = unet.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        const string layer = "mid_block.resnets.0.conv2";
        string expectedKey = defect switch
        {
            "missing-scale" => Remove(tensors, $"{layer}.weight_scale"),
            "wrong-shape" => Set(tensors, $"{layer}.weight_scale", ones(3)),
            "negative-scale" => Set(tensors, $"{layer}.weight_scale", -ones(64)),
            _ => Set(tensors, "mid_block.resnets.0.conv9.weight", zeros([4, 4], ScalarType.Int8)),
        };
        if (defect == "unknown-layer") tensors["mid_block.resnets.0.conv9.weight_scale"] = ones(4);
        var dir = Directory.CreateTempSubdirectory("ldmlab-int8-bad-");
        try
        {
            var file = Path.Combine(dir.FullName, "bad.safetensors");
            SafeTensors.Save(file, tensors);
            var e = Assert.Throws<QuantizedStateException>(() => Int8Weights.Load(TinyUNet(), file));
            output.WriteLine(e.Message);
            Assert.Equal(expectedKey, e.Key);
            Assert.Equal(file, e.File);
        }
        finally { dir.Delete(true); }

        static string Remove(Dictionary<string, Tensor> d, string key) { d.Remove(key); return key; }
        static string Set(Dictionary<string, Tensor> d, string key, Tensor t) { d[key] = t; return key; }
    }

    /// <summary>A module whose layer is declared with TorchSharp's sealed type cannot take a replacement.</summary>
    sealed class TypedField : nn.Module<Tensor, Tensor>
    {
        readonly Linear fc = nn.Linear(4, 4);
        public TypedField() : base(nameof(TypedField)) => RegisterComponents();
        public override Tensor forward(Tensor x) => fc.call(x);
    }

    [Fact]
    public void Replacing_a_layer_keeps_its_place_and_refuses_a_field_that_cannot_hold_it()
    {
        TorchRuntime.Setup();
        var unet = TinyUNet();
        var modulesBefore = unet.named_modules().Select(m => m.name).ToList();
        var keysBefore = unet.state_dict().Keys.ToHashSet();
        const string path = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k";
        var old = ModuleSurgery.Replace(unet, path, Int8Linear.From((Linear)ModuleSurgery.Find(unet, path)));
        Assert.IsType<Linear>(old);
        Assert.IsType<Int8Linear>(ModuleSurgery.Find(unet, path));
        Assert.Equal(modulesBefore, unet.named_modules().Select(m => m.name));        // same place, same order
        keysBefore.Add($"{path}.weight_scale");                                        // weight is int8 now
        Assert.Equal(keysBefore.Order(), unet.state_dict().Keys.Order());
        Assert.Equal(ScalarType.Int8, unet.state_dict()[$"{path}.weight"].dtype);

        // a ModuleList element (to_out.0) is replaced through the list
        var toOut = path[..^"to_k".Length] + "to_out.0";
        ModuleSurgery.Replace(unet, toOut, Int8Linear.From((Linear)ModuleSurgery.Find(unet, toOut)));
        Assert.IsType<Int8Linear>(ModuleSurgery.Find(unet, toOut));
        Run(unet, Inputs());

        var typed = new TypedField();
        var e = Assert.Throws<ModuleReplacementException>(() =>
            ModuleSurgery.Replace(typed, "fc", Int8Linear.Empty(4, 4, true)));
        Assert.Equal("fc", e.Path);
        Assert.Contains("declared Linear", e.Message);
        var missing = Assert.Throws<ModuleReplacementException>(() => ModuleSurgery.Find(unet, "mid_block.nope"));
        Assert.Equal("mid_block.nope", missing.Path);
    }
}
