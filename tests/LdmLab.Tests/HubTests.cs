using System.Security.Cryptography;
using System.Text;
using LdmLab.Interop;
using LdmLab.Interop.Hub;
using LdmLab.Pipelines;
using LdmLab.Runtime;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>
/// The hub client against a loopback hub (<see cref="FakeHub"/>) serving the tiny pipeline of
/// <see cref="PipelineTests.Tiny"/>: huggingface_hub's cache layout, reuse, offline mode, resume, verification,
/// typed errors with their fixes, tokens, unsafe names, variants and pickles.
/// </summary>
public class HubClientTests
{
    /// <summary>The tiny pipeline saved once as a diffusers folder.</summary>
    static readonly Lazy<string> TinyFolder = new(() =>
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("hub-tiny");
        PipelineTests.Tiny().SavePretrained(dir);
        return dir;
    });

    const string Unet = "unet/diffusion_pytorch_model.safetensors";
    const string Vae = "vae/diffusion_pytorch_model.safetensors";

    /// <summary>The tiny pipeline, plus files a pipeline download must leave alone.</summary>
    static FakeRepo TinyRepo()
    {
        var repo = FakeRepo.FromFolder(TinyFolder.Value);
        repo.Files["unet/diffusion_pytorch_model.bin"] = [1, 2, 3];
        repo.Files["text_encoder/pytorch_model.bin"] = [4, 5, 6];
        repo.Files["safety_checker/model.safetensors"] = [7, 8, 9];
        repo.Files["README.md"] = "# tiny"u8.ToArray();
        return repo;
    }

    static HubOptions Options(FakeHub hub, string? cache = null) =>
        new() { Endpoint = hub.Base, CacheDir = cache ?? TestPaths.TempDir("hub-cache") };

    static string RepoFolder(HubOptions o, string repoId) =>
        Path.Combine(o.CacheDir, HubNames.RepoFolderName(repoId));

    static readonly GenerationOptions Astronaut = new()
    {
        Prompts = ["an astronaut riding a horse"], Steps = 4, GuidanceScale = 7.5, Height = 16, Width = 16, Seed = 7,
    };

    [Fact]
    public void First_download_writes_pythons_layout_and_the_pipeline_loads_from_the_snapshot()
    {
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/sd"] = TinyRepo();
        var o = Options(hub);
        var snapshot = HubClient.SnapshotForPipeline("tiny/sd", o);

        var folder = RepoFolder(o, "tiny/sd");
        Assert.Equal(Path.Combine(folder, "snapshots", repo.Sha), snapshot);
        Assert.Equal(repo.Sha, File.ReadAllText(Path.Combine(folder, "refs", "main")));
        string[] linked = ["model_index.json", Unet, "tokenizer/vocab.json", "text_encoder/model.safetensors"];
        foreach (var name in linked)
        {
            var link = new FileInfo(Path.Combine(snapshot, name));
            var depth = name.Count(c => c == '/');
            var etag = FakeRepo.Etag(name, repo.Files[name]);
            Assert.Equal(string.Concat(Enumerable.Repeat("../", depth + 2)) + "blobs/" + etag, link.LinkTarget);
            Assert.Equal(repo.Files[name], File.ReadAllBytes(link.FullName));
        }
        Assert.Empty(Directory.GetFiles(Path.Combine(folder, "blobs"), "*.incomplete"));
        Assert.DoesNotContain(hub.Log, r => r.Path.EndsWith(".bin") || r.Path.Contains("safety_checker")
                                            || r.Path.Contains("README"));

        // the snapshot is a diffusers folder: it loads and generates exactly what the original folder does
        var fromHub = StableDiffusionPipeline.FromPretrained(snapshot).Generate(Astronaut);
        var original = StableDiffusionPipeline.FromPretrained(TinyFolder.Value).Generate(Astronaut);
        Assert.Equal(0.0, Parity.MaxAbsDiff(fromHub.Latents, original.Latents));
    }

    [Fact]
    public void Second_run_asks_only_for_the_revision_and_offline_asks_nothing()
    {
        using var hub = new FakeHub();
        hub.Repos["tiny/sd"] = TinyRepo();
        var o = Options(hub);
        var first = HubClient.SnapshotForPipeline("tiny/sd", o);
        hub.Log.Clear();
        Assert.Equal(first, HubClient.SnapshotForPipeline("tiny/sd", o));
        Assert.Equal("/api/models/tiny/sd/revision/main", Assert.Single(hub.Log).Path);

        hub.Log.Clear();
        Assert.Equal(first, HubClient.SnapshotForPipeline("tiny/sd", o with { Offline = true }));
        Assert.Equal(first, Path.GetDirectoryName(HubClient.DownloadFile("tiny/sd", "model_index.json",
            o with { Offline = true })));
        Assert.Empty(hub.Log);
    }

    [Fact]
    public void Offline_without_the_repo_cached_names_it_and_an_unreachable_hub_falls_back_to_the_cache()
    {
        using var hub = new FakeHub();
        hub.Repos["tiny/sd"] = TinyRepo();
        var o = Options(hub);
        var e = Assert.Throws<HubException>(() => HubClient.SnapshotForPipeline("tiny/sd", o with { Offline = true }));
        Assert.Equal(HubErrorKind.NotCached, e.Kind);
        Assert.Contains("'tiny/sd'", e.Message);
        Assert.Contains("HF_HUB_OFFLINE", e.Message);
        var f = Assert.Throws<HubException>(() => HubClient.DownloadFile("tiny/sd", Unet, o with { Offline = true }));
        Assert.Equal((HubErrorKind.NotCached, Unet), (f.Kind, f.FileName));
        Assert.Empty(hub.Log);

        var snapshot = HubClient.SnapshotForPipeline("tiny/sd", o);
        var dead = o with { Endpoint = new Uri("http://127.0.0.1:9/") };   // the discard port: refused
        Assert.Equal(snapshot, HubClient.SnapshotForPipeline("tiny/sd", dead));
        var g = Assert.Throws<HubException>(() => HubClient.SnapshotForPipeline("tiny/other", dead));
        Assert.Equal(HubErrorKind.NotCached, g.Kind);
        Assert.Contains("could not be reached", g.Message);
    }

    /// <summary>A cache as Python's huggingface_hub leaves it (written here by hand) serves without a download.
    /// </summary>
    [Fact]
    public void A_cache_in_pythons_layout_is_used_without_downloading()
    {
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/sd"] = TinyRepo();
        var o = Options(hub);
        var folder = Path.Combine(o.CacheDir, "models--tiny--sd");
        foreach (var (name, bytes) in repo.Files.Where(f => !f.Key.EndsWith(".bin") && !f.Key.StartsWith("safety")))
        {
            var etag = FakeRepo.Etag(name, bytes);
            Directory.CreateDirectory(Path.Combine(folder, "blobs"));
            File.WriteAllBytes(Path.Combine(folder, "blobs", etag), bytes);
            var pointer = Path.Combine([folder, "snapshots", repo.Sha, .. name.Split('/')]);
            Directory.CreateDirectory(Path.GetDirectoryName(pointer)!);
            var up = string.Concat(Enumerable.Repeat("../", name.Count(c => c == '/') + 2));
            File.CreateSymbolicLink(pointer, $"{up}blobs/{etag}");
        }
        Directory.CreateDirectory(Path.Combine(folder, "refs"));
        File.WriteAllText(Path.Combine(folder, "refs", "main"), repo.Sha);   // Python writes no newline

        var snapshot = HubClient.SnapshotForPipeline("tiny/sd", o);
        Assert.Equal(Path.Combine(folder, "snapshots", repo.Sha), snapshot);
        Assert.Empty(hub.FileRequests);
        Assert.Equal(snapshot, HubClient.SnapshotForPipeline("tiny/sd", o with { Offline = true, VerifyCache = true }));
        TorchRuntime.Setup();
        _ = StableDiffusionPipeline.FromPretrained(snapshot);
    }

    [Fact]
    public void A_broken_transfer_is_resumed_with_a_range_request()
    {
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/sd"] = TinyRepo();
        // the U-Net's weights break off after 1000 bytes, three times: one call's attempts, then a second call
        hub.Blob = (name, nth, bytes) => (bytes, name == Unet && nth <= 3 ? 1000 : null);
        var o = Options(hub);
        var e = Assert.Throws<HubException>(() => HubClient.SnapshotForPipeline("tiny/sd", o));
        Assert.Equal((HubErrorKind.Network, Unet), (e.Kind, e.FileName));
        var etag = FakeRepo.Etag(Unet, repo.Files[Unet]);
        var partial = Path.Combine(RepoFolder(o, "tiny/sd"), "blobs", etag + ".incomplete");
        Assert.Equal(3000, new FileInfo(partial).Length);
        Assert.False(File.Exists(Path.Combine(RepoFolder(o, "tiny/sd"), "snapshots", repo.Sha, "unet",
            "diffusion_pytorch_model.safetensors")));

        var snapshot = HubClient.SnapshotForPipeline("tiny/sd", o);
        var gets = hub.Log.Where(r => r.Path == $"/lfs/{etag}").ToList();
        Assert.Equal([null, "bytes=1000-", "bytes=2000-", "bytes=3000-"], gets.Select(g => g.Range));
        Assert.Equal(repo.Files[Unet], File.ReadAllBytes(Path.Combine(snapshot, Unet)));
        Assert.False(File.Exists(partial));
    }

    [Fact]
    public void A_partial_file_left_by_another_process_is_resumed()
    {
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/sd"] = TinyRepo();
        var o = Options(hub);
        var etag = FakeRepo.Etag(Vae, repo.Files[Vae]);
        var blobs = Path.Combine(RepoFolder(o, "tiny/sd"), "blobs");
        Directory.CreateDirectory(blobs);
        File.WriteAllBytes(Path.Combine(blobs, etag + ".incomplete"), repo.Files[Vae][..777]);
        var progress = new List<HubProgress>();
        var snapshot = HubClient.SnapshotForPipeline("tiny/sd", o with { Progress = progress.Add });
        var vaeProgress = progress.Where(p => p.FileName == Vae).ToList();
        Assert.True(vaeProgress[0].Bytes > 777);
        Assert.Equal(repo.Files[Vae].Length, vaeProgress[^1].Bytes);
        Assert.All(progress, p => Assert.Equal("tiny/sd", p.RepoId));
        Assert.Equal("bytes=777-", Assert.Single(hub.Log, r => r.Path == $"/lfs/{etag}").Range);
        Assert.Equal(repo.Files[Vae], File.ReadAllBytes(Path.Combine(snapshot, Vae)));
    }

    [Fact]
    public void A_corrupted_download_is_refused_and_nothing_is_kept()
    {
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/sd"] = TinyRepo();
        hub.Blob = (name, _, bytes) =>
        {
            if (name != Unet) return (bytes, null);
            var bad = bytes.ToArray();
            bad[bad.Length / 2] ^= 0x40;
            return (bad, null);
        };
        var o = Options(hub);
        var e = Assert.Throws<HubException>(() => HubClient.SnapshotForPipeline("tiny/sd", o));
        Assert.Equal((HubErrorKind.Corrupt, Unet), (e.Kind, e.FileName));
        Assert.Contains("SHA-256", e.Message);
        var etag = FakeRepo.Etag(Unet, repo.Files[Unet]);
        var blobs = Path.Combine(RepoFolder(o, "tiny/sd"), "blobs");
        Assert.False(File.Exists(Path.Combine(blobs, etag)));
        Assert.False(File.Exists(Path.Combine(blobs, etag + ".incomplete")));

        hub.Blob = null;   // a good server again: the next call downloads afresh
        Assert.Equal(repo.Files[Unet], File.ReadAllBytes(HubClient.DownloadFile("tiny/sd", Unet, o)));
    }

    [Fact]
    public void A_tampered_cached_blob_is_detected()
    {
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/sd"] = TinyRepo();
        var o = Options(hub);
        HubClient.SnapshotForPipeline("tiny/sd", o);
        var blob = Path.Combine(RepoFolder(o, "tiny/sd"), "blobs", FakeRepo.Etag(Vae, repo.Files[Vae]));
        var bytes = File.ReadAllBytes(blob);
        bytes[^5] ^= 1;
        File.WriteAllBytes(blob, bytes);
        var e = Assert.Throws<HubException>(() =>
            HubClient.SnapshotForPipeline("tiny/sd", o with { VerifyCache = true }));
        Assert.Equal((HubErrorKind.Corrupt, Vae), (e.Kind, e.FileName));
        Assert.Contains(blob, e.Message);

        File.WriteAllBytes(blob, bytes[..100]);   // a truncated blob: the HEAD's size gives it away even unverified
        var t = Assert.Throws<HubException>(() => HubClient.DownloadFile("tiny/sd", Vae, o));
        Assert.Equal((HubErrorKind.Corrupt, Vae), (t.Kind, t.FileName));
    }

    [Fact]
    public async Task A_download_waits_for_another_that_holds_the_partial_file()
    {
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/sd"] = TinyRepo();
        var o = Options(hub);
        var blobs = Path.Combine(RepoFolder(o, "tiny/sd"), "blobs");
        Directory.CreateDirectory(blobs);
        var partial = Path.Combine(blobs, FakeRepo.Etag(Vae, repo.Files[Vae]) + ".incomplete");
        // "another process" holds the partial file
        var holder = new FileStream(partial, FileMode.Create, FileAccess.ReadWrite, FileShare.None);
        var download = Task.Run(() => HubClient.DownloadFile("tiny/sd", Vae, o));
        await Task.Delay(1500);
        Assert.False(download.IsCompleted, "it waits instead of failing");
        await holder.DisposeAsync();
        var path = await download.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.Equal(repo.Files[Vae], File.ReadAllBytes(path));
    }

    [Fact]
    public void A_blob_deleted_by_hand_is_fetched_again_and_relinked()
    {
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/sd"] = TinyRepo();
        var o = Options(hub);
        var snapshot = HubClient.SnapshotForPipeline("tiny/sd", o);
        var blob = Path.Combine(RepoFolder(o, "tiny/sd"), "blobs", FakeRepo.Etag(Vae, repo.Files[Vae]));
        File.Delete(blob);                                    // the snapshot link now dangles
        Assert.False(HubCache.Resolves(Path.Combine(snapshot, Vae)));
        Assert.Throws<HubException>(() => HubClient.SnapshotForPipeline("tiny/sd", o with { Offline = true }));
        hub.Log.Clear();
        HubClient.SnapshotForPipeline("tiny/sd", o);
        Assert.Equal(repo.Files[Vae], File.ReadAllBytes(Path.Combine(snapshot, Vae)));
        Assert.Single(hub.FileRequests, r => r.Method == "GET");                   // only the missing blob
    }

    [Fact]
    public void Errors_name_the_repo_and_the_fix()
    {
        using var hub = new FakeHub();
        hub.Repos["tiny/sd"] = TinyRepo();
        hub.Repos["tiny/private"] = new FakeRepo { RequiredToken = "hf_secret" };
        hub.Repos["tiny/gated"] = new FakeRepo { Gated = true };
        var o = Options(hub);

        var missing = Assert.Throws<HubException>(() => HubClient.SnapshotForPipeline("tiny/typo", o));
        Assert.Equal((HubErrorKind.RepoNotFound, 404, "tiny/typo"), (missing.Kind, missing.StatusCode, missing.RepoId));
        Assert.Contains("'tiny/typo'", missing.Message);
        Assert.Contains("spelling", missing.Message);

        var unauthorized = Assert.Throws<HubException>(() => HubClient.SnapshotForPipeline("tiny/private", o));
        Assert.Equal((HubErrorKind.Unauthorized, 401), (unauthorized.Kind, unauthorized.StatusCode));
        Assert.Contains("'tiny/private'", unauthorized.Message);
        Assert.Contains("HF_TOKEN", unauthorized.Message);
        Assert.Contains("huggingface-cli login", unauthorized.Message);

        var gated = Assert.Throws<HubException>(() => HubClient.DownloadFile("tiny/gated", "model_index.json", o));
        Assert.Equal((HubErrorKind.GatedRepo, 403), (gated.Kind, gated.StatusCode));
        Assert.Contains("accept its licence", gated.Message);
        Assert.Contains(new Uri(hub.Base, "tiny/gated").ToString(), gated.Message);

        var revision = Assert.Throws<HubException>(() =>
            HubClient.SnapshotForPipeline("tiny/sd", o with { Revision = "v9" }));
        Assert.Equal(HubErrorKind.RevisionNotFound, revision.Kind);
        Assert.Contains("'v9'", revision.Message);

        var entry = Assert.Throws<HubException>(() => HubClient.DownloadFile("tiny/sd", "nope.json", o));
        Assert.Equal((HubErrorKind.EntryNotFound, "nope.json", 404), (entry.Kind, entry.FileName, entry.StatusCode));
        Assert.Contains("'tiny/sd'", entry.Message);
    }

    [Fact]
    public void The_token_is_sent_as_bearer()
    {
        using var hub = new FakeHub();
        var repo = TinyRepo();
        var secret = new FakeRepo { RequiredToken = "hf_secret", Sha = repo.Sha };
        foreach (var (k, v) in repo.Files) secret.Files[k] = v;
        hub.Repos["tiny/private"] = secret;
        var o = Options(hub) with { Token = "hf_secret" };
        var snapshot = HubClient.SnapshotForPipeline("tiny/private", o);
        Assert.True(File.Exists(Path.Combine(snapshot, Unet)));
        Assert.All(hub.Log.Where(r => !r.Path.StartsWith("/lfs/")),
            r => Assert.Equal("Bearer hf_secret", r.Authorization));
        // the LFS blobs live on another host (signed addresses): the token never goes there
        Assert.Contains(hub.Log, r => r.Path.StartsWith("/lfs/"));
        Assert.All(hub.Log.Where(r => r.Path.StartsWith("/lfs/")), r => Assert.Null(r.Authorization));
        var config = HubClient.DownloadFile("tiny/private", "config.json", o with { Subfolder = "unet" });
        Assert.Equal(Path.Combine(snapshot, "unet", "config.json"), config);
    }

    [Fact]
    public void A_file_name_that_leaves_the_cache_is_refused()
    {
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/evil"] = TinyRepo();
        repo.Files["../../evil"] = "pwned"u8.ToArray();
        var o = Options(hub);
        var e = Assert.Throws<HubException>(() => HubClient.SnapshotForPipeline("tiny/evil", o));
        Assert.Equal((HubErrorKind.UnsafeFileName, "../../evil"), (e.Kind, e.FileName));
        Assert.Empty(hub.FileRequests);
        Assert.False(File.Exists(Path.Combine(o.CacheDir, "evil")));
        foreach (var name in new[] { "/etc/passwd", "a\\..\\b", "C:/x", "unet/../../x", "a//b", "./a" })
            Assert.NotNull(HubNames.FileNameProblem(name));
        Assert.Throws<ArgumentException>(() => HubClient.DownloadFile("tiny/evil", "../x", o));
    }

    [Fact]
    public void The_fp16_variant_is_chosen_where_present_and_the_plain_file_elsewhere()
    {
        TorchRuntime.Setup();
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/fp16"] = TinyRepo();
        var unetFp16 = "unet/diffusion_pytorch_model.fp16.safetensors";
        var half = TestPaths.TempDir("hub-fp16");
        using (var _ = NewDisposeScope())
        {
            var tensors = SafeTensors.Load(Path.Combine(TinyFolder.Value, Unet));
            SafeTensors.Save(Path.Combine(half, "unet.safetensors"),
                tensors.Select(kv => KeyValuePair.Create(kv.Key, kv.Value.to_type(ScalarType.Float16))));
        }
        repo.Files[unetFp16] = File.ReadAllBytes(Path.Combine(half, "unet.safetensors"));
        repo.Files["text_encoder/model.fp16.safetensors"] = repo.Files["text_encoder/model.safetensors"];
        var o = Options(hub) with { Variant = "fp16" };

        var snapshot = HubClient.SnapshotForPipeline("tiny/fp16", o);
        Assert.True(File.Exists(Path.Combine(snapshot, unetFp16)));
        Assert.True(File.Exists(Path.Combine(snapshot, "text_encoder", "model.fp16.safetensors")));
        Assert.True(File.Exists(Path.Combine(snapshot, Vae)));   // the VAE has no fp16 file: the plain one
        Assert.False(File.Exists(Path.Combine(snapshot, Unet)));
        Assert.False(File.Exists(Path.Combine(snapshot, "text_encoder", "model.safetensors")));
        var plain = LdmLab.UNet.UNet2DConditionModel.FromPretrained(Path.Combine(TinyFolder.Value, "unet"));
        var fromHalf = LdmLab.UNet.UNet2DConditionModel.FromPretrained(Path.Combine(snapshot, "unet"), "fp16");
        var a = plain.state_dict();
        foreach (var (k, v) in fromHalf.state_dict())
            Assert.True(Parity.MaxAbsDiff(v, a[k]) < 2e-3, k);
        Assert.Equal(ScalarType.Float32, fromHalf.parameters().First().dtype);

        // the pipeline by repo id: the variant reaches every loader (the snapshot has no plain U-Net file)
        var pipe = StableDiffusionPipeline.FromPretrained("tiny/fp16", o);
        foreach (var (k, v) in pipe.Unet.state_dict())
            Assert.True(Parity.MaxAbsDiff(v, a[k]) < 2e-3, k);
        hub.Log.Clear();
        var offline = StableDiffusionPipeline.FromPretrained("tiny/fp16", o with { Offline = true });
        Assert.Empty(hub.Log);
        Assert.Equal(pipe.Unet.Config.ToJson().ToJsonString(), offline.Unet.Config.ToJson().ToJsonString());

        hub.Log.Clear();
        var plainSnapshot = HubClient.SnapshotForPipeline("tiny/fp16", o with { Variant = null });
        Assert.True(File.Exists(Path.Combine(plainSnapshot, Unet)));
        Assert.DoesNotContain(hub.Log, r => r.Path.Contains(".fp16."));
    }

    [Fact]
    public void Pickle_only_weights_are_refused_and_never_downloaded()
    {
        using var hub = new FakeHub();
        var repo = hub.Repos["tiny/pickles"] = TinyRepo();
        repo.Files.Remove(Unet);
        var o = Options(hub);
        var e = Assert.Throws<HubException>(() => HubClient.SnapshotForPipeline("tiny/pickles", o));
        Assert.Equal((HubErrorKind.PickleOnly, "unet/diffusion_pytorch_model.bin"), (e.Kind, e.FileName));
        Assert.Contains("safetensors", e.Message);
        Assert.Contains("'tiny/pickles'", e.Message);
        Assert.DoesNotContain(hub.Log, r => r.Path.EndsWith(".bin"));
    }
}

