using LdmLab.Adapters;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Interop;
using LdmLab.ParityChecks;
using LdmLab.Runtime;
using LdmLab.Training;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>Textual inversion: added tokens, only the new rows train, both file layouts, pipelines, bad
/// files.</summary>
public class TextualInversionTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);

    static (ClipTokenizer tokenizer, ClipTextModel text) Tiny() =>
        (ClipTokenizer.Default, ClipTextModel.FromPretrained(Fixture("tiny-clip-text")));

    [Fact]
    public void Added_tokens_are_matched_before_cleaning_and_a_multi_vector_token_stands_for_all_its_ids()
    {
        var tokenizer = ClipTokenizer.Default;
        int size = tokenizer.VocabSize;
        var grown = tokenizer.WithAddedToken("<cat-toy>", vectors: 3);
        Assert.Equal(size + 3, grown.VocabSize);
        Assert.Equal(size, tokenizer.VocabSize);                                              // the base is untouched
        Assert.Equal(new[] { "<cat-toy>", "<cat-toy>_1", "<cat-toy>_2" }, grown.AddedTokens.Keys.Order());
        var ids = grown.EncodeIds("a photo of <cat-toy>, on a table");
        var plain = tokenizer.EncodeIds("a photo of");
        Assert.Equal(plain, ids[..plain.Length]);
        Assert.Equal(new[] { size, size + 1, size + 2 }, ids[plain.Length..(plain.Length + 3)]);
        Assert.Equal(tokenizer.EncodeIds(", on a table"), ids[(plain.Length + 3)..]);
        Assert.Equal(new[] { size + 1 }, grown.EncodeIds("<cat-toy>_1"));                   // longest match first
        Assert.Equal("<cat-toy>_2", grown.Token(size + 2));
        // a token the vocabulary has would change what existing prompts mean
        Assert.Contains("already contains the token 'cat'",
            Assert.Throws<ArgumentException>(() => tokenizer.WithAddedToken("cat")).Message);
        Assert.Throws<ArgumentException>(() => grown.WithAddedToken("<cat-toy>_1"));
    }

    [Fact]
    public void Added_tokens_survive_save_pretrained_as_added_tokens_json()
    {
        var dir = TestPaths.TempDir("ti-tokenizer");
        var grown = ClipTokenizer.Default.WithAddedToken("<sks>", vectors: 2);
        grown.SavePretrained(dir);
        Assert.True(File.Exists(Path.Combine(dir, "added_tokens.json")));
        var back = ClipTokenizer.FromFolder(dir);
        Assert.Equal(grown.EncodeIds("a <sks> dress"), back.EncodeIds("a <sks> dress"));
        File.WriteAllText(Path.Combine(dir, "added_tokens.json"), "{\"<x>\": 7}");
        var e = Assert.Throws<InvalidDataException>(() => ClipTokenizer.FromFolder(dir));
        Assert.Contains("expected 49408", e.Message);
    }

    [Fact]
    public void Training_changes_only_the_new_rows()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var (tokenizer, text) = Tiny();
        var before = text.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var (grown, ids) = TextualInversion.Create(tokenizer, text, "<my-bag>", initializer: "bag", vectors: 2);
        Assert.Equal(2, ids.Length);
        var table = text.TokenEmbedding;
        int bag = tokenizer.EncodeIds("bag")[0];
        Assert.Equal(0, Parity.MaxAbsDiff(table[ids[0]], table[bag]));                       // initialised from "bag"

        manual_seed(1);
        var target = randn(1, 77, text.Config.HiddenSize);
        var prompt = tensor(grown.Encode("a photo of a <my-bag>").Ids).unsqueeze(0);
        using (var training = new TokenRowTraining(text, ids))
        {
            Assert.All(text.named_parameters().Where(p => p.name != "text_model.embeddings.token_embedding.weight"),
                p => Assert.False(p.parameter.requires_grad, p.name));
            var optimizer = new AdamW([("token_embedding", training.Parameter)], 5e-2, weightDecay: 1e-2);
            for (int step = 0; step < 5; step++)
            {
                optimizer.ZeroGrad();
                nn.functional.mse_loss(text.Forward(prompt).LastHiddenState, target).backward();
                optimizer.Step();
                training.RestoreFrozenRows();
            }
        }
        Assert.True(text.parameters().All(p => p.requires_grad), "disposing restores the flags");
        var after = text.state_dict();
        foreach (var (key, value) in before.Where(kv => kv.Key != "text_model.embeddings.token_embedding.weight"))
            Assert.Equal(0, Parity.MaxAbsDiff(after[key], value));
        var rows = (int)before["text_model.embeddings.token_embedding.weight"].shape[0];
        Assert.Equal(0, Parity.MaxAbsDiff(table[..rows], before["text_model.embeddings.token_embedding.weight"]));
        foreach (var id in ids)
            Assert.True(Parity.MaxAbsDiff(table[id], table[bag]) > 1e-3, $"row {id} was trained");
    }

    [Fact]
    public void Both_file_layouts_round_trip_into_a_fresh_encoder()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var dir = TestPaths.TempDir("ti-files");
        var (tokenizer, text) = Tiny();
        var (grown, ids) = TextualInversion.Create(tokenizer, text, "<shoe-x>", "shoe", vectors: 2);
        using (no_grad()) text.TokenEmbedding[ids[1]] = randn(text.Config.HiddenSize);
        var learned = TextualInversion.FromEncoder(grown, text, "<shoe-x>");
        var prompt = "two <shoe-x> on the left";
        var expected = Encode(text, grown, prompt);

        var diffusersFile = Path.Combine(dir, TextualInversion.DiffusersFileName);
        learned.SaveDiffusers(diffusersFile);
        var kohyaFile = Path.Combine(dir, "shoe-x.safetensors");
        learned.SaveKohya(kohyaFile);
        Assert.Equal(new[] { "<shoe-x>" }, SafeTensors.ReadHeader(diffusersFile).entries.Select(e => e.Name));
        Assert.Equal(new[] { "emb_params" }, SafeTensors.ReadHeader(kohyaFile).entries.Select(e => e.Name));

        foreach (var (file, token) in new[] { (diffusersFile, (string?)null), (kohyaFile, "<shoe-x>") })
        {
            var (freshTokenizer, fresh) = Tiny();
            var read = TextualInversion.Read(file, token);
            Assert.Equal(("<shoe-x>", 2), (read.Token, read.Vectors));
            var withToken = read.AddTo(freshTokenizer, fresh, file);
            Assert.True(Parity.MaxAbsDiff(Encode(fresh, withToken, prompt), expected) < 1e-6, file);
        }
        Assert.Equal("shoe-x", TextualInversion.Read(kohyaFile).Token);                     // A1111: the file's name
    }

    static Tensor Encode(ClipTextModel text, ClipTokenizer tokenizer, string prompt)
    {
        using var _ = no_grad();
        return text.Forward(tensor(tokenizer.Encode(prompt).Ids).unsqueeze(0)).LastHiddenState;
    }

    [Fact]
    public void A_pipeline_loads_a_file_and_prompts_use_it_at_once()
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var dir = TestPaths.TempDir("ti-pipeline");
        var pipe = PipelineTests.Tiny();
        int d = pipe.TextEncoder.Config.HiddenSize;
        manual_seed(4);
        var file = Path.Combine(dir, TextualInversion.DiffusersFileName);
        new TextualInversion("<bag-x>", randn(1, d)).SaveDiffusers(file);
        var without = pipe.EncodePrompts(["a <bag-x> on the left"]);
        var inversion = pipe.LoadTextualInversion(file);
        var with = pipe.EncodePrompts(["a <bag-x> on the left"]);
        Assert.True(Parity.MaxAbsDiff(with, without) > 1e-3, "the new token changes the embedding");
        Assert.Equal(0, Parity.MaxAbsDiff(pipe.EncodePrompts(["a dress"]), pipe.EncodePrompts(["a dress"])));
        Assert.Equal("<bag-x>", inversion.Token);
        // the same file again: its token is now in the vocabulary
        Assert.Throws<ArgumentException>(() => pipe.LoadTextualInversion(file));
        // an embedding for a wider text encoder
        var wide = Path.Combine(dir, "wide.safetensors");
        new TextualInversion("<wide>", randn(1, d + 8)).SaveDiffusers(wide);
        var e = Assert.Throws<AdapterFormatException>(() => pipe.LoadTextualInversion(wide));
        Assert.Equal(("<wide>", wide), (e.Key, e.File));
        Assert.Contains($"this text encoder's are {d} wide", e.Message);
    }

    [Fact]
    public void Bad_files_give_typed_errors_naming_the_file_and_key()
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("ti-bad");
        string Write(string name, Dictionary<string, Tensor> tensors)
        {
            var path = Path.Combine(dir, name);
            SafeTensors.Save(path, tensors);
            return path;
        }
        var pickle = Path.Combine(dir, "embedding.pt");
        File.WriteAllBytes(pickle, [0x80, 0x02]);
        Assert.Contains("pickle", Assert.Throws<AdapterFormatException>(() => TextualInversion.Read(pickle)).Message);
        var two = Write("two.safetensors", new() { ["<a>"] = zeros(4), ["<b>"] = zeros(4) });
        Assert.Contains("2 tensors", Assert.Throws<AdapterFormatException>(() => TextualInversion.Read(two)).Message);
        var ints = Write("ints.safetensors", new() { ["<a>"] = zeros(4, dtype: ScalarType.Int64) });
        Assert.Equal("<a>", Assert.Throws<AdapterFormatException>(() => TextualInversion.Read(ints)).Key);
        var cube = Write("cube.safetensors", new() { ["emb_params"] = zeros(1, 2, 4) });
        Assert.Equal("emb_params", Assert.Throws<AdapterFormatException>(() => TextualInversion.Read(cube)).Key);
        var xl = Write("xl.safetensors", new() { ["clip_l"] = zeros(1, 768), ["clip_g"] = zeros(1, 1280) });
        Assert.Contains("SDXL", Assert.Throws<AdapterFormatException>(() => TextualInversion.Read(xl)).Message);
        var a1111 = Write("a1111.safetensors", new() { ["string_to_param.*"] = ones(3, 4) });
        Assert.Equal(("a1111", 3), (TextualInversion.Read(a1111).Token, TextualInversion.Read(a1111).Vectors));

        // fuzzed bytes of a valid file: typed errors or a valid read, never anything else
        var valid = File.ReadAllBytes(Write("valid.safetensors", new() { ["<ok>"] = ones(2, 4) }));
        var path = Path.Combine(dir, "case.safetensors");
        var outcome = Fuzz.Run(400, 3, (rng, _) =>
        {
            File.WriteAllBytes(path, Fuzz.Mutate(valid, rng));
            TextualInversion.Read(path);
        }, (e, _) => e is AdapterFormatException or DatasetException && e.Message.Contains(path));
        Assert.True(outcome.Kinds.Count > 1, outcome.ToString());
    }
}

