using System.Text.Json;
using System.Text.Json.Nodes;
using LdmLab.Data;
using LdmLab.Runtime;
using LdmLab.Serving;
using Microsoft.Playwright;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using Xunit.Abstractions;

namespace LdmLab.Tests;

/// <summary>
/// The page at <c>/</c> in a real browser: Debian's headless Chromium driven by Playwright for .NET (its node driver
/// ships in the NuGet package; no browser is downloaded). The lab's shipped text-to-image model is served in process
/// on 127.0.0.1; the test types a prompt, submits it from the page, and checks what the page shows: the strip of
/// decoded previews (arriving before the image), the final image pixel for pixel against the server's PNG, each
/// word's attention overlay (present, following that word's map, different from another word's), and the history
/// (newest first, and a click shows an older image again).
/// </summary>
public class ServingPageTests(ITestOutputHelper output)
{
    const string Prompt = "a bag on the left and a sneaker on the right";
    const int Steps = 8, PreviewEvery = 2;

    /// <summary>Debian's chromium (<c>./lab setup</c> installs it): /usr/bin/chromium, else on the PATH.</summary>
    internal static string? FindChromium()
    {
        if (File.Exists("/usr/bin/chromium")) return "/usr/bin/chromium";
        return (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator)
            .Where(d => d.Length > 0)
            .SelectMany(d => new[] { "chromium", "chromium-browser" }.Select(n => Path.Combine(d, n)))
            .FirstOrDefault(File.Exists);
    }

