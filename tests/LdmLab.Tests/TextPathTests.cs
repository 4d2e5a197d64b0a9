using LdmLab.Conditioning;
using LdmLab.Interop;
using LdmLab.Runtime;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>CLIP tokenizer (against transformers' CLIPTokenizer / OpenAI CLIP ids) and CLIPTextModel (against transformers).</summary>
public class TextPathTests
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);

    /// <summary>The published 33 prompts (transformers' ids) and 29 more made with OpenAI CLIP's tokenizer and ftfy
    /// 6.1.1 (mojibake, ligatures and digraphs, scripts, emoji sequences, widths, long prompts; see its SOURCE.md).</summary>
    [Theory]
    [InlineData("clip-tokenizer", 33)]
    [InlineData("clip-tokenizer-more", 29)]
    public void Tokenizer_ids_equal_the_reference_for_every_prompt(string folder, int cases)
    {
        var checks = Parity.CheckFolder(Fixture(folder));
        // the embedded tokenizer, plus the folder's vocab.json/merges.txt where it has them; 3 checks per case
        int tokenizers = File.Exists(Path.Combine(Fixture(folder), "vocab.json")) ? 2 : 1;
        Assert.Equal(cases * tokenizers * 3, checks.Count);
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
    }

    [Theory]
    [InlineData("mojibake: cafÃ©", "mojibake: café")]
    [InlineData("donâ€™t stop", "don't stop")]                 // fixed, then uncurled
    [InlineData("a â€œtestâ€", "a \"testâ€")]                 // the last sequence lost a byte: left alone
    [InlineData("café naïve", "café naïve")]                    // correct text is untouched
    [InlineData("ﬁne ǅungla ﬅ", "fine Džungla ſt")]
    [InlineData("ＡＢＣ　１２３", "ABC 123")]
    [InlineData("&amp; &lt;", "& <")]
    [InlineData("<b>x</b> &amp;", "<b>x</b> &amp;")]            // ftfy leaves entities alone when '<' is present
    public void Text_cleaner_applies_ftfys_fixes(string input, string expected) =>
        Assert.Equal(expected, TextCleaner.FixText(input));

    [Fact]
    public void Embedded_vocabulary_equals_the_hugging_face_files()
    {
        var embedded = ClipTokenizer.Default;
        var folder = ClipTokenizer.FromFolder(Fixture("clip-tokenizer"));
        Assert.Equal(49408, embedded.VocabSize);
        Assert.Equal(folder.VocabSize, embedded.VocabSize);
        foreach (int id in new[] { 0, 255, 256, 511, 512, 1000, 30000, 49405, 49406, 49407 })
            Assert.Equal(folder.Token(id), embedded.Token(id));
        Assert.Equal(("<|startoftext|>", "<|endoftext|>"), (embedded.Token(49406), embedded.Token(49407)));
    }

    [Fact]
    public void Truncation_keeps_75_tokens_and_warns_how_many_were_dropped()
    {
        var warnings = new List<string>();
        var t = ClipTokenizer.Default.With(warn: warnings.Add);
        var prompt = string.Join(" ", Enumerable.Repeat("red cat", 50));   // 100 BPE tokens
        var r = t.Encode(prompt);
        Assert.Equal(77, r.Ids.Length);
        Assert.Equal(77, r.Length);
        Assert.Equal(25, r.Dropped);
        Assert.Equal(49406, r.Ids[0]);
        Assert.Equal(49407, r.Ids[76]);
        Assert.Contains("25", Assert.Single(warnings));
        Assert.Equal(0, t.Encode("a red cat").Dropped);
        Assert.Single(warnings);   // a short prompt warns nothing
    }

    [Fact]
    public void Padding_uses_the_pad_id_and_short_prompts_keep_their_length()
    {
        var sd1 = ClipTokenizer.Default.Encode("a photo of an ankle boot");
        Assert.Equal(8, sd1.Length);
        Assert.Equal(Enumerable.Repeat(49407L, 69), sd1.Ids[8..]);
        var sd2 = ClipTokenizer.Default.With(padId: 0).Encode("a photo of an ankle boot");
        Assert.Equal(Enumerable.Repeat(0L, 69), sd2.Ids[8..]);
        Assert.Equal(sd1.Ids[..8], sd2.Ids[..8]);
        var unpadded = ClipTokenizer.Default.Encode("a photo", pad: false);
        Assert.Equal(new long[] { 49406, 320, 1125, 49407 }, unpadded.Ids);
        Assert.Equal([49406L, 49407L], ClipTokenizer.Default.Encode("", pad: false).Ids);
    }

    [Fact]
    public void Long_prompts_split_into_75_token_chunks()
    {
        var prompt = string.Join(" ", Enumerable.Repeat("red cat", 50));   // 100 BPE tokens
        var chunks = ClipTokenizer.Default.EncodeChunks(prompt);
        Assert.Equal(2, chunks.Count);
        Assert.All(chunks, c => Assert.Equal(77, c.Ids.Length));
        Assert.Equal(77, chunks[0].Length);
        Assert.Equal(27, chunks[1].Length);   // 25 tokens + BOS + EOS
        var all = ClipTokenizer.Default.EncodeIds(prompt);
        Assert.Equal(all.Select(i => (long)i), chunks[0].Ids[1..76].Concat(chunks[1].Ids[1..26]));
        Assert.Single(ClipTokenizer.Default.EncodeChunks(""));
    }

    [Theory]
    [InlineData("a (red) cat", "a |1;red|1.1; cat|1")]
    [InlineData("a ((red)) cat", "a |1;red|1.21; cat|1")]
    [InlineData("a [red] cat", "a |1;red|0.909; cat|1")]
    [InlineData("a (red cat:1.5), blue", "a |1;red cat|1.5;, blue|1")]
    [InlineData("(a (red:2) cat:0.5)", "a |0.5;red|1; cat|0.5")]
    [InlineData(@"a \(red\) cat", "a (red) cat|1")]
    [InlineData("unclosed (red cat", "unclosed |1;red cat|1.1")]
    [InlineData("time 12:30 (ok)", "time 12:30 |1;ok|1.1")]
    public void Weight_syntax_follows_automatic1111(string prompt, string expected)
    {
        var parsed = PromptWeights.Parse(prompt);
        Assert.Equal(expected, string.Join(";", parsed.Select(p => $"{p.text}|{Math.Round(p.weight, 3)}")));
    }

    [Fact]
    public void Weighted_prompt_weights_each_token_of_its_words()
    {
        var r = ClipTokenizer.Default.EncodeWeighted("a (red:1.5) cat");
        Assert.Equal(ClipTokenizer.Default.Encode("a red cat").Ids, r.Ids);
        Assert.Equal(new[] { 1f, 1f, 1.5f, 1f, 1f }, r.Weights[..5]);
        Assert.All(r.Weights[5..], w => Assert.Equal(1f, w));
    }

    /// <summary>
    /// Other configs (fixtures/text-more): 48-wide with 3 layers and 6 heads on a 1,000-token vocabulary and 20
    /// positions; 64-wide with one layer and one head, pad = EOS, float16 weights; 16-wide with 4 layers on CLIP's
    /// vocabulary with the legacy eos_token_id 2 (pooled at argmax(ids)), bfloat16 weights.
    /// </summary>
    [Theory]
    [InlineData("w48-l3-h6-v1000-p20", 3)]
    [InlineData("w64-l1-h1-v512-p16-fp16", 1)]
    [InlineData("w16-l4-h2-clipvocab-bf16", 4)]
    public void Other_text_model_configs_equal_the_reference(string name, int layers)
    {
        TorchRuntime.Setup();
        var dir = Path.Combine(Fixture("text-more"), name);
        var checks = Parity.CheckFolder(dir);
        Assert.Contains(checks, c => c.Name == $"{name}/pooler_output");
        Assert.Contains(checks, c => c.Name == $"{name}/hidden_states_short.{layers}");
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
        // the stored dtype is what the name says, and the model computes in float32 after loading it
        var (entries, _) = SafeTensors.ReadHeader(Path.Combine(dir, "model.safetensors"));
        Assert.All(entries, e => Assert.Equal(name.EndsWith("fp16") ? "F16" : name.EndsWith("bf16") ? "BF16" : "F32", e.DType));
        using var model = Conditioning.ClipTextModel.FromPretrained(dir);
        Assert.All(model.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
    }

    [Fact]
    public void Text_model_equals_transformers_output_pooled_and_every_hidden_state()
    {
        TorchRuntime.Setup();
        var checks = Parity.CheckFolder(Fixture("tiny-clip-text"));
        Assert.Contains(checks, c => c.Name == "tiny-clip-text/pooler_output");
        Assert.Contains(checks, c => c.Name == "tiny-clip-text/hidden_states_short.2");
        Assert.True(checks.Count >= 10, $"only {checks.Count} checks");
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
    }

    [Fact]
    public void Vit_l14_text_model_has_the_manifest_state_dict()
    {
        TorchRuntime.Setup();
        var checks = ModelParity.CheckManifest(Path.Combine(AppContext.BaseDirectory, "fixtures", "sd15-manifest", "clip_text_manifest.json"));
        Assert.All(checks, c => Assert.True(c.Passed, c.ToString()));
        using var model = new ClipTextModel(ClipTextConfig.VitL14);
        Assert.Equal(123_060_480, model.ParameterCount);
        Assert.Equal(196, model.state_dict().Count);
    }

    /// <summary>Half-precision weight files load (converted to float32) and give nearly the same states.</summary>
    [Theory]
    [InlineData(ScalarType.Float16, 2e-3)]
    [InlineData(ScalarType.BFloat16, 2e-2)]
    public void Half_precision_weights_load(ScalarType dtype, double tolerance)
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("clip-" + dtype);
        File.Copy(Path.Combine(Fixture("tiny-clip-text"), "config.json"), Path.Combine(dir, "config.json"));
        var weights = SafeTensors.Load(Path.Combine(Fixture("tiny-clip-text"), ClipTextModel.WeightsName));
        SafeTensors.Save(Path.Combine(dir, ClipTextModel.WeightsName), weights.ToDictionary(kv => kv.Key, kv => kv.Value.to_type(dtype)));
        var half = ClipTextModel.FromPretrained(dir);
        var full = ClipTextModel.FromPretrained(Fixture("tiny-clip-text"));
        Assert.All(half.parameters(), p => Assert.Equal(ScalarType.Float32, p.dtype));
        var ids = SafeTensors.Load(Path.Combine(Fixture("tiny-clip-text"), "tensors.safetensors"))["input_ids"];
        using var _ = no_grad();
        double diff = Parity.MaxAbsDiff(half.Forward(ids).LastHiddenState, full.Forward(ids).LastHiddenState);
        Assert.True(diff > 0 && diff < tolerance, $"{dtype}: max |diff| {diff}");
    }

    [Fact]
    public void Save_then_load_round_trips_and_bad_input_is_named()
    {
        TorchRuntime.Setup();
        var model = ClipTextModel.FromPretrained(Fixture("tiny-clip-text"));
        var dir = TestPaths.TempDir("clip-save");
        model.SavePretrained(dir);
        var again = ClipTextModel.FromPretrained(dir);
        var ids = tensor(new long[,] { { 49406, 320, 1125, 49407 } });
        using (no_grad()) Assert.Equal(0, Parity.MaxAbsDiff(model.Forward(ids).LastHiddenState, again.Forward(ids).LastHiddenState));
        Assert.Contains("exceed max_position_embeddings 77",
            Assert.Throws<ArgumentException>(() => model.Forward(zeros(1, 78, dtype: ScalarType.Int64))).Message);
        Assert.Contains("int64", Assert.Throws<ArgumentException>(() => model.Forward(zeros(1, 4))).Message);
        Assert.Contains("config.json", Assert.Throws<FileNotFoundException>(() => ClipTextModel.FromPretrained(TestPaths.TempDir("empty"))).Message);
    }
}