/// <summary>Options from the environment, repo-id syntax and <see cref="PretrainedSource"/>.</summary>
public class HubOptionsTests
{
    [Fact]
    public void Without_a_reader_the_options_come_from_what_the_run_settings_captured_at_the_edge()
    {
        var home = TestPaths.TempDir("hub-settings");
        var environment = new Dictionary<string, string>
        {
            ["HOME"] = home, ["HF_HUB_CACHE"] = Path.Combine(home, "hubcache"), ["HF_HUB_OFFLINE"] = "1",
            ["UNRELATED"] = "x",
        };
        var settings = RunSettings.FromEnvironment(environment.GetValueOrDefault);
        Assert.Equal((home, "1", null), (settings.HubVariable("HOME"), settings.HubVariable("HF_HUB_OFFLINE"),
            settings.HubVariable("UNRELATED")));
        var o = settings.Apply(() => HubOptions.FromEnvironment());
        Assert.Equal((Path.Combine(home, "hubcache"), true), (o.CacheDir, o.Offline));
    }

    [Fact]
    public void Options_come_from_huggingface_hubs_variables()
    {
        var home = TestPaths.TempDir("hub-home");
        var d = new Dictionary<string, string> { ["HOME"] = home };
        var o = HubOptions.FromEnvironment(d.GetValueOrDefault);
        Assert.Equal(Path.Combine(home, ".cache", "huggingface", "hub"), o.CacheDir);
        Assert.False(o.Offline);
        Assert.Null(o.Token);
        Assert.Equal(new Uri("https://huggingface.co"), o.Endpoint);
        Assert.Equal("main", o.Revision);

        var hfHome = Path.Combine(home, "hf");
        Directory.CreateDirectory(hfHome);
        File.WriteAllText(Path.Combine(hfHome, "token"), "  hf_fromfile\n");
        d["HF_HOME"] = hfHome;
        d["HF_HUB_OFFLINE"] = "On";
        d["HF_ENDPOINT"] = "http://mirror.example/";
        o = HubOptions.FromEnvironment(d.GetValueOrDefault);
        Assert.Equal(Path.Combine(hfHome, "hub"), o.CacheDir);
        Assert.True(o.Offline);
        Assert.Equal("hf_fromfile", o.Token);
        Assert.Equal(new Uri("http://mirror.example"), o.Endpoint);

        d["HF_HUB_CACHE"] = "/elsewhere/cache";
        d["HF_TOKEN"] = "hf_env";
        d["HF_HUB_OFFLINE"] = "0";
        o = HubOptions.FromEnvironment(d.GetValueOrDefault);
        Assert.Equal("/elsewhere/cache", o.CacheDir);
        Assert.Equal("hf_env", o.Token);
        Assert.False(o.Offline);
        foreach (var yes in new[] { "1", "true", "YES", "on" })
            Assert.True(HubOptions.FromEnvironment(new Dictionary<string, string> { ["HF_HUB_OFFLINE"] = yes }
                .GetValueOrDefault).Offline);
    }

