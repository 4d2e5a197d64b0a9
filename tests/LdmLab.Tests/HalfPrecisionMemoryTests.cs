using LdmLab.Conditioning;
using LdmLab.Nn;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using LdmLab.Training;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Issue 26, parts 4 and 5: half precision, attention and VAE slicing, adaptive batch size, the text-encoding
/// cache.</summary>
public class HalfPrecisionMemoryTests
{
    /// <summary>Unit roundoff: half the distance from 1 to the next number (bfloat16 keeps 7 mantissa bits, float16
    /// 10).</summary>
    static double UnitRoundoff(ScalarType dtype) => dtype == ScalarType.BFloat16 ? Math.Pow(2, -8) : Math.Pow(2, -11);

    /// <summary>Rounding points on the longest path through a model, bounded by its weight layers (each convolution
    /// or linear rounds its output once; normalisations renormalise and add none of their own to first order).
    /// </summary>
    static int WeightLayers(nn.Module m) => m.modules().Count(x => x is Conv2d or Linear);

    /// <summary>
    /// The relative error that <paramref name="roundings"/> roundings at unit roundoff u allow in the probabilistic
    /// model of rounding errors (Higham and Mary 2019: independent, mean-zero errors add like a random walk),
    /// λ·√n·u with λ = 3 — the worst case n·u is 10–20× looser than anything measured here.
    /// </summary>
    static double RoundingBound(int roundings, ScalarType dtype) => 3 * Math.Sqrt(roundings) * UnitRoundoff(dtype);

    static double RelativeRms(Tensor a, Tensor reference) =>
        (a - reference).pow(2).mean().sqrt().item<float>() / reference.pow(2).mean().sqrt().item<float>();

    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public void Half_unet_stays_within_its_rounding_bound_and_keeps_norms_float32(ScalarType dtype)
    {
        var pipeline = PipelineTests.Tiny();
        var unet = pipeline.Unet;
        manual_seed(1);
        var z = randn(2, 4, 8, 8); var context = randn(2, 77, 32);                               // float32 inputs
        using var _ = no_grad();
        var reference = unet.Forward(z, tensor(500L), context);
        unet.ToPrecision(dtype);
        Assert.Equal(dtype, unet.ComputeDtype());
        foreach (var (name, p) in unet.named_parameters())
        {
            bool norm = name.Contains("norm");
            Assert.True(p.dtype == (norm ? ScalarType.Float32 : dtype), $"{name} is {p.dtype}");
        }
        var half = unet.Forward(z, tensor(500L), context);
        Assert.Equal(ScalarType.Float32, half.dtype);                                // handed out as it came in
        double bound = RoundingBound(WeightLayers(unet), dtype), error = RelativeRms(half, reference);
        Assert.True(error <= bound, $"relative RMS error {error:E2} > 3·√L·u = {bound:E2}");
        Assert.True(error > 0, "the half U-Net computed exactly what float32 did: were the weights cast at all?");
        unet.ToPrecision(ScalarType.Float32);
        Assert.True(unet.Forward(z, tensor(500L), context).allclose(reference, rtol: 0, atol: 1e-2));
    }