/// <summary>DreamBooth's prior-preservation objective.</summary>
public class DreamBoothLossTests
{
    [Theory]
    [InlineData(1.0)]
    [InlineData(0.5)]
    public void The_loss_is_the_instance_term_plus_w_times_the_prior_term_computed_by_hand(double w)
    {
        TorchRuntime.Setup();
        using var scope = NewDisposeScope();
        var schedule = Diffusion.NoiseSchedule.ScaledLinear();
        var objective = new DiffusionObjective(schedule);
        manual_seed(0);
        var instance = randn(2, 4, 8, 8);
        var prior = randn(3, 4, 8, 8);
        var weights = randn(4, 4, 1, 1);
        Tensor Model(Tensor zt, Tensor t) =>                                                 // a fixed toy denoiser
            nn.functional.conv2d(zt, weights) + t.to_type(ScalarType.Float32).reshape(-1, 1, 1, 1) / 1000;
        using var generator = new Generator(7);
        var (loss, instanceTerm, priorTerm) = objective.PriorPreservationLoss(Model, instance, prior, w, generator);

        // by hand: the same draws (t, then ε), the same noising, two separate means
        using var again = new Generator(7);
        var t = randint(0, schedule.Length, [5], dtype: ScalarType.Int64, generator: again);
        var noise = randn([5, 4, 8, 8], generator: again);
        var z0 = cat([instance, prior]);
        var zt = schedule.AddNoise(z0, noise, t);
        var error = (Model(zt, t) - noise).pow(2);
        double byHandInstance = error[..2].mean().item<float>(), byHandPrior = error[2..].mean().item<float>();
        Assert.Equal(byHandInstance, instanceTerm.item<float>(), 5);
        Assert.Equal(byHandPrior, priorTerm.item<float>(), 5);
        Assert.Equal(byHandInstance + w * byHandPrior, loss.item<float>(), 5);
        Assert.Throws<ArgumentException>(() => objective.PriorPreservationLoss(Model, instance, randn(3, 4, 4, 4), w));
    }
}
