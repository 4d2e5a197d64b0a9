using System.Net;
using System.Text.Json.Nodes;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using LdmLab.Serving;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>
/// <c>ldmlab serve</c> in process on 127.0.0.1 with the tiny pipeline: the API's status codes and validation
/// messages, events, cancellation, batching against one-by-one sampling, the result cache, faults that stay with
/// their job, the queue limit and metrics. Graceful shutdown has a server of its own.
/// </summary>
public class ServingTests(ServingFixture f) : IClassFixture<ServingFixture>
{
    [Theory]
    [InlineData("""{"steps": 4}""", "prompt", "required")]
    [InlineData("""{"prompt": "  "}""", "prompt", "non-empty")]
    [InlineData("""{"prompt": 3}""", "prompt", "expected a string, got a number")]
    [InlineData("""{"prompt": "a bag", "steps": 0}""", "steps", "[1, 60]")]
    [InlineData("""{"prompt": "a bag", "steps": 2.5}""", "steps", "whole number")]
    [InlineData("""{"prompt": "a bag", "guidance": -1}""", "guidance", "[0, 30]")]
    [InlineData("""{"prompt": "a bag", "seed": -4}""", "seed", "whole number in [0,")]
    [InlineData("""{"prompt": "a bag", "width": 15}""", "width", "multiple of 2")]
    [InlineData("""{"prompt": "a bag", "height": 4096}""", "height", "in [2, 32]")]
    [InlineData("""{"prompt": "a bag", "scheduler": "warp"}""", "scheduler", "expected one of default, ddim")]
    [InlineData("""{"prompt": "a bag", "colour": "red"}""", "colour", "unknown field 'colour'")]
    [InlineData("""[1, 2]""", "body", "expected a JSON object")]
    [InlineData("""{"prompt": "a bag", "init_image": "%%%"}""", "init_image", "not valid base64")]
    [InlineData("""{"prompt": "a bag", "init_image": "aGVsbG8="}""", "init_image", "not a PNG")]
    [InlineData("""{"prompt": "a bag", "init_image": "iVBORw0KGgoAAAA="}""", "init_image", "a damaged PNG")]
    [InlineData("""{"prompt": "a bag", "strength": 0.5}""", "strength", "init_image: required")]
    [InlineData("""{"prompt": "a bag", "mask": 3}""", "mask", "expected a base64 PNG string")]
    [InlineData("""{"prompt": "a bag", """, "body", "not valid JSON")]
    public async Task Every_bad_field_is_a_400_naming_it_and_what_was_expected(string body, string field,
        string expected)
    {
        var (status, json) = await f.Post(body);
        Assert.Equal(400, status);
        Assert.Equal(field, (string?)json["error"]!["field"]);
        Assert.Contains(expected, (string)json["error"]!["message"]!);
    }

    [Fact]
    public void Options_printout_masks_the_api_key()
    {
        var options = new ServeOptions { ApiKey = "s3cret-key-for-test", MaxBatch = 3 };
        string text = options.ToString();
        Assert.DoesNotContain("s3cret-key-for-test", text);
        Assert.Contains("***", text);
        Assert.Contains("\"MaxBatch\":3", text);
    }

