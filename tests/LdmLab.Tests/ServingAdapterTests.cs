using System.Text.Json;
using LdmLab.Adapters;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using LdmLab.Serving;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>The tiny server with two LoRA adapters written by the test: "style" (U-Net and text encoder layers)
/// and "shape" (U-Net only), B drawn at random so that each changes the image. No result cache: a request asked
/// again is computed again (base → adapter → base must give the base bytes from the model itself).</summary>
public sealed class AdapterServingFixture : IAsyncLifetime
{
    public string Dir { get; } = TestPaths.TempDir("serve-lora");
    public ServingFixture Serving { get; private set; } = null!;
    public string Style => Path.Combine(Dir, "style.safetensors");
    public string Shape => Path.Combine(Dir, "shape.safetensors");

    /// <summary>A rank-2 adapter on <paramref name="pipeline"/>'s attention projections with B ~ N(0, 1)
    /// (Create starts B at 0: no change).</summary>
    public static LoraAdapter Adapter(StableDiffusionPipeline pipeline, long seed, bool textEncoder)
    {
        var layers = LoraAdapter.Create(pipeline.Unet, "unet", rank: 2, seed: seed).Layers.ToList();
        if (textEncoder)
            layers.AddRange(LoraAdapter.Create(pipeline.TextEncoder, "text_encoder", rank: 2, seed: seed + 1).Layers);
        using var generator = new Generator((ulong)seed);
        using (no_grad())
            foreach (var (_, layer) in layers) layer.Up.copy_(randn(layer.Up.shape, generator: generator));
        return new LoraAdapter(layers);
    }

    public async Task InitializeAsync()
    {
        TorchRuntime.Setup();
        var pipeline = PipelineTests.Tiny();
        LoraFiles.SaveDiffusers(Adapter(pipeline, 5, textEncoder: true), Style);
        LoraFiles.SaveDiffusers(Adapter(pipeline, 9, textEncoder: false), Shape);
        Serving = new ServingFixture
        {
            Options = ServingFixture.Defaults with
            {
                ResultCacheCapacity = 0,
                Adapters = new Dictionary<string, string> { ["style"] = Style, ["shape"] = Shape },
            },
        };
        await Serving.InitializeAsync();
    }

    public Task DisposeAsync() => Serving.DisposeAsync();
}

/// <summary>
/// POST /v1/images with "adapters": the image is what the pipeline gives with the adapter attached, the next
/// request sees the base model again, bad adapter fields are 400s naming the field, a file that does not fit the
/// model stops the start-up naming the file, and requests with other adapters never share a batch.
/// </summary>
public class ServingAdapterTests(AdapterServingFixture a) : IClassFixture<AdapterServingFixture>
{
    ServingFixture F => a.Serving;

    const string Base = """{"prompt": "a bag on the left", "steps": 3, "seed": 7""";

    async Task<byte[]> Png(string body)
    {
        var id = await F.Submit(body);
        var job = await F.Finished(id);
        Assert.True((string)job["state"]! == "succeeded", job.ToJsonString());
        return await F.Client.GetByteArrayAsync($"/v1/jobs/{id}/image");
    }

    /// <summary>The largest channel difference in 0..255 between two 16×16 PNGs.</summary>
    static int Worst(Image<Rgb24> expected, byte[] png)
    {
        using var served = SixLabors.ImageSharp.Image.Load<Rgb24>(png);
        int worst = 0;
        for (int y = 0; y < expected.Height; y++)
            for (int x = 0; x < expected.Width; x++)
            {
                var (p, q) = (expected[x, y], served[x, y]);
                worst = Math.Max(worst, new[] { p.R - q.R, p.G - q.G, p.B - q.B }.Max(Math.Abs));
            }
        return worst;
    }