    [Fact]
    public void Bf16_pipeline_samples_within_the_bound_of_float32()
    {
        var pipeline = PipelineTests.Tiny();
        var options = new GenerationOptions
        {
            Prompts = ["an astronaut riding a horse"], Steps = 4, GuidanceScale = 1, Height = 16, Width = 16, Seed = 0,
        };
        var reference = pipeline.Generate(options);
        pipeline.To(ScalarType.BFloat16);
        Assert.All(pipeline.Vae.modules().Where(HalfPrecision.KeepsFloat32).SelectMany(m => m.parameters()),
            p => Assert.Equal(ScalarType.Float32, p.dtype));
        Assert.Equal(ScalarType.BFloat16, pipeline.Vae.ComputeDtype());
        Assert.Equal(ScalarType.BFloat16, pipeline.TextEncoder.ComputeDtype());
        var half = pipeline.Generate(options);
        Assert.Equal(ScalarType.Float32, half.Images.dtype);
        Assert.Equal(ScalarType.Float32, half.Latents.dtype);
        // no guidance, DDIM: the roundings of the text encoder once and of the U-Net at every step reach the
        // latents, the decoder's then reach the images
        int latentRoundings = WeightLayers(pipeline.TextEncoder) + options.Steps * WeightLayers(pipeline.Unet);
        double latentBound = RoundingBound(latentRoundings, ScalarType.BFloat16);
        double latentError = RelativeRms(half.Latents, reference.Latents);
        Assert.True(latentError <= latentBound, $"latents: relative RMS {latentError:E2} > {latentBound:E2}");
        Assert.True(latentError > 0, "bfloat16 sampled exactly what float32 did: were the weights cast at all?");
        double imageBound = RoundingBound(latentRoundings + WeightLayers(pipeline.Vae), ScalarType.BFloat16);
        double imageError = RelativeRms(half.Images - 0.5, reference.Images - 0.5);
        Assert.True(imageError <= imageBound, $"images: relative RMS {imageError:E2} > {imageBound:E2}");
        pipeline.To(ScalarType.BFloat16, vaeInFloat32: true);
        Assert.Equal(ScalarType.Float32, pipeline.Vae.ComputeDtype());
    }

    [Fact]
    public void Half_types_are_fast_only_where_onednn_has_their_kernels()
    {
        OneDnnDecision On(string cpu, string? cap) => new(true, "test", cap, cpu, null);
        Assert.False(HalfPrecision.FastOnCpu(ScalarType.BFloat16, On("AVX512_CORE_BF16", "AVX2")));   // Setup's cap
        Assert.True(HalfPrecision.FastOnCpu(ScalarType.BFloat16, On("AVX512_CORE_BF16", null)));
        Assert.True(HalfPrecision.FastOnCpu(ScalarType.BFloat16, On("AVX512_CORE_AMX", "avx512_core_bf16")));
        Assert.False(HalfPrecision.FastOnCpu(ScalarType.Float16, On("AVX512_CORE_BF16", null)));      // Zen 4
        Assert.True(HalfPrecision.FastOnCpu(ScalarType.Float16, On("AVX512_CORE_AMX", null)));
        Assert.False(HalfPrecision.FastOnCpu(ScalarType.BFloat16, new(false, "off", null, "AVX512_CORE_AMX", null)));
        Assert.False(HalfPrecision.FastOnCpu(ScalarType.BFloat16, null));
        Assert.True(HalfPrecision.FastOnCpu(ScalarType.Float32, null));
    }

    [Fact]
    public void Precision_other_than_float_types_is_refused()
    {
        TorchRuntime.Setup();
        var e = Assert.Throws<ArgumentException>(() => nn.Linear(2, 2).ToPrecision(ScalarType.Int8));
        Assert.Equal("dtype", e.ParamName);
        Assert.Contains("Int8", e.Message);
    }