    [Fact]
    public async Task Wrong_type_big_body_unknown_job_and_health_answer_their_codes()
    {
        using var text = await f.Client.PostAsync("/v1/images", ServingFixture.Body("{}", "text/plain"));
        Assert.Equal(HttpStatusCode.UnsupportedMediaType, text.StatusCode);
        var big = $$"""{"prompt": "{{new string('a', 5000)}}"}""";            // over the fixture's 4096 bytes
        using var large = await f.Client.PostAsync("/v1/images", ServingFixture.Body(big));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, large.StatusCode);
        Assert.Contains("4096 bytes", await large.Content.ReadAsStringAsync());
        using var missing = await f.Client.GetAsync("/v1/jobs/nope");
        Assert.Equal(HttpStatusCode.NotFound, missing.StatusCode);
        Assert.Contains("no job 'nope'", await missing.Content.ReadAsStringAsync());
        Assert.Equal("ok", (string)JsonNode.Parse(await f.Client.GetStringAsync("/healthz"))!["status"]!);
        Assert.Equal("ready", (string)JsonNode.Parse(await f.Client.GetStringAsync("/readyz"))!["status"]!);
        using var page = await f.Client.GetAsync("/");
        Assert.Equal("text/html", page.Content.Headers.ContentType!.MediaType);
        var html = await page.Content.ReadAsStringAsync();
        foreach (var part in new[] { "fetch(\"/v1/images\"", "getReader()", "preview:", "succeeded:",
                     "p.attention_maps", "\"Authorization\"" })
            Assert.Contains(part, html);
    }

    [Fact]
    public async Task A_job_streams_progress_previews_and_its_image_and_keeps_the_request_id()
    {
        using var post = new HttpRequestMessage(HttpMethod.Post, "/v1/images")
        {
            Content = ServingFixture.Body("""{"prompt": "a sneaker", "steps": 6, "preview_every": 2, "seed": 5}"""),
        };
        post.Headers.Add("X-Request-Id", "req-events-1");
        using var posted = await f.Client.SendAsync(post);
        Assert.Equal(HttpStatusCode.Accepted, posted.StatusCode);
        Assert.Equal("req-events-1", posted.Headers.GetValues("X-Request-Id").Single());
        var id = (string)JsonNode.Parse(await posted.Content.ReadAsStringAsync())!["id"]!;
        var events = new List<(string Name, JsonObject Data)>();
        using (var stream = await f.Client.GetStreamAsync($"/v1/jobs/{id}/events"))
        using (var reader = new StreamReader(stream))
        {
            string? name = null;
            while (await reader.ReadLineAsync() is { } line)
                if (line.StartsWith("event: ", StringComparison.Ordinal)) name = line[7..];
                else if (line.StartsWith("data: ", StringComparison.Ordinal))
                    events.Add((name!, JsonNode.Parse(line[6..])!.AsObject()));
        }
        Assert.Equal(new[] { "state", "state" }, events.Take(2).Select(e => e.Name));
        Assert.Equal(new[] { 1, 2, 3, 4, 5, 6 },
            events.Where(e => e.Name == "progress").Select(e => (int)e.Data["step"]!));
        Assert.Equal(new[] { 2, 4 }, events.Where(e => e.Name == "preview").Select(e => (int)e.Data["step"]!));
        var (last, data) = events[^1];
        Assert.Equal("succeeded", last);
        var png = await f.Client.GetByteArrayAsync($"/v1/jobs/{id}/image");
        Assert.Equal("data:image/png;base64," + Convert.ToBase64String(png), (string)data["image"]!);
        using var image = Image.Load<Rgb24>(png);
        Assert.Equal((16, 16), (image.Width, image.Height));
        var job = await f.Job(id);
        Assert.Equal("req-events-1", (string)job["request_id"]!);
        Assert.Equal(5, (long)job["parameters"]!["seed"]!);
        bool Logged(string text) => f.Logs.Lines.Any(l => l.Message.Contains(text)
            && Equals(l.Scope.GetValueOrDefault("RequestId"), "req-events-1"));
        Assert.True(Logged($"job {id} queued"), "the POST's log line carries its request id");
        for (int wait = 0; wait < 100 && !Logged("job succeeded"); wait++) await Task.Delay(20);
        Assert.Contains(f.Logs.Lines, l => l.Message.StartsWith("job succeeded")
            && Equals(l.Scope.GetValueOrDefault("JobId"), id)
            && Equals(l.Scope.GetValueOrDefault("RequestId"), "req-events-1"));
    }

    [Fact]
    public async Task Attention_maps_come_per_prompt_word_at_the_image_size_and_differ_between_words()
    {
        var id = await f.Submit("""
            {"prompt": "a red bag on the left", "steps": 3, "seed": 3, "width": 16, "height": 8, "attention_maps": true}
            """);
        var events = await f.Events(id);
        var (last, data) = events[^1];
        Assert.Equal("succeeded", last);
        var maps = data["attention_maps"]!.AsArray();
        Assert.Equal(new[] { "a", "red", "bag", "on", "the", "left" }, maps.Select(m => (string)m!["word"]!));
        var pixels = new List<byte[]>();
        foreach (var m in maps)
        {
            var url = (string)m!["image"]!;
            Assert.StartsWith("data:image/png;base64,", url);
            using var map = Image.Load<L8>(Convert.FromBase64String(url[22..]));
            Assert.Equal((16, 8), (map.Width, map.Height));                       // the image's size and aspect
            var bytes = new byte[16 * 8];
            map.CopyPixelDataTo(bytes);
            Assert.True(bytes.Max() - bytes.Min() >= 128, "each map is scaled to [0, 1]: not uniform");
            pixels.Add(bytes);
        }
        Assert.True(pixels.Distinct(new BytesComparer()).Count() >= 3, "the words' maps differ");
        var job = await f.Job(id);
        Assert.Equal(maps.ToJsonString(), job["attention_maps"]!.ToJsonString());
        var plain = await f.Finished(await f.Submit("""{"prompt": "a red bag", "steps": 2}"""));
        Assert.Null(plain["attention_maps"]);                                   // only on request
        var (status, json) = await f.Post("""{"prompt": "a bag", "attention_maps": "yes"}""");
        Assert.Equal(400, status);
        Assert.Equal("attention_maps", (string?)json["error"]!["field"]);
    }

    sealed class BytesComparer : IEqualityComparer<byte[]>
    {
        public bool Equals(byte[]? a, byte[]? b) => a.AsSpan().SequenceEqual(b);
        public int GetHashCode(byte[] bytes) => bytes.Length == 0 ? 0 : bytes[bytes.Length / 2];
    }

    [Fact]
    public async Task Init_image_and_mask_run_image_to_image_and_inpainting()
    {
        using var start = new Image<Rgb24>(16, 16, new Rgb24(200, 30, 30));
        using var hole = new Image<Rgb24>(16, 16, new Rgb24(0, 0, 0));
        for (int y = 0; y < 16; y++) for (int x = 8; x < 16; x++) hole[x, y] = new Rgb24(255, 255, 255);
        string Base64(Image<Rgb24> i)
        {
            using var m = new MemoryStream(); i.SaveAsPng(m); return
            Convert.ToBase64String(m.ToArray());
        }
        const string common = "\"prompt\": \"a bag\", \"steps\": 4, \"seed\": 9, \"preview_every\": 0";
        var plain = await f.Finished(await f.Submit("{" + common + "}"));
        var edited = await f.Finished(await f.Submit("{" + common + ", \"init_image\": \"" + Base64(start) +
                                                     "\", \"strength\": 0.5}"));
        var painted = await f.Finished(await f.Submit("{" + common + ", \"init_image\": \"data:image/png;base64," +
                                                      Base64(start) + "\", \"mask\": \"" + Base64(hole) + "\"}"));
        foreach (var job in new[] { edited, painted }) Assert.Equal("succeeded", (string)job["state"]!);
        Assert.NotEqual((string)plain["image"]!, (string)edited["image"]!);   // started from the red image
        Assert.NotEqual((string)edited["image"]!, (string)painted["image"]!);
        Assert.NotNull(painted["parameters"]!["mask_sha256"]);
        // the pipeline's own image to image from the same start, seed and strength gives the same image
        using var scope = NewDisposeScope();
        var red = tensor(new float[] { 200, 30, 30 }).reshape(1, 3, 1, 1).expand(1, 3, 16, 16) / 255 * 2 - 1;
        var alone = PipelineTests.Tiny().ImageToImage(red, 0.5, new GenerationOptions
        {
            Prompts = ["a bag"], NegativePrompts = [""], Steps = 4, GuidanceScale = 7.5, Seed = 9, Height = 16,
            Width = 16,
        });
        using var expected = alone.Picture(0);
        using var served = Image.Load<Rgb24>(await f.Client.GetByteArrayAsync($"/v1/jobs/{edited["id"]}/image"));
        int worst = 0;
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++)
            {
                var (a, b) = (expected[x, y], served[x, y]);
                worst = Math.Max(worst, new[] { a.R - b.R, a.G - b.G, a.B - b.B }.Max(Math.Abs));
            }
        Assert.True(worst <= 1, $"served image to image differs from the pipeline's by {worst}/255");
    }

    [Fact]
    public async Task Inpainting_keeps_the_init_latents_outside_the_mask_and_repaints_inside()
    {
        // diffusers' blended inpainting (the legacy pipeline and StableDiffusionInpaintPipeline with a 4-channel
        // U-Net): after every step z ← m·z + (1 − m)·q(z_init at the next t); after the last one the init latents
        // enter noise-free (the legacy pipeline left the last t's small noise), so outside the mask the final latents
        // are the init image's own and its pixels the VAE's image of it; inside, the prompt paints anew
        using var start = new Image<Rgb24>(16, 16);
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++) start[x, y] = new Rgb24((byte)(16 * x), (byte)(255 - 16 * y), 90);
        using var hole = new Image<Rgb24>(16, 16, new Rgb24(0, 0, 0));
        for (int y = 0; y < 16; y++) for (int x = 8; x < 16; x++) hole[x, y] = new Rgb24(255, 255, 255);
        var painted = await f.Finished(await f.Submit("""{"prompt": "a bag", "steps": 4, "seed": 21, "init_image": """
            + $"\"{Base64(start)}\", \"mask\": \"{Base64(hole)}\", \"strength\": 1}}"));
        Assert.Equal("succeeded", (string)painted["state"]!);
        using var served = Image.Load<Rgb24>(await f.Client.GetByteArrayAsync($"/v1/jobs/{painted["id"]}/image"));

        using var scope = NewDisposeScope();
        var pipeline = PipelineTests.Tiny();
        var pixels = new float[3 * 16 * 16];
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++)
                (pixels[y * 16 + x], pixels[256 + y * 16 + x], pixels[512 + y * 16 + x]) =
                    (start[x, y].R / 255f, start[x, y].G / 255f, start[x, y].B / 255f);
        var image = tensor(pixels, [1, 3, 16, 16]) * 2 - 1;                                 // [1, 3, 16, 16]
        var right = zeros(1, 1, 16, 16);
        right[.., .., .., 8..] = 1;                                                         // 1 = repaint
        var o = new GenerationOptions
        {
            Prompts = ["a bag"], NegativePrompts = [""], Steps = 4, GuidanceScale = 7.5, Seed = 21, Height = 16,
            Width = 16,
        };
        var inpainted = pipeline.Inpaint(image, right, o, 1.0);
        var kept = pipeline.Inpaint(image, zeros(1, 1, 16, 16), o, 1.0);   // nothing repainted: the init's latents
        int half = (int)inpainted.Latents.shape[3] / 2;
        var outside = (inpainted.Latents[.., .., .., ..half] - kept.Latents[.., .., .., ..half]).abs().max();
        Assert.Equal(0f, outside.item<float>());                                    // the same latents, exactly
        var moved = (inpainted.Latents[.., .., .., half..] - kept.Latents[.., .., .., half..]).abs().mean();
        Assert.True(moved.item<float>() > 0.1, $"inside the mask the latents moved only {moved.item<float>()}");

        // the served image is that inpainting (the tiny VAE is random and its decoder mixes the whole latent, so
        // pixels are compared with a trained VAE below: ShippedInpaintingTests)
        using var expected = inpainted.Picture(0);
        using var reference = kept.Picture(0);
        int worst = 0;
        double insideMean = 0;
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++)
            {
                var (a, b, r) = (expected[x, y], served[x, y], reference[x, y]);
                worst = Math.Max(worst, new[] { a.R - b.R, a.G - b.G, a.B - b.B }.Max(Math.Abs));
                if (x >= 8) insideMean += (Math.Abs(b.R - r.R) + Math.Abs(b.G - r.G) + Math.Abs(b.B - r.B)) / 384.0;
            }
        Assert.True(worst <= 1, $"the served inpainting differs from the pipeline's by {worst}/255");
        Assert.True(insideMean > 8, $"inside the mask the image stayed the init's (mean |Δ| {insideMean:F1}/255)");
    }

    static string Base64(Image<Rgb24> image)
    {
        using var m = new MemoryStream();
        image.SaveAsPng(m);
        return Convert.ToBase64String(m.ToArray());
    }

    [Fact]
    public async Task Identical_requests_in_flight_share_one_compute_and_the_same_bytes()
    {
        const string body = """{"prompt": "a twin bag", "steps": 5, "seed": 4242, "preview_every": 2}""";
        double shared = await f.Metric("ldmlab_requests_deduplicated_total");
        f.Generator.Close();
        var first = await f.Submit(body);
        await f.Generator.Blocked;                                    // the first is running
        int batches = f.Generator.Batches.Count;
        var (status, second) = await f.Post(body);
        Assert.Equal(202, status);
        Assert.Equal(first, (string?)second["shared_with"]);
        var secondId = (string)second["id"]!;
        f.Generator.Open();
        var events = await f.Events(secondId);
        Assert.Equal("succeeded", events[^1].Name);
        Assert.Contains(events, e => e.Name == "progress");          // relayed from the first one's compute
        Assert.Contains(events, e => e.Name == "preview");
        await f.Finished(first);
        Assert.Equal(batches, f.Generator.Batches.Count);              // no second compute
        Assert.Equal(await f.Client.GetByteArrayAsync($"/v1/jobs/{first}/image"),
            await f.Client.GetByteArrayAsync($"/v1/jobs/{secondId}/image"));
        Assert.Equal(shared + 1, await f.Metric("ldmlab_requests_deduplicated_total"));

        // the leader cancelled (its client went away): the follower is computed on its own and still answered
        const string other = """{"prompt": "a twin sneaker", "steps": 5, "seed": 4343}""";
        f.Generator.Close();
        var leader = await f.Submit(other);
        await f.Generator.Blocked;
        var follower = (string)(await f.Post(other)).Json["id"]!;
        batches = f.Generator.Batches.Count;
        (await f.Client.DeleteAsync($"/v1/jobs/{leader}")).Dispose();
        f.Generator.Open();
        var alone = await f.Finished(follower);
        Assert.Equal("succeeded", (string)alone["state"]!);
        Assert.Null(alone["shared_with"]);
        Assert.Equal(batches + 1, f.Generator.Batches.Count);          // it got a compute of its own
        for (int i = 0; i < 100 && f.Server.InFlight.Count > 0; i++) await Task.Delay(10);   // released after finish
        Assert.Equal(0, f.Server.InFlight.Count);
    }

    [Fact]
    public async Task Same_shape_requests_share_one_batch_and_give_the_one_by_one_images()
    {
        f.Generator.Close();
        var blocker = await f.Submit("""{"prompt": "a bag", "steps": 2, "width": 8, "height": 8}""");
        await f.Generator.Blocked;                                   // the worker is busy: the next ones queue up
        string[] prompts = ["a bag on the left", "a sneaker on the right", "a shirt"];
        var ids = new List<string>();
        for (int i = 0; i < 3; i++)
            ids.Add(await f.Submit($$"""{"prompt": "{{prompts[i]}}", "steps": 5, "seed": {{10 + i}}}"""));
        f.Generator.Open();
        await f.Finished(blocker);
        var reference = PipelineTests.Tiny();
        var images = new List<byte[]>();
        for (int i = 0; i < 3; i++)
        {
            var job = await f.Finished(ids[i]);
            Assert.Equal("succeeded", (string)job["state"]!);
            Assert.Equal(3, (int)job["batch_size"]!);
            var png = await f.Client.GetByteArrayAsync($"/v1/jobs/{ids[i]}/image");
            images.Add(png);
            using var scope = NewDisposeScope();
            var alone = reference.Generate(new GenerationOptions
            {
                Prompts = [prompts[i]], NegativePrompts = [""], Steps = 5, GuidanceScale = 7.5, Seed = 10 + i,
                Height = 16, Width = 16,
            });
            using var expected = alone.Picture(0);
            using var served = Image.Load<Rgb24>(png);
            int worst = 0;
            for (int y = 0; y < 16; y++)
                for (int x = 0; x < 16; x++)
                {
                    var (a, b) = (expected[x, y], served[x, y]);
                    worst = Math.Max(worst, new[] { a.R - b.R, a.G - b.G, a.B - b.B }.Max(Math.Abs));
                }
            Assert.True(worst <= 1, $"request {i}: batched image differs from one-by-one by {worst}/255");
        }
        Assert.NotEqual(images[0], images[1]);                       // each row kept its own seed and prompt
        Assert.Contains(f.Generator.Batches, b => b.Size == 3);
    }

    [Fact]
    public async Task The_same_request_again_returns_identical_bytes_from_the_cache()
    {
        const string body = """{"prompt": "a bag on the right", "steps": 3, "seed": 42, "guidance": 5}""";
        double hits = await f.Metric("ldmlab_result_cache_hits_total");
        var first = await f.Finished(await f.Submit(body));
        var (status, again) = await f.Post(body);
        Assert.Equal(200, status);
        Assert.Equal("succeeded", (string)again["state"]!);
        Assert.True((bool)again["cached"]!);
        Assert.Equal((string)first["image"]!, (string)again["image"]!);
        var bytes1 = await f.Client.GetByteArrayAsync($"/v1/jobs/{first["id"]}/image");
        var bytes2 = await f.Client.GetByteArrayAsync($"/v1/jobs/{again["id"]}/image");
        Assert.Equal(bytes1, bytes2);
        Assert.Equal(hits + 1, await f.Metric("ldmlab_result_cache_hits_total"));
        var (_, otherSeed) = await f.Post(body.Replace("42", "43"));
        Assert.Equal("queued", (string)otherSeed["state"]!);          // another seed is another image
        await f.Finished((string)otherSeed["id"]!);
    }

    [Fact]
    public async Task Delete_cancels_a_running_job_and_frees_the_worker()
    {
        f.Generator.Close();
        var id = await f.Submit("""{"prompt": "a long one", "steps": 50}""");
        await f.Generator.Blocked;                                   // mid-compute: one step of 50 done
        int before = f.Generator.Batches.Count;
        using var deleted = await f.Client.DeleteAsync($"/v1/jobs/{id}");
        Assert.Equal(HttpStatusCode.Accepted, deleted.StatusCode);
        Assert.Equal("cancelled", (string)(await f.Job(id))["state"]!);
        f.Generator.Open();
        var next = await f.Finished(await f.Submit("""{"prompt": "the next one", "steps": 2}"""));
        Assert.Equal("succeeded", (string)next["state"]!);
        Assert.True(f.Generator.Batches[before - 1].StepsRun <= 2, "the cancelled batch ran on");
        using var again = await f.Client.DeleteAsync($"/v1/jobs/{id}");
        Assert.Equal(HttpStatusCode.Conflict, again.StatusCode);
    }

    [Fact]
    public async Task Closing_the_event_stream_cancels_the_job()
    {
        f.Generator.Close();
        var id = await f.Submit("""{"prompt": "nobody watches", "steps": 50}""");
        using (var response = await f.Client.GetAsync($"/v1/jobs/{id}/events",
                   HttpCompletionOption.ResponseHeadersRead))
        using (var reader = new StreamReader(await response.Content.ReadAsStreamAsync()))
            while (await reader.ReadLineAsync() is { } line && line != "event: progress") { }
        var job = f.Server.Jobs.Find(id)!;
        await job.Finished.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(JobState.Cancelled, job.State);
        Assert.Contains("closed the event stream", job.Error);
        f.Generator.Open();
        Assert.Equal("succeeded", (string)(await f.Finished(await f.Submit("""{"prompt": "after"}""")))["state"]!);
    }

    [Fact]
    public async Task A_failing_job_fails_alone_and_the_server_keeps_serving()
    {
        double nan = await f.Metric("ldmlab_job_failures_total{reason=\"nan_latents\"}");
        double thrown = await f.Metric("ldmlab_job_failures_total{reason=\"exception\"}");
        f.Generator.Close();
        var blocker = await f.Submit("""{"prompt": "a bag", "steps": 2, "width": 8, "height": 8}""");
        await f.Generator.Blocked;
        var good = await f.Submit("""{"prompt": "a good one", "steps": 3}""");
        var boom = await f.Submit("""{"prompt": "raise an exception", "steps": 3}""");
        var bad = await f.Submit("""{"prompt": "nan latents", "steps": 3}""");
        f.Generator.Open();
        await f.Finished(blocker);
        Assert.Equal("succeeded", (string)(await f.Finished(good))["state"]!);
        var failed = await f.Finished(boom);
        Assert.Equal("failed", (string)failed["state"]!);
        Assert.Contains("blew up", (string)failed["error"]!);
        var diverged = await f.Finished(bad);
        Assert.Equal("failed", (string)diverged["state"]!);
        Assert.Contains("NaN", (string)diverged["error"]!);
        Assert.Equal(nan + 1, await f.Metric("ldmlab_job_failures_total{reason=\"nan_latents\"}"));
        Assert.Equal(thrown + 1, await f.Metric("ldmlab_job_failures_total{reason=\"exception\"}"));
        Assert.Equal("succeeded", (string)(await f.Finished(await f.Submit("""{"prompt": "still up"}""")))["state"]!);
    }

    [Fact]
    public async Task A_full_queue_answers_429_with_retry_after()
    {
        f.Generator.Close();
        var running = await f.Submit("""{"prompt": "busy", "steps": 2, "width": 8, "height": 8}""");
        await f.Generator.Blocked;
        var queued = new List<string>();
        for (int i = 0; i < f.Options.QueueCapacity; i++)
            queued.Add(await f.Submit($$"""{"prompt": "wait {{i}}", "steps": {{2 + i}}}"""));
        using var refused = await f.Client.PostAsync("/v1/images", ServingFixture.Body("""{"prompt": "one more"}"""));
        Assert.Equal((HttpStatusCode)429, refused.StatusCode);
        Assert.True(refused.Headers.RetryAfter?.Delta >= TimeSpan.FromSeconds(1));
        Assert.Contains("queue is full", await refused.Content.ReadAsStringAsync());
        foreach (var id in queued) (await f.Client.DeleteAsync($"/v1/jobs/{id}")).Dispose();
        f.Generator.Open();
        await f.Finished(running);
        Assert.Equal(0, f.Server.Queue.Count);
    }

    [Fact]
    public async Task Metrics_move_with_the_work_done()
    {
        string[] names = ["ldmlab_images_total", "ldmlab_batch_size_count", "ldmlab_step_seconds_count",
            "ldmlab_request_seconds_count", "ldmlab_text_cache_hits_total"];
        var before = new List<double>();
        foreach (var name in names) before.Add(await f.Metric(name));
        await f.Finished(await f.Submit("""{"prompt": "a metric bag", "steps": 3, "seed": 1}"""));
        await f.Finished(await f.Submit("""{"prompt": "a metric bag", "steps": 3, "seed": 2}"""));
        var after = new List<double>();
        foreach (var name in names) after.Add(await f.Metric(name));
        Assert.Equal(before[0] + 2, after[0]);
        Assert.Equal(before[1] + 2, after[1]);                               // two batches of one
        Assert.Equal(before[2] + 6, after[2]);                               // 3 steps each
        Assert.Equal(before[3] + 2, after[3]);
        Assert.True(after[4] >= before[4] + 2, "the second request's prompt and negative prompt were cached");
        Assert.Contains("ldmlab_queue_depth 0", await f.Client.GetStringAsync("/metrics"));
    }
}

