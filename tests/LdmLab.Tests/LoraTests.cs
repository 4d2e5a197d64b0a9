using System.Text;
using LdmLab.Adapters;
using LdmLab.Conditioning;
using LdmLab.Interop;
using LdmLab.ParityChecks;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using LdmLab.UNet;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>LoRA (section 10.5.2): the adapter's maths, its files in diffusers' and kohya's dialects against
/// diffusers' outputs, and typed errors for bad files.</summary>
public class LoraTests(ITestOutputHelper output)
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);

    static UNet2DConditionModel TinyUNet()
    {
        var unet = UNet2DConditionModel.FromPretrained(Fixture("tiny-unet"));
        unet.eval();
        return unet;
    }

    static Dictionary<string, Tensor> Inputs() => SafeTensors.Load(Path.Combine(Fixture("lora-tiny-unet"),
        "tensors.safetensors"));

    static Tensor Run(UNet2DConditionModel unet, Dictionary<string, Tensor> r)
    {
        using var _ = no_grad();
        return unet.Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"]);
    }

    /// <summary>Both fixture files reproduce diffusers: unmerged at scale 1, fused at 1 and 0.5 (outputs and fused
    /// weights), unfused back to the base output; every key matched. The kohya file's α/r = 0.5 is in these outputs:
    /// without it the unmerged output would be off by half the LoRA's effect (0.12 of a 0.24 change).</summary>
    [Theory]
    [InlineData("lora-tiny-unet", "diffusers")]
    [InlineData("lora-kohya-tiny-unet", "kohya")]
    public void Lora_files_match_diffusers(string fixture, string dialect)
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Fixture(fixture));
        foreach (var c in checks) output.WriteLine(c.ToString());
        Assert.Equal(10, checks.Count);
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
        Assert.Contains(checks, c => c.Name.Contains($"({dialect}, 32 layers)"));
        if (dialect == "kohya")
        {
            var load = LoraFiles.Read(Path.Combine(Fixture(fixture), "tiny_unet_kohya_lora.safetensors"), TinyUNet());
            Assert.All(load.Adapter.Layers.Values, l => Assert.Equal((4, 2.0, 0.5), (l.Rank, l.Alpha, l.Factor)));
        }
    }

    [Fact]
    public void A_new_adapter_changes_nothing_and_trains_only_its_factors()
    {
        TorchRuntime.Setup();
        var unet = TinyUNet();
        var r = Inputs();
        var before = Run(unet, r);
        var adapter = LoraAdapter.Create(unet, "unet", rank: 2, alpha: 4, seed: 1);
        Assert.Equal(32, adapter.Layers.Count);                          // to_q/k/v/out.0 of 8 attention layers
        using (adapter.Attach(unet))
        {
            Assert.Equal(0.0, (Run(unet, r) - before).abs().max().item<float>());       // B = 0: exactly the base
            foreach (var p in unet.parameters()) p.requires_grad = false;
            using var scope = NewDisposeScope();
            var loss = unet.Forward(r["latents"], r["timesteps"], r["encoder_hidden_states"]).pow(2).mean();
            loss.backward();
        }
        Assert.All(unet.parameters(), p => Assert.True(p.grad is null));               // the base got nothing
        var ups = adapter.Layers.Values.Select(l => l.Up.grad).ToList();
        Assert.All(ups, g => Assert.NotNull(g));
        Assert.True(ups.Sum(g => g!.abs().sum().item<float>()) > 0, "B receives gradient at B = 0");
        Assert.Equal(adapter.Layers.Count * 2, adapter.parameters().Count());
    }

    [Fact]
    public void Fuse_unfuse_and_two_adapters_at_once()
    {
        TorchRuntime.Setup();
        var unet = TinyUNet();
        var r = Inputs();
        var weights = unet.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var a = LoraFiles.Read(Path.Combine(Fixture("lora-tiny-unet"), LoraFiles.DiffusersFileName), unet).Adapter;
        var b = LoraFiles.Read(Path.Combine(Fixture("lora-kohya-tiny-unet"), "tiny_unet_kohya_lora.safetensors"), unet)
            .Adapter;
        Tensor both;
        using (a.Attach(unet, scale: 0.7))
        using (b.Attach(unet, scale: 0.3))
            both = Run(unet, r);
        a.Fuse(unet, scale: 0.7);
        b.Fuse(unet, scale: 0.3);
        Assert.Throws<InvalidOperationException>(() => a.Fuse(unet));                // twice is refused
        Assert.True((Run(unet, r) - both).abs().max().item<float>() < 1e-5, "fused = unmerged, two adapters mixed");
        b.Unfuse(unet);
        a.Unfuse(unet);
        // fuse then unfuse: float32 rounding only, within 1e-6 of weights of magnitude ~0.2
        foreach (var (k, v) in unet.state_dict())
            Assert.True((v - weights[k]).abs().max().item<float>() < 1e-6, k);
    }

    [Fact]
    public void Saved_files_read_back_in_both_dialects()
    {
        TorchRuntime.Setup();
        var unet = TinyUNet();
        var r = Inputs();
        var kohya = LoraFiles.Read(Path.Combine(Fixture("lora-kohya-tiny-unet"), "tiny_unet_kohya_lora.safetensors"),
            unet).Adapter;                                                              // α/r = 0.5
        Tensor expected;
        using (kohya.Attach(unet)) expected = Run(unet, r);
        var dir = TestPaths.TempDir("lora-save");
        var asDiffusers = Path.Combine(dir, LoraFiles.DiffusersFileName);
        var asKohya = Path.Combine(dir, "kohya.safetensors");
        LoraFiles.SaveDiffusers(kohya, asDiffusers);
        LoraFiles.SaveKohya(kohya, asKohya);
        Assert.Equal("pt", SafeTensors.ReadHeader(asDiffusers).metadata["format"]);
        Assert.Contains(SafeTensors.ReadHeader(asDiffusers).entries, e =>
            e.Name == "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0.lora.up.weight");
        foreach (var (file, dialect) in new[] { (asDiffusers, "diffusers"), (asKohya, "kohya") })
        {
            var back = LoraFiles.Read(file, unet);
            Assert.Equal(dialect, back.Dialect);
            Assert.Empty(back.Unmatched);
            using (back.Adapter.Attach(unet))
                Assert.True((Run(unet, r) - expected).abs().max().item<float>() < 1e-5, dialect);
        }
    }

    [Fact]
    public void Text_encoder_layers_are_read_by_their_transformers_names()
    {
        TorchRuntime.Setup();
        var unet = TinyUNet();
        var clip = ClipTextModel.FromPretrained(Fixture("tiny-clip-text"));
        var adapter = LoraAdapter.Create(clip, "text_encoder", rank: 2, seed: 3);
        foreach (var l in adapter.Layers.Values) { using var _ = no_grad(); l.Up.normal_(); }
        var dir = TestPaths.TempDir("lora-te");
        var file = Path.Combine(dir, "te.safetensors");
        LoraFiles.SaveKohya(adapter, file);
        Assert.Contains(SafeTensors.ReadHeader(file).entries, e =>
            e.Name == "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight");
        var back = LoraFiles.Read(file, unet, clip);
        Assert.Equal(adapter.Layers.Keys.Order(), back.Adapter.Layers.Keys.Order());
        var withoutClip = LoraFiles.Read(Path.Combine(Fixture("lora-tiny-unet"), LoraFiles.DiffusersFileName), unet);
        Assert.Empty(withoutClip.Unmatched);
        var ex = Assert.Throws<AdapterFormatException>(() => LoraFiles.Read(file, unet));   // no text encoder given
        Assert.Contains("no LoRA pair matches", ex.Message);
    }

    [Fact]
    public void Bad_files_are_typed_errors_naming_the_key()
    {
        TorchRuntime.Setup();
        var unet = TinyUNet();
        var dir = TestPaths.TempDir("lora-bad");
        var good = SafeTensors.Load(Path.Combine(Fixture("lora-tiny-unet"), LoraFiles.DiffusersFileName));
        const string q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q";
        string Write(string name, Action<Dictionary<string, Tensor>> change)
        {
            var t = new Dictionary<string, Tensor>(good);
            change(t);
            var path = Path.Combine(dir, name);
            SafeTensors.Save(path, t);
            return path;
        }
        var wrongShape = Write("shape.safetensors", t => t[$"{q}.lora.down.weight"] = zeros(4, 31));
        var e1 = Assert.Throws<AdapterFormatException>(() => LoraFiles.Read(wrongShape, unet));
        Assert.Equal($"{q}.lora.down.weight", e1.Key);
        Assert.Contains("do not fit the Linear weight [32, 32]", e1.Message);
        var noUp = Write("half.safetensors", t => t.Remove($"{q}.lora.up.weight"));
        var e2 = Assert.Throws<AdapterFormatException>(() => LoraFiles.Read(noUp, unet));
        Assert.Contains("has no up (B) half", e2.Message);
        Assert.Contains($"{q}.lora.down.weight", e2.Message);
        var unknown = Write("unknown.safetensors", t => t["unet.no_such_block.to_q.lora.down.weight"] = zeros(4, 32));
        Assert.Equal(["unet.no_such_block.to_q.lora.down.weight"], LoraFiles.Read(unknown, unet).Unmatched);
        var pickle = Path.Combine(dir, "model.ckpt");
        File.WriteAllBytes(pickle, [0x80, 0x02]);
        Assert.Contains("pickle", Assert.Throws<AdapterFormatException>(() => LoraFiles.Read(pickle, unet)).Message);
    }

    /// <summary>diffusers' pipeline API: load_lora_weights attaches to the U-Net (and text encoder), fuse_lora merges
    /// the same update, and unloading gives the base pipeline back.</summary>
    [Fact]
    public void A_pipeline_loads_fuses_and_unloads_a_lora_file()
    {
        TorchRuntime.Setup();
        var pipeline = PipelineTests.Tiny();
        var options = new GenerationOptions
        {
            Prompts = ["an astronaut riding a horse"], Steps = 4, GuidanceScale = 7.5, Height = 16, Width = 16,
            Seed = 1,
        };
        var plain = pipeline.Generate(options).Latents;
        Tensor attached, fused;
        var file = Path.Combine(Fixture("lora-tiny-unet"), LoraFiles.DiffusersFileName);
        using (var lora = pipeline.LoadLoraWeights(file, scale: 0.8))
        {
            Assert.Empty(lora.Load.Unmatched);
            attached = pipeline.Generate(options).Latents;
            lora.Fuse();
            fused = pipeline.Generate(options).Latents;
        }
        var after = pipeline.Generate(options).Latents;
        Assert.True((attached - plain).abs().max().item<float>() > 1e-3, "the LoRA changes the result");
        Assert.True((fused - attached).abs().max().item<float>() < 1e-4, "fused = attached");
        double back = (after - plain).abs().max().item<float>(), effect = (attached - plain).abs().max().item<float>();
        // unfuse subtracts what fuse added (as diffusers and PEFT do): float32 rounding, measured 2.4e-5 after four
        // guided steps against a LoRA effect of 2.8 on these latents
        Assert.True(back < 1e-4, $"unloaded: the base again (max |diff| {back:G3}; the LoRA's effect {effect:G3})");
    }

    /// <summary>Mutated LoRA files (bytes, header text, tensors renamed or reshaped): each loads or fails with a
    /// typed error naming the file, fast and within bounded memory.</summary>
    [Fact]
    public void Fuzzed_lora_files()
    {
        TorchRuntime.Setup();
        var unet = TinyUNet();
        var dir = TestPaths.TempDir("fuzz-lora");
        var valid = File.ReadAllBytes(Path.Combine(Fixture("lora-kohya-tiny-unet"),
            "tiny_unet_kohya_lora.safetensors"));
        int headerLength = (int)BitConverter.ToUInt64(valid, 0);
        var header = Encoding.UTF8.GetString(valid, 8, headerLength);
        var data = valid[(8 + headerLength)..];
        var path = Path.Combine(dir, "case.safetensors");
        var outcome = Fuzz.Run(1500, 7, (rng, _) =>
        {
            byte[] bytes;
            if (rng.Next(3) == 0) bytes = Fuzz.Mutate(valid, rng);
            else
            {
                var text = Fuzz.MutateJson(header, rng, rng.Next(2) == 0 ? (0, 64) : null);
                if (rng.Next(4) == 0) text = text.Replace(".lora_up.", rng.Next(2) == 0 ? ".lora_upp." : ".lora_down.");
                if (rng.Next(6) == 0) text = text.Replace("attn1_to_q", "attn9_to_q");
                var h = Encoding.UTF8.GetBytes(text);
                bytes = [.. BitConverter.GetBytes((ulong)h.Length), .. h, .. data];
            }
            File.WriteAllBytes(path, bytes);
            var load = LoraFiles.Read(path, unet);
            load.Adapter.Dispose();
        }, (e, _) => (e is AdapterFormatException || Fuzz.NamesFile(e, path)) && e.Message.Contains(path));
        output.WriteLine("lora: " + outcome);
        Assert.True(outcome.Kinds.Keys.Count(k => k.StartsWith("AdapterFormatException")) >= 2, outcome.ToString());
    }
}