    static (Attention layer, Tensor x, Tensor? context) Layer(bool cross)
    {
        TorchRuntime.Setup();
        manual_seed(4);
        var layer = new Attention(64, cross ? 32 : null, heads: 4, dimHead: 16);
        layer.eval();
        return (layer, randn(3, 50, 64), cross ? randn(3, 7, 32) : null);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Sliced_attention_equals_the_plain_processors(bool cross)
    {
        var (layer, x, context) = Layer(cross);
        using var _ = no_grad();
        var fused = layer.call(x, context);
        layer.Observer = (_, _) => { };                                      // an observer forces the explicit path
        var explicitPath = layer.call(x, context);
        layer.Observer = null;
        Assert.True(explicitPath.allclose(fused, rtol: 0, atol: 1e-5));
        foreach (int slice in new[] { 1, 5, 12, 100 })                        // 12 rows of batch·heads in all
        {
            layer.SliceSize = slice;
            var sliced = layer.call(x, context);
            Assert.True(sliced.allclose(explicitPath, rtol: 0, atol: 1e-5), $"slice {slice}");
        }
        Assert.Throws<ArgumentOutOfRangeException>(() => layer.SliceSize = 0);
    }

    [Fact]
    public void Attention_slicing_on_a_unet_keeps_its_output_and_observers_see_whole_maps()
    {
        var unet = PipelineTests.Tiny().Unet;
        manual_seed(2);
        var z = randn(2, 4, 8, 8); var context = randn(2, 77, 32);
        using var _ = no_grad();
        var plain = unet.Forward(z, tensor(10L), context);
        unet.EnableAttentionSlicing();
        Assert.All(unet.AttentionLayers(), l => Assert.Equal(Math.Max(1, l.Heads / 2), l.SliceSize));
        Assert.True(unet.Forward(z, tensor(10L), context).allclose(plain, rtol: 0, atol: 1e-5));
        unet.EnableAttentionSlicing(1);
        var maps = new List<long[]>();
        using (unet.ObserveCrossAttention((_, p) => maps.Add(p.shape)))
            Assert.True(unet.Forward(z, tensor(10L), context).allclose(plain, rtol: 0, atol: 1e-5));
        Assert.NotEmpty(maps);
        Assert.All(maps, shape => Assert.Equal(2, shape[0]));                  // the whole batch, not one slice
        unet.DisableAttentionSlicing();
        Assert.All(unet.AttentionLayers(), l => Assert.Null(l.SliceSize));
    }

    [Fact]
    public void Vae_slicing_decodes_what_one_call_decodes()
    {
        var pipeline = PipelineTests.Tiny();
        manual_seed(5);
        var latents = randn(3, 4, 8, 8);
        var whole = pipeline.Decode(latents);
        pipeline.EnableVaeSlicing();
        Assert.Equal(1, pipeline.VaeDecodeBatchSize);
        Assert.True(pipeline.Decode(latents).allclose(whole, rtol: 0, atol: 1e-5));
        pipeline.VaeDecodeBatchSize = 2;
        Assert.True(pipeline.Decode(latents).allclose(whole, rtol: 0, atol: 1e-5));
        var options = new GenerationOptions
        {
            Prompts = ["a", "b", "c"], Steps = 2, GuidanceScale = 1, Height = 16, Width = 16, Seed = 1,
        };
        var sliced = pipeline.Generate(options);
        pipeline.DisableVaeSlicing();
        Assert.True(pipeline.Generate(options).Images.allclose(sliced.Images, rtol: 0, atol: 1e-5));
        Assert.Throws<ArgumentOutOfRangeException>(() => pipeline.VaeDecodeBatchSize = 0);
    }

    [Fact]
    public void Adaptive_batch_scales_inversely_with_pixels()
    {
        Assert.Equal(8, AdaptiveBatchSize.ForPixels(8, 512, 512));                       // the base itself
        Assert.Equal(2, AdaptiveBatchSize.ForPixels(8, 1024, 1024));                     // 4× the pixels
        Assert.Equal(32, AdaptiveBatchSize.ForPixels(8, 256, 256));                      // a quarter
        Assert.Equal(1, AdaptiveBatchSize.ForPixels(1, 2048, 2048));                     // never below one
        Assert.Equal(16, AdaptiveBatchSize.ForPixels(8, 256, 256, maxBatch: 16));
        Assert.Equal(4, AdaptiveBatchSize.ForPixels(4, 28, 56, basePixels: 28 * 56));
        // the largest batch whose pixels fit the base budget, for every size
        foreach (var (h, w) in new[] { (768, 768), (512, 768), (640, 384), (100, 3000), (64, 64) })
        {
            int b = AdaptiveBatchSize.ForPixels(8, h, w);
            Assert.True((long)b * h * w <= 8L * 512 * 512 || b == 1, $"{h}×{w}: {b} is over the budget");
            Assert.True((long)(b + 1) * h * w > 8L * 512 * 512, $"{h}×{w}: {b + 1} would still fit");
        }
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => AdaptiveBatchSize.ForPixels(8, 0, 512));
        Assert.Equal("height", e.ParamName);
    }