/// <summary>A fake <see cref="ISafetyFilter"/>: refuses prompts holding "forbidden" and the images of prompts holding
/// "hide me"; counts the images it saw (with their shapes).</summary>
sealed class FakeSafetyFilter : ISafetyFilter
{
    public List<long[]> ImagesSeen { get; } = [];

    public string? CheckPrompt(string field, string text) =>
        text.Contains("forbidden", StringComparison.Ordinal) ? "it says forbidden" : null;

    public string? CheckImage(Tensor image, ImageRequest request)
    {
        lock (ImagesSeen) ImagesSeen.Add(image.shape);
        return request.Prompt.Contains("hide me", StringComparison.Ordinal) ? "a test refusal" : null;
    }
}

/// <summary>A server with an API key, one CORS origin and a safety filter; the default server has none of them.
/// </summary>
public class ServingAccessTests(ServingFixture plain) : IClassFixture<ServingFixture>
{
    [Fact]
    public async Task Api_key_cors_origin_and_safety_filter_guard_the_api()
    {
        var safety = new FakeSafetyFilter();
        var f = new ServingFixture
        {
            Options = ServingFixture.Defaults with
            {
                ApiKey = "s3cret-key",
                CorsOrigin = "http://localhost:3000",
                Safety = safety,
                DefaultPreviewEvery = 1,
            },
        };
        await f.InitializeAsync();
        try
        {
            // no key, a wrong key → 401; /healthz and /readyz stay open
            var (status, json) = await f.Post("""{"prompt": "a bag"}""");
            Assert.Equal(401, status);
            Assert.Equal("Authorization", (string?)json["error"]!["field"]);
            using (var metrics = await f.Client.GetAsync("/metrics"))
                Assert.Equal(HttpStatusCode.Unauthorized, metrics.StatusCode);
            f.Client.DefaultRequestHeaders.Authorization = new("Bearer", "s3cret-kex");
            Assert.Equal(401, (await f.Post("""{"prompt": "a bag"}""")).Status);
            f.Client.DefaultRequestHeaders.Authorization = null;
            Assert.Equal("ok", (string)JsonNode.Parse(await f.Client.GetStringAsync("/healthz"))!["status"]!);
            Assert.Equal("ready", (string)JsonNode.Parse(await f.Client.GetStringAsync("/readyz"))!["status"]!);
            f.Client.DefaultRequestHeaders.Authorization = new("Bearer", "s3cret-key");

            // CORS: the configured origin gets its headers and its preflight; another origin gets none
            using (var preflight = new HttpRequestMessage(HttpMethod.Options, "/v1/images"))
            {
                preflight.Headers.Add("Origin", "http://localhost:3000");
                preflight.Headers.Add("Access-Control-Request-Method", "POST");
                using var answer = await f.Client.SendAsync(preflight);
                Assert.Equal(HttpStatusCode.NoContent, answer.StatusCode);
                Assert.Equal("http://localhost:3000", answer.Headers.GetValues("Access-Control-Allow-Origin").Single());
                Assert.Contains("Authorization", answer.Headers.GetValues("Access-Control-Allow-Headers").Single());
            }
            foreach (var (origin, allowed) in new[] { ("http://localhost:3000", true), ("http://evil.test", false) })
            {
                using var get = new HttpRequestMessage(HttpMethod.Get, "/healthz");
                get.Headers.Add("Origin", origin);
                using var answer = await f.Client.SendAsync(get);
                Assert.Equal(allowed, answer.Headers.Contains("Access-Control-Allow-Origin"));
            }

            // safety: a refused prompt is a 400 naming its field; a refused image fails its job with the reason
            (status, json) = await f.Post("""{"prompt": "a bag", "negative_prompt": "forbidden things"}""");
            Assert.Equal(400, status);
            Assert.Equal("negative_prompt", (string?)json["error"]!["field"]);
            Assert.Contains("refused by the safety filter (it says forbidden)", (string)json["error"]!["message"]!);
            var hidden = await f.Finished(await f.Submit("""{"prompt": "hide me please", "steps": 2}"""));
            Assert.Equal("failed", (string)hidden["state"]!);
            Assert.Contains("withheld by the safety filter: a test refusal", (string)hidden["error"]!);
            Assert.Null(hidden["image"]);
            var hiddenEvents = await f.Events((string)hidden["id"]!);
            Assert.DoesNotContain(hiddenEvents, e => e.Name == "preview");            // previews refused as well
            var shown = await f.Finished(await f.Submit("""{"prompt": "show me", "steps": 2}"""));
            Assert.Equal("succeeded", (string)shown["state"]!);
            Assert.Contains(safety.ImagesSeen, s => s.SequenceEqual(new long[] { 3, 16, 16 }));
            Assert.Equal(1, await f.Metric("ldmlab_job_failures_total{reason=\"safety\"}"));
        }
        finally
        {
            await f.DisposeAsync();
        }
    }

