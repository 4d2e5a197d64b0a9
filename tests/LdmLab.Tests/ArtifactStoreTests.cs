using LdmLab.Data;
using LdmLab.Runtime;

namespace LdmLab.Tests;

/// <summary>The artifact store: shipped → cache → training, and shipping that leaves nothing half-written.</summary>
public class ArtifactStoreTests
{
    static ShipRecord Record(string key) => new("TestRecipe (full profile)", key, 3, 0, "weights.bin", [1.0, 0.5],
        new Dictionary<string, double> { ["metric"] = 2 }, "nothing", "test machine");

    static void Weights(string dir, string text) => File.WriteAllText(Path.Combine(dir, "weights.bin"), text);

    [Fact]
    public void Ship_stages_verifies_and_replaces_and_a_failure_keeps_the_old_model()
    {
        var root = TestPaths.TempDir("store-ship");
        Directory.CreateDirectory(ArtifactStore.PartialDir(root, "m"));
        var first = ArtifactStore.Ship(root, "m", Record("k1"), dir => Weights(dir, "one"));
        Assert.Equal(Path.Combine(root, "m"), first.Dir);
        Assert.Equal(ShippedCheckpoint.Sha256(Path.Combine(root, "m", "weights.bin")), first.WeightsSha256);
        Assert.False(Directory.Exists(ArtifactStore.PartialDir(root, "m")), "the run's .partial cache is left behind");
        Assert.False(Directory.Exists(Path.Combine(root, "m.new")));
        var store = new ArtifactStore(RunSettings.Defaults with { CheckpointsDir = root });
        Assert.True(ArtifactStore.IsShipped("m", "k1", root));
        Assert.False(ArtifactStore.IsShipped("m", "k2", root));
        // a model writer that fails half-way: the shipped folder is untouched
        Assert.Throws<IOException>(() => ArtifactStore.Ship(root, "m", Record("k2"), dir =>
        {
            Weights(dir, "two, half");
            throw new IOException("disk full");
        }));
        Assert.Equal("one", File.ReadAllText(Path.Combine(root, "m", "weights.bin")));
        Assert.False(Directory.Exists(Path.Combine(root, "m.new")), "the half-written staging folder is left behind");
        Assert.Equal("k1", store.Find("m")!.RecipeKey);
        // a writer that forgets the weights file: refused before anything is replaced
        Assert.ThrowsAny<Exception>(() => ArtifactStore.Ship(root, "m", Record("k3"), _ => { }));
        Assert.Equal("k1", store.Find("m")!.RecipeKey);
        var second = ArtifactStore.Ship(root, "m", Record("k2"), dir => Weights(dir, "two"));
        Assert.Equal("k2", second.RecipeKey);
        Assert.Equal("two", File.ReadAllText(Path.Combine(root, "m", "weights.bin")));
        Directory.Delete(root, true);
    }

    [Fact]
    public void Resolve_prefers_the_shipped_model_only_in_the_quick_profile_for_seed_zero()
    {
        var root = TestPaths.TempDir("store-resolve");
        ArtifactStore.Ship(root, "m", Record("k"), dir => Weights(dir, "w"));
        var quick = new ArtifactStore(new RunSettings(Profile.Quick, Path.Combine(root, "cache"), root));
        var full = quick.Settings with { Profile = Profile.Full };
        string Resolve(ArtifactStore s, string? name, long seed) => s.Resolve(name, seed, c => "shipped " + c.Name,
            () => "trained");
        Assert.Equal("shipped m", Resolve(quick, "m", 0));
        Assert.Equal("trained", Resolve(quick, "m", 1));
        Assert.Equal("trained", Resolve(quick, "other", 0));
        Assert.Equal("trained", Resolve(quick, null, 0));
        Assert.Equal("trained", Resolve(new ArtifactStore(full), "m", 0));
        Assert.Equal(Path.Combine(root, "cache", "ae-abc", "steps-4"), quick.CacheEntry("ae", "abc", "steps-4"));
        // a shipped model whose weights changed is refused, naming the file
        File.AppendAllText(Path.Combine(root, "m", "weights.bin"), "!");
        var e = Assert.Throws<DatasetException>(() => Resolve(quick, "m", 0));
        Assert.Contains(Path.Combine(root, "m", "weights.bin"), e.Message);
        Directory.Delete(root, true);
    }

    [Fact]
    public void The_store_follows_the_run_settings()
    {
        var root = TestPaths.TempDir("store-settings");
        var (cache, checkpoints) = TestPaths.WithSettings(s => s with { CacheDir = root, CheckpointsDir = "/nowhere" },
            () => (FashionLatentRecipe.CacheRoot, ShippedCheckpoint.Root));
        Assert.Equal(root, cache);
        Assert.Equal("/nowhere", checkpoints);
        Assert.Null(TestPaths.WithSettings(s => s with { CheckpointsDir = root },
            () => ShippedCheckpoint.Find("fashion-vae")));
        Directory.Delete(root, true);
    }
}