    [Fact]
    public async Task An_adapter_changes_the_image_as_attached_and_the_next_request_sees_the_base_again()
    {
        var before = await Png(Base + "}");
        var adapted = await Png(Base + """, "adapters": [{"name": "style", "scale": 0.8}]}""");
        var after = await Png(Base + "}");
        Assert.Equal(before, after);                                 // detached: the base model's very bytes
        Assert.NotEqual(before, adapted);

        var reference = PipelineTests.Tiny();
        var adapter = LoraFiles.Read(a.Style, reference.Unet, reference.TextEncoder).Adapter;
        Assert.Contains(adapter.Layers.Keys, k => k.StartsWith("text_encoder.", StringComparison.Ordinal));
        using var scope = NewDisposeScope();
        var options = new GenerationOptions
        {
            Prompts = ["a bag on the left"], NegativePrompts = [""], Steps = 3, GuidanceScale = 7.5, Seed = 7,
            Height = 16, Width = 16,
        };
        using var plain = reference.Generate(options).Picture(0);
        int baseWorst = Worst(plain, before);
        Assert.True(baseWorst <= 1, $"base image differs from the pipeline's by {baseWorst}/255");
        Image<Rgb24> attached;
        using (adapter.Attach(reference.Unet, "unet", 0.8))
        using (adapter.Attach(reference.TextEncoder, "text_encoder", 0.8))
            attached = reference.Generate(options).Picture(0);
        using (attached)
        {
            int worst = Worst(attached, adapted);
            Assert.True(worst <= 1, $"adapter image differs from the attached pipeline's by {worst}/255");
            Assert.True(Worst(attached, before) > 1, "the adapter did not change the image");
        }
    }

    [Fact]
    public async Task The_job_echoes_its_adapters_and_metrics_count_them()
    {
        double counted = await F.Metric("ldmlab_adapter_requests_total{adapter=\"shape\"}");
        var id = await F.Submit(Base + """, "adapters": [{"name": "shape"}]}""");
        var job = await F.Finished(id);
        var adapters = job["parameters"]!["adapters"]!.AsArray();
        Assert.Single(adapters);
        Assert.Equal("shape", (string)adapters[0]!["name"]!);
        Assert.Equal(1.0, (double)adapters[0]!["scale"]!);
        Assert.Equal(counted + 1, await F.Metric("ldmlab_adapter_requests_total{adapter=\"shape\"}"));
    }

    [Theory]
    [InlineData("""[{"name": "nope"}]""", "unknown adapter 'nope': expected one of")]
    [InlineData("""[{"name": "style", "scale": 3}]""", "scale 3: expected a number in [-2, 2]")]
    [InlineData("""[{"name": "style", "scale": "big"}]""", "expected a number")]
    [InlineData("""[{"name": "style"}, {"name": "style", "scale": 0.5}]""", "'style' is given twice")]
    [InlineData("""[{"name": "style"}, {"name": "shape"}, {}, {}, {}]""", "5 adapters, expected at most 4")]
    [InlineData("""[{"scale": 1}]""", "needs a \"name\"")]
    [InlineData("""[{"name": "style", "path": "/etc/passwd"}]""", "unknown key 'path'")]
    [InlineData("""{"name": "style"}""", "expected a list")]
    [InlineData("""["style"]""", "expected objects")]
    public async Task Bad_adapters_are_a_400_naming_the_field(string adapters, string expected)
    {
        var (status, json) = await F.Post(Base + $$""", "adapters": {{adapters}}}""");
        Assert.Equal(400, status);
        Assert.Equal("adapters", (string)json["error"]!["field"]!);
        Assert.Contains(expected, (string)json["error"]!["message"]!);
    }

    [Fact]
    public async Task Requests_with_other_adapters_or_scales_never_share_a_batch()
    {
        F.Generator.Close();
        var blocker = await F.Submit("""{"prompt": "a bag", "steps": 2, "width": 8, "height": 8}""");
        await F.Generator.Blocked;                                   // the worker is busy: the next ones queue up
        string[] adapters = ["""[{"name": "style"}]""", """[{"name": "shape"}]""", """[{"name": "style"}]""",
            """[{"name": "style", "scale": 0.5}]"""];
        var ids = new List<string>();
        for (int i = 0; i < adapters.Length; i++)
            ids.Add(await F.Submit($$"""{"prompt": "a shirt {{i}}", "steps": 2, "adapters": {{adapters[i]}}}"""));
        F.Generator.Open();
        await F.Finished(blocker);
        int[] sizes = new int[ids.Count];
        for (int i = 0; i < ids.Count; i++) sizes[i] = (int)(await F.Finished(ids[i]))["batch_size"]!;
        Assert.Equal([2, 1, 2, 1], sizes);                           // only the two "style" × 1 requests batch
    }