    [Fact]
    public async Task Without_settings_there_is_no_key_no_cors_and_no_filter()
    {
        using var get = new HttpRequestMessage(HttpMethod.Get, "/healthz");
        get.Headers.Add("Origin", "http://localhost:3000");
        using var answer = await plain.Client.SendAsync(get);
        Assert.False(answer.Headers.Contains("Access-Control-Allow-Origin"));
        using var preflight = new HttpRequestMessage(HttpMethod.Options, "/v1/images");
        preflight.Headers.Add("Origin", "http://localhost:3000");
        preflight.Headers.Add("Access-Control-Request-Method", "POST");
        using var refused = await plain.Client.SendAsync(preflight);
        Assert.NotEqual(HttpStatusCode.NoContent, refused.StatusCode);
        Assert.False(refused.Headers.Contains("Access-Control-Allow-Origin"));
        var job = await plain.Finished(await plain.Submit("""{"prompt": "forbidden hide me", "steps": 2}"""));
        Assert.Equal("succeeded", (string)job["state"]!);                           // no key, no filter
    }
}

/// <summary><c>ldmlab serve</c>'s argument errors name the argument and exit 2 before any model is loaded.</summary>
public class ServeCommandTests
{
    [Theory]
    [InlineData(new[] { "--port", "70000", "--model", "m" }, "--port '70000': expected a whole number in [0, 65535]")]
    [InlineData(new[] { "--max-batch", "0", "--model", "m" }, "--max-batch '0': expected a whole number in [1, 256]")]
    [InlineData(new[] { "--colour", "red" }, "--colour: not an option of ldmlab serve")]
    [InlineData(new[] { "--port", "0" }, "--model is required")]
    [InlineData(new[] { "--model", "m", "--host", "my-box" }, "host 'my-box': expected an IP address, localhost or *")]
    [InlineData(new[] { "--model", "m", "--api-key", "short" }, "api key: expected at least 8 characters")]
    [InlineData(new[] { "--model", "m", "--api-key-file", "/nonexistent/key" }, "--api-key-file '/nonexistent/key'")]
    [InlineData(new[] { "--model", "m", "--cors-origin", "evil" }, "cors origin 'evil': expected * or scheme://")]
    public void Bad_arguments_exit_2_naming_the_argument(string[] args, string expected)
    {
        Assert.Equal(2, CliCapture.Run(out _, out var stderr, ["serve", .. args]));
        Assert.Contains(expected, stderr);
    }
}