    [Theory]
    [InlineData("org/name", true)]
    [InlineData("stable-diffusion-v1-5/stable-diffusion-v1-5", true)]
    [InlineData("Org_1/name.v2-x", true)]
    [InlineData("name", false)]
    [InlineData("a/b/c", false)]
    [InlineData("a--b/c", false)]
    [InlineData("a/b..c", false)]
    [InlineData("a/b.git", false)]
    [InlineData("-a/b", false)]
    [InlineData("a/b-", false)]
    [InlineData("a/b c", false)]
    [InlineData("", false)]
    public void Repo_ids_follow_huggingface_hubs_rules(string id, bool valid) =>
        Assert.Equal(valid, HubNames.IsRepoId(id));

    [Fact]
    public void Pretrained_sources_are_folders_or_repo_ids()
    {
        var dir = TestPaths.TempDir("hub-source");
        Assert.Equal(dir, PretrainedSource.Resolve(dir));
        var e = Assert.Throws<ArgumentException>(() => PretrainedSource.Resolve("no such folder!"));
        Assert.Contains("neither", e.Message);
        var o = new HubOptions { Offline = true, CacheDir = TestPaths.TempDir("hub-empty") };
        var h = Assert.Throws<HubException>(() => PretrainedSource.Resolve("org/name", o));
        Assert.Equal(HubErrorKind.NotCached, h.Kind);
        Assert.Contains("no folder", h.Message);
    }
}