    [Fact]
    public void Text_cache_evicts_the_least_recently_used_and_counts()
    {
        TorchRuntime.Setup();
        using var cache = new TextEncodingCache(capacity: 2);
        int calls = 0;
        Tensor Encode(float v) { calls++; return full([1, 3], v); }
        var a = cache.GetOrAdd("a", () => Encode(1));
        cache.GetOrAdd("b", () => Encode(2));
        var again = cache.GetOrAdd("a", () => Encode(99));                  // hit: "a" is now the most recent
        Assert.Equal(2, calls);
        Assert.True(again.equal(a).all().item<bool>());
        Assert.Equal(new[] { "a", "b" }, cache.Keys);
        cache.GetOrAdd("c", () => Encode(3));                                // full: "b" (least recent) goes
        Assert.Equal(new[] { "c", "a" }, cache.Keys);
        Assert.False(cache.TryGet("b", out _));
        again.Dispose();                                                     // the caller's reference only
        Assert.True(cache.TryGet("a", out var stillThere) && stillThere.equal(full([1, 3], 1f)).all().item<bool>());
        Assert.Equal((2L, 3L), (cache.Hits, cache.Misses));
        Assert.Throws<ArgumentOutOfRangeException>(() => new TextEncodingCache(0));
    }

    [Fact]
    public void Pipeline_text_cache_hits_return_the_same_embeddings_without_the_encoder()
    {
        var pipeline = PipelineTests.Tiny();
        var cache = pipeline.EnableTextEncodingCache(capacity: 8);
        var first = pipeline.EncodePrompts(["a red shoe", ""]);
        Assert.Equal((0L, 2L), (cache.Hits, cache.Misses));
        // break the encoder: a hit must not run it
        using (no_grad()) foreach (var p in pipeline.TextEncoder.parameters()) p.zero_();
        var second = pipeline.EncodePrompts(["a red shoe", ""]);
        Assert.Equal((2L, 2L), (cache.Hits, cache.Misses));
        Assert.True(second.equal(first).all().item<bool>());
        var fresh = pipeline.EncodePrompts(["a blue shoe"]);                 // a miss runs the (broken) encoder
        Assert.False(fresh.allclose(first[0..1]));
        pipeline.UseTokenizer(pipeline.Tokenizer);                           // own changes clear it
        Assert.Equal(0, cache.Count);
    }

    [Fact]
    public void Text_conditioned_unet_cache_gives_the_same_context_and_encodes_each_prompt_once()
    {
        TorchRuntime.Setup();
        manual_seed(0);
        var model = new TextConditionedUNet(Labs.TextToImageRecipe.UNetConfig, Labs.TextToImageRecipe.TextConfig);
        model.eval();
        var ids = model.Tokenize(["a shoe", "", "a bag", "", "a shoe"]);                             // [5, 20]
        using var _ = no_grad();
        var plain = model.TextContext(ids);
        model.TextEncodingCache = new TextEncodingCache(16);
        var cached = model.TextContext(ids);
        Assert.True(cached.allclose(plain, rtol: 0, atol: 1e-6));
        Assert.Equal((0L, 3L), (model.TextEncodingCache.Hits, model.TextEncodingCache.Misses));      // 3 distinct
        Assert.True(model.TextContext(ids).allclose(plain, rtol: 0, atol: 1e-6));
        Assert.Equal((3L, 3L), (model.TextEncodingCache.Hits, model.TextEncodingCache.Misses));
        model.train();                                                        // training never reads the cache
        model.TextContext(ids);
        Assert.Equal((3L, 3L), (model.TextEncodingCache.Hits, model.TextEncodingCache.Misses));
    }

    [Fact]
    public void Precision_takeaways_state_the_loss_against_float32_and_the_goal()
    {
        var runs = new[]
        {
            new Labs.PrecisionRun("float32", 200, 0.80, 10.0, 0, 0, 0),
            new Labs.PrecisionRun("bfloat16", 200, 0.795, 5.0, 0.4, 0.01, 0.02),
            new Labs.PrecisionRun("float16", 200, 0.75, 20.0, 0.2, 0.005, 0.01),
        };
        var lines = Labs.HalfPrecisionStudy.Takeaways(runs);
        Assert.Equal(2, lines.Count);
        Assert.Contains("0.5 points lost, meets", lines[0]);
        Assert.Contains("2.00× float32's speed", lines[0]);
        Assert.Contains("5.0 points lost, misses", lines[1]);
        Assert.Contains("0.50× float32's speed", lines[1]);
        Assert.Throws<ArgumentException>(() => Labs.HalfPrecisionStudy.Takeaways(runs[1..]));
    }
}