/// <summary>Inpainting with the shipped text model and its trained VAE (what the server runs for a request with a
/// mask): the half outside the mask keeps the init image, the half inside is painted anew.</summary>
public class ShippedInpaintingTests
{
    [Fact]
    public void The_unmasked_half_keeps_the_init_image_and_the_masked_half_is_repainted()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var pipeline = LdmLab.Labs.TextToImageRecipe.ShippedPipeline(
            Path.Combine(TestPaths.RepoRoot, "data", "checkpoints", "fashion-text2img"))!;
        int h = LdmLab.Data.CaptionedScenes.Height, w = LdmLab.Data.CaptionedScenes.Width, half = w / 2;
        var o = new GenerationOptions
        {
            Prompts = ["a bag on the left and a sneaker on the right"], NegativePrompts = [""], Steps = 10,
            GuidanceScale = 5, Seed = 3, Height = h, Width = w,
        };
        var scene = pipeline.Generate(o).Images;                                              // [1, 3, h, w] in [0, 1]
        var init = scene * 2 - 1;
        var right = zeros(1, 1, h, w);
        right[.., .., .., half..] = 1;                                                        // repaint the right half
        var other = o with { Prompts = ["a bag on the left and a trouser on the right"], Seed = 11 };
        var painted = pipeline.Inpaint(init, right, other, 1.0).Images;
        var kept = pipeline.Inpaint(init, zeros(1, 1, h, w), other, 1.0).Images;   // the VAE's image of the init
        const int margin = 4;                                          // one latent cell: the decoder's reach
        double Mean(Tensor a, Tensor b, Range columns) =>
            (a[.., .., .., columns] - b[.., .., .., columns]).abs().mean().item<float>();
        double outsideToInit = Mean(painted, scene, ..(half - margin)), outsideToKept = Mean(painted, kept,
            ..(half - margin)), insideToInit = Mean(painted, scene, (half + margin)..);
        string numbers = $"mean |Δ| outside → init {outsideToInit:F3}, → the VAE's image {outsideToKept:F3}, " +
                         $"inside → init {insideToInit:F3}";
        Assert.True(insideToInit > 0.03, "the masked half was not repainted: " + numbers);
        Assert.True(outsideToInit < insideToInit / 2, "the unmasked half moved away from the init: " + numbers);
        Assert.True(outsideToKept < insideToInit / 3, "the unmasked half is not the VAE's image of it: " + numbers);
    }
}