/// <summary>Garbage from the revision API (random bytes, mutated or ill-typed JSON): typed errors only.</summary>
public class HubFuzzTests(ITestOutputHelper output)
{
    [Fact]
    public void Garbage_from_the_revision_api_gives_typed_errors()
    {
        using var hub = new FakeHub();
        var repo = new FakeRepo();
        repo.Files["model_index.json"] = "{}"u8.ToArray();
        hub.Repos["fuzz/repo"] = repo;
        var valid = Encoding.UTF8.GetBytes(
            $$"""{"id":"fuzz/repo","sha":"{{repo.Sha}}","siblings":[{"rfilename":"model_index.json"},""" +
            """{"rfilename":"unet/config.json"}]}""");
        var shapes = new[]
        {
            "[]", "null", "\"x\"", "{}", """{"sha":1,"siblings":[]}""", """{"sha":"SHA"}""",
            """{"sha":"SHA","siblings":{}}""", """{"sha":"SHA","siblings":[1,null,{}]}""",
            """{"sha":"SHA","siblings":[{"rfilename":"a\\b"}]}""", """{"sha":"../../x","siblings":[]}""",
            """{"sha":"SHA","siblings":[{"rfilename":"/abs"}]}""", """{"sha":"SHA","siblings":[{"rfilename":7}]}""",
        }.Select(t => t.Replace("SHA", repo.Sha)).ToArray();
        var cache = TestPaths.TempDir("hub-fuzz");
        var o = new HubOptions { Endpoint = hub.Base, CacheDir = cache };
        byte[] body = [];
        hub.RevisionBody = _ => body;
        var outcome = Fuzz.Run(300, 24, (rng, i) =>
        {
            body = (i % 3) switch
            {
                0 => Fuzz.Mutate(valid, rng),
                1 => Encoding.UTF8.GetBytes(shapes[rng.Next(shapes.Length)]),
                _ => RandomBytes(rng),
            };
            HubClient.SnapshotForPipeline("fuzz/repo", o);
        }, (e, _) => e is HubException h && h.Message.Contains("fuzz/repo"));
        output.WriteLine(outcome.ToString());
        Assert.DoesNotContain(outcome.Kinds.Keys, k => k == "loaded");
        Assert.False(File.Exists(Path.Combine(cache, "x")));
    }

