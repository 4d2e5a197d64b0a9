using System.Text;
using System.Text.Json.Nodes;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Interop;
using LdmLab.ParityChecks;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>One-file checkpoints in the original SD key names (fixture single-file-sd1-tiny, made by diffusers' own
/// converter): reading, writing, half precision, stray keys, pickles refused, bad files named.</summary>
public class SingleFileTests(ITestOutputHelper output)
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);
    static string ModelFile => Path.Combine(Fixture("single-file-sd1-tiny"), "model.safetensors");
    /// <summary>What the tiny file cannot say: 256-pixel images, a 32-wide text encoder with 4 heads.</summary>
    static readonly SingleFileOptions Tiny = new() { ImageSize = 256, TextEncoderHeads = 4 };

    [Fact]
    public void Parity_with_diffusers_converter_keys_weights_outputs_and_write_back()
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Fixture("single-file-sd1-tiny"));
        foreach (var c in checks) output.WriteLine(c.ToString());
        foreach (var part in new[]
                 {
                     "key names", "inferred configs", "unet weights", "vae weights", "text encoder weights",
                     "unet.sample", "vae.decode", "vae.posterior_mean", "written back",
                 })
            Assert.Contains(checks, c => c.Name.Contains(part));
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
    }

    static Tensor UNetOut(StableDiffusionPipeline p, Dictionary<string, Tensor> r)
    {
        using var _ = no_grad();
        return p.Unet.Forward(r["unet.latents"], r["unet.timesteps"], r["unet.encoder_hidden_states"]);
    }

    static Dictionary<string, Tensor> Inputs() =>
        SafeTensors.Load(Path.Combine(Fixture("single-file-sd1-tiny"), "tensors.safetensors"));

    [Fact]
    public void Float16_file_loads_widened_and_unrelated_keys_are_ignored()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var dir = TestPaths.TempDir("single-file-half");
        var pipe = StableDiffusionPipeline.FromSingleFile(ModelFile, Tiny);
        var half = Path.Combine(dir, "half.safetensors");
        pipe.SaveSingleFile(half, ScalarType.Float16);
        var (entries, _) = SafeTensors.ReadHeader(half);
        Assert.All(entries, e => Assert.Equal("F16", e.DType));
        long full = new FileInfo(ModelFile).Length;
        Assert.InRange(new FileInfo(half).Length, full * 0.45, full * 0.55);

        // as model sites ship them: EMA copies and the schedule's buffers beside the three components
        var tensors = SafeTensors.Load(half);
        tensors["model_ema.decay"] = tensor(0.9999f);
        tensors["model_ema.diffusion_modelinput_blocks00weight"] = zeros(3, 3);
        tensors["alphas_cumprod"] = ones(1000);
        var withExtras = Path.Combine(dir, "extras.safetensors");
        SafeTensors.Save(withExtras, tensors);
        var loaded = StableDiffusionPipeline.FromSingleFile(withExtras, Tiny);
        Assert.All(loaded.Unet.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        var r = Inputs();
        var reference = r["unet.sample"];
        double err = Parity.MaxAbsDiff(UNetOut(loaded, r), reference), scale = Parity.MaxAbs(reference);
        output.WriteLine($"float16 weights: max |Δ| {err:G3} on outputs up to {scale:G3}");
        Assert.True(err < 2e-2 * scale, $"{err} vs {scale}");
        Assert.True(err > 0, "float16 storage must round something");

        // bfloat16 files (what many fine-tunes ship) load the same way, rounding more coarsely
        var bf16 = Path.Combine(dir, "bf16.safetensors");
        pipe.SaveSingleFile(bf16, ScalarType.BFloat16);
        Assert.All(SafeTensors.ReadHeader(bf16).entries, e => Assert.Equal("BF16", e.DType));
        double bfErr = Parity.MaxAbsDiff(UNetOut(StableDiffusionPipeline.FromSingleFile(bf16, Tiny), r), reference);
        output.WriteLine($"bfloat16 weights: max |Δ| {bfErr:G3}");
        Assert.InRange(bfErr, err, 1e-1 * scale);
    }

    [Fact]
    public void Diffusers_folder_and_single_file_round_trip_both_ways()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var dir = TestPaths.TempDir("single-file-roundtrip");
        var r = Inputs();
        var fromFile = StableDiffusionPipeline.FromSingleFile(ModelFile, Tiny);
        fromFile.SavePretrained(Path.Combine(dir, "folder"));                    // single file → diffusers folder
        var folder = StableDiffusionPipeline.FromPretrained(Path.Combine(dir, "folder"));
        Assert.Equal(0, Parity.MaxAbsDiff(UNetOut(folder, r), UNetOut(fromFile, r)));
        Assert.Equal("PNDMScheduler", folder.SchedulerClass);

        // diffusers folder → single file (for A1111 users) → read back: the same images
        var tiny = PipelineTests.Tiny();
        var file = Path.Combine(dir, "tiny.safetensors");
        tiny.SaveSingleFile(file);
        var again = StableDiffusionPipeline.FromSingleFile(file, new SingleFileOptions
        {
            ImageSize = tiny.Unet.Config.SampleSize * tiny.VaeScaleFactor,
            TextEncoderHeads = tiny.TextEncoder.Config.NumAttentionHeads,
            UNetHeads = tiny.Unet.Config.Heads(0), NormNumGroups = tiny.Unet.Config.NormNumGroups,
        });
        var unetBack = again.Unet.state_dict();
        var vaeBack = again.Vae.state_dict();
        foreach (var (k, t) in tiny.Unet.state_dict()) Assert.Equal(0, Parity.MaxAbsDiff(t, unetBack[k]));
        foreach (var (k, t) in tiny.Vae.state_dict()) Assert.Equal(0, Parity.MaxAbsDiff(t, vaeBack[k]));
        var ids = tensor(tiny.Tokenizer.Encode("a red dress").Ids).unsqueeze(0);
        using (no_grad())
            Assert.Equal(0, Parity.MaxAbsDiff(tiny.TextEncoder.Forward(ids).LastHiddenState,
                again.TextEncoder.Forward(ids).LastHiddenState));
    }

    [Fact]
    public void OpenClip_text_tower_of_sd2_files_is_split_into_transformers_names()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        // an SD 2-style tower (GELU) as wide as the tiny U-Net's context: 3 layers stored, of which the pipeline uses
        // the first 2 (SD 2 conditions on the penultimate layer)
        var config = ClipTextConfig.OpenClipVitH with
        {
            VocabSize = 49408,
            HiddenSize = 32,
            IntermediateSize = 48,
            NumHiddenLayers = 3,
            NumAttentionHeads = 2,
            ProjectionDim = 32,
        };
        manual_seed(3);
        var full = new ClipTextModel(config);
        var sd = full.state_dict();
        var file = SafeTensors.Load(ModelFile).Where(kv => !kv.Key.StartsWith(SingleFileKeys.ClipPrefix))
            .ToDictionary(kv => kv.Key, kv => kv.Value);
        const string p = SingleFileKeys.OpenClipPrefix;
        file[p + "token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"];
        file[p + "positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"];
        file[p + "ln_final.weight"] = sd["text_model.final_layer_norm.weight"];
        file[p + "ln_final.bias"] = sd["text_model.final_layer_norm.bias"];
        file[p + "text_projection"] = randn(32, 32);
        file[p + "logit_scale"] = tensor(4.6f);
        for (int i = 0; i < 3; i++)
        {
            string ours = $"text_model.encoder.layers.{i}.", theirs = $"{p}transformer.resblocks.{i}.";
            foreach (var kind in new[] { "weight", "bias" })
            {
                file[$"{theirs}attn.in_proj_{kind}"] = cat([sd[$"{ours}self_attn.q_proj.{kind}"],
                    sd[$"{ours}self_attn.k_proj.{kind}"], sd[$"{ours}self_attn.v_proj.{kind}"]], 0);
                file[$"{theirs}attn.out_proj.{kind}"] = sd[$"{ours}self_attn.out_proj.{kind}"];
                file[$"{theirs}ln_1.{kind}"] = sd[$"{ours}layer_norm1.{kind}"];
                file[$"{theirs}ln_2.{kind}"] = sd[$"{ours}layer_norm2.{kind}"];
                file[$"{theirs}mlp.c_fc.{kind}"] = sd[$"{ours}mlp.fc1.{kind}"];
                file[$"{theirs}mlp.c_proj.{kind}"] = sd[$"{ours}mlp.fc2.{kind}"];
            }
        }
        var path = Path.Combine(TestPaths.TempDir("single-file-sd2"), "sd2.safetensors");
        SafeTensors.Save(path, file);
        var pipe = StableDiffusionPipeline.FromSingleFile(path, Tiny with { TextEncoderHeads = 2 });
        Assert.Equal(2, pipe.TextEncoder.Config.NumHiddenLayers);
        Assert.Equal("gelu", pipe.TextEncoder.Config.HiddenAct);
        Assert.Equal(0, pipe.Tokenizer.PadId);                                  // SD 2 pads with "!"
        // the loaded tower is the stored one without its last layer: its output equals the full model's
        // second-to-last hidden state through the final layer norm
        var ids = tensor(pipe.Tokenizer.Encode("a pair of boots").Ids).unsqueeze(0);
        using var _ = no_grad();
        var states = full.Forward(ids, outputHiddenStates: true).HiddenStates!;
        var expected = nn.functional.layer_norm(states[^2], [32], sd["text_model.final_layer_norm.weight"],
            sd["text_model.final_layer_norm.bias"], config.LayerNormEps);
        Assert.True(Parity.MaxAbsDiff(pipe.TextEncoder.Forward(ids).LastHiddenState, expected) < 1e-5);
        Assert.Throws<NotSupportedException>(() => pipe.SaveSingleFile(path + ".back"));
    }

    [Fact]
    public void What_a_file_cannot_say_follows_diffusers_rule_unless_given()
    {
        var none = new SingleFileOptions();
        Assert.Equal((768, "v_prediction"), Pair(none.Resolved(openClip: true, inChannels: 4)));      // SD 2.x 768-v
        Assert.Equal((512, "epsilon"), Pair(none.Resolved(openClip: true, inChannels: 9)));           // SD 2 inpainting
        Assert.Equal((512, "epsilon"), Pair(none.Resolved(openClip: false, inChannels: 4)));          // SD 1.x
        var base512 = new SingleFileOptions { ImageSize = 512, PredictionType = "epsilon" };          // SD 2.x base
        Assert.Equal((512, "epsilon"), Pair(base512.Resolved(openClip: true, inChannels: 4)));
        Assert.Throws<ArgumentException>(() => new SingleFileOptions { PredictionType = "x0" }.Resolved(false, 4));
        static (int?, string?) Pair(SingleFileOptions o) => (o.ImageSize, o.PredictionType);
    }

    [Fact]
    public void Pickles_are_refused_unopened_and_bad_keys_are_named()
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("single-file-bad");
        var ckpt = Path.Combine(dir, "model.ckpt");
        File.WriteAllBytes(ckpt, [0x80, 0x02, 0x7d, 0x71]);
        var e = Assert.Throws<SingleFileException>(() => StableDiffusionPipeline.FromSingleFile(ckpt));
        Assert.Contains("never unpickles", e.Message);
        var zipped = Path.Combine(dir, "renamed.safetensors");                  // a torch.save zip under another name
        File.WriteAllBytes(zipped, [.. "PK\u0003\u0004"u8, 0, 0, 0, 0]);
        Assert.Contains("pickled", Refused(zipped, null).Message);

        var tensors = SafeTensors.Load(ModelFile);
        string Write(string name, Dictionary<string, Tensor> t)
        {
            var path = Path.Combine(dir, name);
            SafeTensors.Save(path, t);
            return path;
        }
        // an unknown key inside the U-Net
        var stray = new Dictionary<string, Tensor>(tensors)
        {
            ["model.diffusion_model.input_blocks.1.9.weight"] = zeros(2),
        };
        var se = Refused(Write("stray.safetensors", stray), Tiny);
        Assert.Equal("model.diffusion_model.input_blocks.1.9.weight", se.Key);
        // a missing half of the VAE's attention
        var missing = new Dictionary<string, Tensor>(tensors);
        missing.Remove("first_stage_model.decoder.mid.attn_1.q.weight");
        se = Refused(Write("missing.safetensors", missing), Tiny);
        Assert.Equal("first_stage_model.decoder.mid.attn_1.q.weight", se.Key);
        Assert.Contains("missing.safetensors", se.Message);
        // a wrong shape
        var shaped = new Dictionary<string, Tensor>(tensors) { ["model.diffusion_model.out.0.weight"] = zeros(7) };
        se = Refused(Write("shape.safetensors", shaped), Tiny);
        Assert.Contains("out.0.weight", se.Message);
        // no text encoder
        var noText = tensors.Where(kv => !kv.Key.StartsWith("cond_stage_model."))
            .ToDictionary(kv => kv.Key, kv => kv.Value);
        Assert.Contains("no text encoder", Refused(Write("notext.safetensors", noText), Tiny).Message);
        // an SDXL file
        var xl = new Dictionary<string, Tensor>(tensors) { ["conditioner.embedders.0.transformer.x"] = zeros(1) };
        Assert.Contains("SDXL", Refused(Write("xl.safetensors", xl), Tiny).Message);
        // the tiny text encoder's width (32) says nothing about its heads: the error asks for them
        Assert.Contains("TextEncoderHeads", Refused(ModelFile, Tiny with { TextEncoderHeads = null }).Message);
    }

    static SingleFileException Refused(string path, SingleFileOptions? options) =>
        Assert.Throws<SingleFileException>(() => StableDiffusionPipeline.FromSingleFile(path, options));

    [Fact]
    public void Fuzzed_headers_give_typed_errors_naming_the_file()
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("fuzz-single-file");
        var valid = File.ReadAllBytes(ModelFile);
        var headerLength = (int)BitConverter.ToUInt64(valid, 0);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(valid, 8, headerLength))!.AsObject();
        var data = valid[(8 + headerLength)..];
        var keys = header.Select(kv => kv.Key).Where(k => k != "__metadata__").ToList();
        var path = Path.Combine(dir, "case.safetensors");
        var outcome = Fuzz.Run(150, 7, (rng, _) =>
        {
            var h = (JsonObject)header.DeepClone();
            for (int m = rng.Next(1, 4); m > 0; m--)
            {
                var key = keys[rng.Next(keys.Count)];
                if (!h.ContainsKey(key)) continue;
                switch (rng.Next(4))
                {
                    case 0: h.Remove(key); break;                                                   // a key lost
                    case 1:                                                                         // a key renamed
                    {
                        var node = h[key]!.DeepClone();
                        h.Remove(key);
                        var renamed = key.Remove(rng.Next(key.Length), 1);
                        h[renamed] = node;
                        break;
                    }
                    case 2:                                                                         // a shape changed
                    {
                        var shape = h[key]!["shape"]!.AsArray();
                        if (shape.Count > 0) shape[rng.Next(shape.Count)] = rng.Next(0, 4);
                        break;
                    }
                    default: h[key]!["dtype"] = rng.Next(2) == 0 ? "F16" : "BOOL"; break;          // a dtype changed
                }
            }
            var bytes = Encoding.UTF8.GetBytes(h.ToJsonString());
            File.WriteAllBytes(path, [.. BitConverter.GetBytes((ulong)bytes.Length), .. bytes, .. data]);
            StableDiffusionPipeline.FromSingleFile(path, Tiny);
        }, (e, _) => e is SingleFileException or DatasetException && e.Message.Contains(path));
        output.WriteLine("single file: " + outcome);
        Assert.True(outcome.Kinds.Keys.Count(k => k.StartsWith("SingleFileException")) >= 3, outcome.ToString());
    }
}