/// <summary>Stopping drains: running and queued jobs finish, new ones are refused with 503.</summary>
public class ServingShutdownTests
{
    [Fact]
    public async Task Stopping_finishes_in_flight_jobs_and_refuses_new_ones()
    {
        var f = new ServingFixture();
        await f.InitializeAsync();
        try
        {
            f.Generator.Close();
            var running = await f.Submit("""{"prompt": "in flight", "steps": 3}""");
            await f.Generator.Blocked;
            var queued = await f.Submit("""{"prompt": "waiting", "steps": 2, "width": 8, "height": 8}""");
            var stopping = f.Server.StopAsync();
            while (f.Server.Accepting) await Task.Delay(5);
            var (status, refused) = await f.Post("""{"prompt": "too late"}""");
            Assert.Equal(503, status);
            Assert.Contains("shutting down", (string)refused["error"]!["message"]!);
            using var ready = await f.Client.GetAsync("/readyz");
            Assert.Equal(HttpStatusCode.ServiceUnavailable, ready.StatusCode);
            f.Generator.Open();
            await stopping.WaitAsync(TimeSpan.FromSeconds(15));
            Assert.Equal(JobState.Succeeded, f.Server.Jobs.Find(running)!.State);
            Assert.Equal(JobState.Succeeded, f.Server.Jobs.Find(queued)!.State);
        }
        finally
        {
            await f.DisposeAsync();
        }
    }
}