    [Fact]
    [Trait("Category", "Slow")]
    public async Task Page_in_chromium_streams_previews_shows_the_image_word_overlays_and_history()
    {
        var chromium = FindChromium();
        Assert.True(chromium is not null, "Chromium was not found (/usr/bin/chromium, or `chromium` on the PATH): " +
                                          "`./lab setup` installs Debian's chromium package, which this browser " +
                                          "test drives through Playwright");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        void Lap(string what) => output.WriteLine($"{clock.Elapsed.TotalSeconds,6:F2} s  {what}");
        TorchRuntime.Setup();
        var dir = Path.Combine(TestPaths.RepoRoot, "data", "checkpoints", Labs.TextToImageRecipe.Shipped);
        var pipeline = Labs.TextToImageRecipe.ShippedPipeline(dir)
                       ?? throw new InvalidOperationException($"no shipped text-to-image model in {dir}");
        var options = ServingFixture.Defaults with
        {
            ModelName = Labs.TextToImageRecipe.Shipped,
            MaxBodyBytes = 64 * 1024,
            DefaultSteps = Steps,
        };
        await using var server = GenerationServer.Create(pipeline, options,
            nativeSize: (CaptionedScenes.Height, CaptionedScenes.Width));
        await server.StartAsync();
        using var client = new HttpClient { BaseAddress = server.Address };
        var origin = server.Address.GetLeftPart(UriPartial.Authority);
        Lap("server ready (shipped model loaded, self-check run)");

        using var playwright = await Playwright.CreateAsync();
        await using var browser = await playwright.Chromium.LaunchAsync(new()
        {
            ExecutablePath = chromium, Headless = true, Args = ["--no-sandbox"],
        });
        var page = await browser.NewPageAsync();
        Lap("chromium launched through Playwright");
        page.SetDefaultTimeout(15_000);
        var problems = new List<string>();       // script errors, console errors (CSP refusals among them)
        var elsewhere = new List<string>();      // any request that leaves the server (the page must not)
        page.PageError += (_, e) => problems.Add("page error: " + e);
        page.Console += (_, m) => { if (m.Type == "error") problems.Add("console: " + m.Text); };
        page.Response += (_, r) => { if (r.Status >= 400) problems.Add($"{r.Status} from {r.Url}"); };
        page.Request += (_, r) =>
        {
            if (!r.Url.StartsWith(origin + "/", StringComparison.Ordinal) && !r.Url.StartsWith("data:"))
                elsewhere.Add(r.Url);
        };

        try
        {
            await Check(page, client, Lap);
        }
        catch (TimeoutException e)
        {
            throw new TimeoutException($"{e.Message}\nthe page's errors: {string.Join("; ", problems)}; " +
                                       $"its status: '{await page.TextContentAsync("#status")}', " +
                                       $"its error box: '{await page.TextContentAsync("#error")}'", e);
        }
        Assert.True(problems.Count == 0, string.Join("\n", problems));
        Assert.True(elsewhere.Count == 0, "the page fetched from elsewhere: " + string.Join(", ", elsewhere));
        Lap("done");
    }

    static async Task Check(IPage page, HttpClient client, Action<string> lap)
    {
        await page.GotoAsync(client.BaseAddress!.ToString());
        await page.WaitForFunctionAsync("() => document.getElementById('model').textContent.includes('ready')");
        // what arrives, in order: a preview added to the strip, an image drawn in the view
        await page.EvaluateAsync("""
            () => {
              window.seen = [];
              const strip = document.getElementById("strip"), view = document.getElementById("view");
              new MutationObserver(() => { if (strip.children.length) window.seen.push("preview"); })
                .observe(strip, { childList: true });
              new MutationObserver(() => { if (view.dataset.shown) window.seen.push("image"); })
                .observe(view, { attributes: true, attributeFilter: ["data-shown"] });
            }
            """);
        var first = await Generate(page, seed: 3);
        lap("first image shown");

        // previews: one every PreviewEvery steps before the last, each a decoded, non-blank image of the model's size
        var previews = await Pixels(page, "#strip img");
        var expectedSteps = Enumerable.Range(1, Steps - 1).Where(s => s % PreviewEvery == 0).Select(s => $"step {s}");
        Assert.Equal(expectedSteps, previews.Select(p => p.Title));
        foreach (var p in previews)
        {
            Assert.Equal((CaptionedScenes.Width, CaptionedScenes.Height), (p.Width, p.Height));
            Assert.True(Spread(p.Rgba) > 0.02, $"preview '{p.Title}' is blank (spread {Spread(p.Rgba):F4})");
        }
        var seen = await page.EvaluateAsync<string[]>("() => window.seen");
        Assert.True(seen.Length > 0 && seen[0] == "preview",
            "the image came before any preview: " + string.Join(", ", seen));
        Assert.Equal((double)Steps,
            await page.EvaluateAsync<double>("() => document.getElementById('progress').value"));

        // the image: the view shows the server's PNG pixel for pixel (no word chosen yet)
        using var png = Image.Load<Rgba32>(await client.GetByteArrayAsync($"/v1/jobs/{first}/image"));
        Assert.Equal((CaptionedScenes.Width, CaptionedScenes.Height), (png.Width, png.Height));
        var plain = await View(page, first, "");
        Assert.Equal((png.Width, png.Height), (plain.Width, plain.Height));
        Assert.True(MaxDifference(plain.Rgba, Rgba(png)) <= 1, "the view is not the server's image");
        Assert.True(Spread(plain.Rgba) > 0.02, $"the image is blank (spread {Spread(plain.Rgba):F4})");

        // the words: the prompt's, as the server's attention maps name them
        var job = JsonNode.Parse(await client.GetStringAsync($"/v1/jobs/{first}"))!.AsObject();
        var maps = job["attention_maps"]!.AsArray()
            .Select(m => ((string)m!["word"]!, Grey(DataUrl((string)m["image"]!)))).ToList();
        var words = await page.EvaluateAsync<string[]>(
            "() => [...document.getElementById('words').options].map(o => o.text)");
        Assert.Equal(maps.Select(m => m.Item1).Prepend("(no word)"), words);
        Assert.Contains("bag", words);
        Assert.Contains("sneaker", words);

        // each word's overlay: drawn, where its map is bright, and not the other word's
        var overlays = new Dictionary<string, Shot>();
        foreach (var word in new[] { "bag", "sneaker" })
        {
            await page.SelectOptionAsync("#words", new SelectOptionValue { Label = word });
            var shot = overlays[word] = await View(page, first, word);
            var map = maps.First(m => m.Item1 == word).Item2;
            var change = Enumerable.Range(0, map.Length).Select(i => Enumerable.Range(0, 3)
                .Sum(k => Math.Abs(shot.Rgba[4 * i + k] - plain.Rgba[4 * i + k])) / 3.0).ToArray();
            Assert.True(change.Average() > 5, $"the overlay of '{word}' barely changes the image: " +
                                              $"{change.Average():F2} of 255 on average");
            var order = Enumerable.Range(0, map.Length).OrderBy(i => map[i]).ToArray();
            int quarter = order.Length / 4;
            double dim = order[..quarter].Average(i => change[i]), bright = order[^quarter..].Average(i => change[i]);
            Assert.True(bright > dim + 10, $"the overlay of '{word}' does not follow its map: it changes the " +
                                           $"brightest quarter by {bright:F1}, the darkest by {dim:F1} (of 255)");
        }
        Assert.True(MaxDifference(overlays["bag"].Rgba, overlays["sneaker"].Rgba) > 32,
            "the overlays of 'bag' and 'sneaker' are the same");
        await page.SelectOptionAsync("#words", new SelectOptionValue { Label = "(no word)" });
        Assert.True(MaxDifference((await View(page, first, "")).Rgba, plain.Rgba) == 0, "(no word) left an overlay");
        lap("previews, image and overlays checked");

        // the history: the first image, then a second one in front of it; a click shows the first again
        Assert.Equal(new[] { first }, await History(page));
        var second = await Generate(page, seed: 4);
        Assert.Equal(new[] { second, first }, await History(page));
        using var secondPng = Image.Load<Rgba32>(await client.GetByteArrayAsync($"/v1/jobs/{second}/image"));
        Assert.True(MaxDifference(Rgba(secondPng), Rgba(png)) > 32, "seeds 3 and 4 made the same image");
        await page.ClickAsync($"#history figure[data-job='{first}']");
        await page.SelectOptionAsync("#words", new SelectOptionValue { Label = "(no word)" });
        Assert.True(MaxDifference((await View(page, first, "")).Rgba, Rgba(png)) <= 1,
            "clicking the first history entry did not show its image again");
        lap("second image and history checked");
    }

    /// <summary>Fills the form (prompt, steps, seed, previews, attention maps), submits it, waits until the page
    /// shows the finished image; the job's id.</summary>
    static async Task<string> Generate(IPage page, int seed)
    {
        int before = (await History(page)).Length;
        await page.FillAsync("input[name=prompt]", Prompt);
        await page.FillAsync("input[name=steps]", Steps.ToString());
        await page.FillAsync("input[name=seed]", seed.ToString());
        await page.FillAsync("input[name=guidance]", "5");
        await page.FillAsync("input[name=preview_every]", PreviewEvery.ToString());
        await page.SetCheckedAsync("input[name=attention_maps]", true);
        await page.ClickAsync("#go");
        await page.WaitForFunctionAsync($"() => document.querySelectorAll('#history figure').length > {before}" +
                                        " || document.getElementById('error').textContent !== ''");
        var error = await page.TextContentAsync("#error");
        Assert.True(string.IsNullOrEmpty(error), "the page reported an error: " + error);
        var id = (await History(page))[0];
        await page.WaitForSelectorAsync($"#view[data-shown='{id}:']");
        Assert.Equal("done", await page.TextContentAsync("#status"));
        return id;
    }

    static Task<string[]> History(IPage page) => page.EvaluateAsync<string[]>(
        "() => [...document.querySelectorAll('#history figure')].map(f => f.dataset.job)");

    sealed record Shot(string Title, int Width, int Height, int[] Rgba);

    /// <summary>The image view's pixels once it shows <paramref name="word"/>'s overlay ("" for none) on job
    /// <paramref name="id"/>.</summary>
    static async Task<Shot> View(IPage page, string id, string word)
    {
        await page.WaitForSelectorAsync($"#view[data-shown='{id}:{word}']",
            new() { State = WaitForSelectorState.Attached });
        var json = await page.EvaluateAsync<JsonElement>("""
            () => {
              const view = document.getElementById("view");
              const data = view.getContext("2d").getImageData(0, 0, view.width, view.height).data;
              return { title: view.dataset.shown, width: view.width, height: view.height, rgba: Array.from(data) };
            }
            """);
        return ToShot(json);
    }

    /// <summary>Each matching &lt;img&gt; decoded and drawn at its own size into a fresh canvas.</summary>
    static async Task<List<Shot>> Pixels(IPage page, string selector)
    {
        var json = await page.EvaluateAsync<JsonElement>("""
            async selector => Promise.all([...document.querySelectorAll(selector)].map(async img => {
              await img.decode();
              const canvas = document.createElement("canvas");
              canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
              const g = canvas.getContext("2d");
              g.drawImage(img, 0, 0);
              const data = g.getImageData(0, 0, canvas.width, canvas.height).data;
              return { title: img.title, width: canvas.width, height: canvas.height, rgba: Array.from(data) };
            }))
            """, selector);
        return json.EnumerateArray().Select(ToShot).ToList();
    }

    static Shot ToShot(JsonElement e) => new(e.GetProperty("title").GetString()!, e.GetProperty("width").GetInt32(),
        e.GetProperty("height").GetInt32(), e.GetProperty("rgba").EnumerateArray().Select(v => v.GetInt32()).ToArray());

    static int[] Rgba(Image<Rgba32> image)
    {
        var values = new int[image.Width * image.Height * 4];
        for (int y = 0, i = 0; y < image.Height; y++)
            for (int x = 0; x < image.Width; x++, i += 4)
            {
                var p = image[x, y];
                (values[i], values[i + 1], values[i + 2], values[i + 3]) = (p.R, p.G, p.B, p.A);
            }
        return values;
    }

    /// <summary>A grey PNG data URL → its values row by row.</summary>
    static int[] Grey(byte[] png)
    {
        using var image = Image.Load<L8>(png);
        return Enumerable.Range(0, image.Height).SelectMany(y => Enumerable.Range(0, image.Width)
            .Select(x => (int)image[x, y].PackedValue)).ToArray();
    }

    static byte[] DataUrl(string url) => Convert.FromBase64String(url[(url.IndexOf(',') + 1)..]);

    static int MaxDifference(int[] a, int[] b)
    {
        Assert.Equal(a.Length, b.Length);
        return a.Zip(b, (x, y) => Math.Abs(x - y)).Max();
    }

    /// <summary>The standard deviation of the RGB values in [0, 1] (alpha left out): 0 for a blank image.</summary>
    static double Spread(int[] rgba)
    {
        var rgb = rgba.Where((_, i) => i % 4 != 3).Select(v => v / 255.0).ToArray();
        double mean = rgb.Average();
        return Math.Sqrt(rgb.Average(v => (v - mean) * (v - mean)));
    }
}