    /// <summary>Missing, garbled or wrong metadata headers (commit, ETag, size, Location) on resolve/.</summary>
    [Fact]
    public void Garbled_file_metadata_gives_typed_errors()
    {
        TorchRuntime.Setup();
        using var hub = new FakeHub();
        var tiny = TestPaths.TempDir("hub-fuzz-tiny");
        PipelineTests.Tiny().SavePretrained(tiny);
        hub.Repos["fuzz/sd"] = FakeRepo.FromFolder(tiny);
        var root = TestPaths.TempDir("hub-fuzz-meta");
        string[] names = ["X-Repo-Commit", "X-Linked-Etag", "X-Linked-Size", "ETag", "Location"];
        string[] files = ["model_index.json", "unet/config.json", "vae/diffusion_pytorch_model.safetensors"];
        Random? caseRng = null;
        hub.ResolveHeaders = (_, headers) =>
        {
            var rng = caseRng!;
            foreach (var name in names.Where(n => headers[n] is not null && rng.NextDouble() < 0.4))
            {
                string? value = rng.Next(9) switch
                {
                    0 => null,
                    1 => new string(Enumerable.Range(0, rng.Next(0, 30)).Select(_ => (char)rng.Next(33, 127))
                        .ToArray()),
                    2 => "-1",
                    3 => "99999999999",
                    4 => "../../x",
                    5 => "ftp://127.0.0.1/x",
                    6 => "http://127.0.0.1:9/x",
                    7 => Convert.ToHexStringLower(RandomBytesOf(rng, 20)),
                    _ => "\"" + Convert.ToHexStringLower(RandomBytesOf(rng, 32)) + "\"",
                };
                if (value is null) headers.Remove(name); else headers[name] = value;
            }
        };
        var outcome = Fuzz.Run(150, 25, (rng, i) =>
        {
            caseRng = rng;
            var o = new HubOptions { Endpoint = hub.Base, CacheDir = Path.Combine(root, $"c{i}") };
            try { HubClient.DownloadFile("fuzz/sd", files[rng.Next(files.Length)], o); }
            finally
            {
                if (Directory.Exists(o.CacheDir)) Directory.Delete(o.CacheDir, recursive: true);
            }
        }, (e, _) => e is HubException h && h.Message.Contains("fuzz/sd"));
        output.WriteLine(outcome.ToString());
        Assert.Empty(Directory.GetFileSystemEntries(root));
    }

    static byte[] RandomBytesOf(Random rng, int n)
    {
        var b = new byte[n];
        rng.NextBytes(b);
        return b;
    }

    static byte[] RandomBytes(Random rng)
    {
        var b = new byte[rng.Next(0, 200)];
        rng.NextBytes(b);
        return b;
    }
}