    [Fact]
    public async Task Readyz_lists_the_adapters_a_request_may_name()
    {
        var ready = System.Text.Json.Nodes.JsonNode.Parse(await F.Client.GetStringAsync("/readyz"))!;
        Assert.Equal(["shape", "style"], ready["adapters"]!.AsArray().Select(n => (string)n!).Order());
    }

    [Theory]
    [InlineData(new[] { "--model", "m", "--adapter", "style" }, "--adapter 'style': expected NAME=PATH")]
    [InlineData(new[] { "--model", "m", "--adapter", "s=a", "--adapter", "s=b" }, "the name 's' is given twice")]
    [InlineData(new[] { "--model", "m", "--adapter", "a b=x.safetensors" }, "adapter name 'a b'")]
    [InlineData(new[] { "--model", "m", "--adapter" }, "--adapter needs NAME=PATH")]
    public void Bad_adapter_arguments_exit_2_naming_them(string[] args, string expected)
    {
        Assert.Equal(2, CliCapture.Run(out _, out var stderr, ["serve", .. args]));
        Assert.Contains(expected, stderr);
    }

    [Fact]
    public void Adapters_are_part_of_the_cache_and_batching_keys()
    {
        var model = new ModelInfo("tiny", 16, 16, 2, "DDIMScheduler") { Adapters = ["style", "shape"] };
        ImageRequest Parse(string extra) => ImageRequest.Parse(
            JsonDocument.Parse(Base + extra + "}").RootElement, model, ServingFixture.Defaults, () => 0);
        var plain = Parse("");
        var style = Parse(""", "adapters": [{"name": "style"}]""");
        var half = Parse(""", "adapters": [{"name": "style", "scale": 0.5}]""");
        Assert.Equal(3, new[] { plain, style, half }.Select(r => r.CacheKey("tiny")).Distinct().Count());
        Assert.Equal(3, new[] { plain, style, half }.Select(r => r.ShapeKey("j", model)).Distinct().Count());
        Assert.Equal(style.CacheKey("tiny"), Parse(""", "adapters": [{"name": "style", "scale": 1}]""")
            .CacheKey("tiny"));
    }

    [Fact]
    public void A_file_that_does_not_fit_the_model_stops_the_start_up_naming_it()
    {
        var pipeline = PipelineTests.Tiny();
        var target = LoraAdapter.Create(pipeline.Unet, "unet", rank: 2).Layers.Keys.First();
        var wrong = new LoraAdapter([new(target, new LoraLayer(zeros(2, 7), zeros(5, 2)))]);   // 7 inputs: no
        var file = Path.Combine(a.Dir, "other-model.safetensors");
        LoraFiles.SaveDiffusers(wrong, file);
        File.WriteAllText(Path.Combine(a.Dir, "x.ckpt"), "a pickle");
        foreach (var path in new[] { file, Path.Combine(a.Dir, "missing.safetensors"), Path.Combine(a.Dir, "x.ckpt") })
        {
            var e = Assert.Throws<ArgumentException>(() => new PipelineBatchGenerator(pipeline, "tiny",
                adapters: new Dictionary<string, string> { ["bad"] = path }));
            Assert.Contains(path, e.Message);
            Assert.Contains("adapter 'bad'", e.Message);
        }
        var named = Assert.Throws<ArgumentException>(() => (ServingFixture.Defaults with
        {
            Adapters = new Dictionary<string, string> { ["a b"] = file },
        }).Validate());
        Assert.Contains("adapter name 'a b'", named.Message);
    }
}
