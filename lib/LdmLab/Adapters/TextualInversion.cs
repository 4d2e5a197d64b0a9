using LdmLab.Conditioning;
using LdmLab.Interop;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Adapters;

/// <summary>
/// Textual inversion (Gal et al. 2022): a new word — a placeholder token such as <c>&lt;cat-toy&gt;</c> — whose
/// embedding vector(s) are learned while the whole model stays frozen; the text encoder then turns prompts that use it
/// into the concept. n vectors are n tokens (<c>tok</c>, <c>tok_1</c>, … as diffusers names them) that the placeholder
/// stands for in a prompt. Files, both as the ecosystem writes them (safetensors only; pickles are refused):
/// <list type="bullet">
/// <item>diffusers' <c>learned_embeds.safetensors</c>: one tensor, its key the token, [d] or [n, d];</item>
/// <item>A1111 / kohya-ss: <c>emb_params</c> [n, d] (the token is the file's name unless given), or
/// <c>string_to_param.*</c> as A1111's .pt layout stores it.</item>
/// </list>
/// </summary>
public sealed class TextualInversion
{
    public const string DiffusersFileName = "learned_embeds.safetensors";

    /// <summary>The placeholder token.</summary>
    public string Token { get; }
    /// <summary>The learned vectors [n, d] (float32, CPU).</summary>
    public Tensor Embeddings { get; }
    public int Vectors => (int)Embeddings.shape[0];

    public TextualInversion(string token, Tensor embeddings)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(token);
        if (embeddings.dim() != 2 || embeddings.shape[0] < 1)
            throw new ArgumentException($"embeddings must be [n ≥ 1, d], got [{string.Join(", ", embeddings.shape)}]",
                nameof(embeddings));
        Token = token;
        Embeddings = embeddings.detach().to(CPU).to_type(ScalarType.Float32).clone().DetachFromDisposeScope();
    }

    /// <summary>
    /// A new concept to train: <paramref name="vectors"/> tokens added to the tokenizer and rows to the text encoder,
    /// each initialised from <paramref name="initializer"/>'s embedding (a word of one BPE token, as diffusers'
    /// textual_inversion.py requires). Returns the tokenizer with the token and the new rows' ids.
    /// </summary>
    public static (ClipTokenizer Tokenizer, int[] Ids) Create(ClipTokenizer tokenizer, ClipTextModel text, string token,
        string initializer, int vectors = 1)
    {
        var init = tokenizer.EncodeIds(initializer);
        if (init.Length != 1)
            throw new ArgumentException($"the initializer '{initializer}' is {init.Length} tokens; give a word of " +
                                        "one token (e.g. 'toy', 'dress')", nameof(initializer));
        var grown = Grow(tokenizer, text, token, vectors, init[0]);
        return (grown, Ids(grown, token));
    }

    /// <summary>Adds this concept to a tokenizer and text encoder: the encoder's table grows by n rows holding the
    /// vectors; returns the tokenizer with the token (a token it already has is refused).</summary>
    public ClipTokenizer AddTo(ClipTokenizer tokenizer, ClipTextModel text, string? file = null)
    {
        long width = text.TokenEmbedding.shape[1];
        if (Embeddings.shape[1] != width)
            throw new AdapterFormatException(file ?? "textual inversion", Token,
                $"vectors of width {Embeddings.shape[1]}; this text encoder's are {width} wide (an embedding for " +
                "another model)");
        var grown = Grow(tokenizer, text, Token, Vectors, initFrom: null);
        using var _ = no_grad();
        var table = text.TokenEmbedding;
        foreach (var (id, i) in Ids(grown, Token).Select((id, i) => (id, i)))
            table[id] = Embeddings[i].to(table.dtype).to(table.device);
        return grown;
    }

    /// <summary>The learned rows of <paramref name="token"/> read back from a trained text encoder.</summary>
    public static TextualInversion FromEncoder(ClipTokenizer tokenizer, ClipTextModel text, string token)
    {
        var ids = Ids(tokenizer, token);
        using var _ = no_grad();
        var rows = tensor(ids.Select(i => (long)i).ToArray(), device: text.TokenEmbedding.device);
        return new TextualInversion(token, text.TokenEmbedding.index_select(0, rows));
    }

    /// <summary>The ids a token stands for in this tokenizer (its own, then tok_1, tok_2, …).</summary>
    public static int[] Ids(ClipTokenizer tokenizer, string token)
    {
        if (!tokenizer.AddedTokens.TryGetValue(token, out var first))
            throw new ArgumentException($"'{token}' is not an added token of this tokenizer", nameof(token));
        var ids = new List<int> { first };
        for (int i = 1; tokenizer.AddedTokens.TryGetValue($"{token}_{i}", out var id); i++) ids.Add(id);
        return ids.ToArray();
    }

    static ClipTokenizer Grow(ClipTokenizer tokenizer, ClipTextModel text, string token, int vectors, int? initFrom)
    {
        if (text.TokenEmbedding.shape[0] != tokenizer.VocabSize)
            throw new ArgumentException($"the text encoder has {text.TokenEmbedding.shape[0]} token rows but the " +
                                        $"tokenizer {tokenizer.VocabSize} entries: not a matching pair", nameof(text));
        var grown = tokenizer.WithAddedToken(token, vectors);          // refuses a token the vocabulary has
        text.ResizeTokenEmbeddings(grown.VocabSize, initFrom);
        return grown;
    }

    // ---- files ----

    /// <summary>Writes diffusers' layout: {token: [n, d]} (what <c>load_textual_inversion</c> reads); atomically.
    /// </summary>
    public void SaveDiffusers(string path) =>
        SafeTensors.Save(path, [new(Token, Embeddings)], new Dictionary<string, string> { ["format"] = "pt" });

    /// <summary>Writes the A1111 / kohya-ss layout: {"emb_params": [n, d]}, the token in the metadata (A1111 takes it
    /// from the file name); atomically.</summary>
    public void SaveKohya(string path) =>
        SafeTensors.Save(path, [new("emb_params", Embeddings)], new Dictionary<string, string>
        {
            ["format"] = "pt", ["name"] = Token,
        });

    /// <summary>
    /// Reads a textual-inversion file in either layout. <paramref name="token"/> names the placeholder (default: the
    /// diffusers file's key, or the A1111/kohya file's name without extension). Bad files give an
    /// <see cref="AdapterFormatException"/> naming the file and key; pickles are refused unopened.
    /// </summary>
    public static TextualInversion Read(string path, string? token = null)
    {
        LoraFiles.RefusePickle(path, "textual inversion");
        var tensors = SafeTensors.Load(path);
        try
        {
            string key;
            if (tensors.ContainsKey("emb_params")) key = "emb_params";
            else if (tensors.Keys.Any(k => k.StartsWith("string_to_param.", StringComparison.Ordinal)))
                key = tensors.Keys.First(k => k.StartsWith("string_to_param.", StringComparison.Ordinal));
            else if (tensors.ContainsKey("clip_l") || tensors.ContainsKey("clip_g"))
                throw new AdapterFormatException(path, tensors.ContainsKey("clip_l") ? "clip_l" : "clip_g",
                    "an SDXL embedding (one table per text encoder): LdmLab's text-to-image pipelines are SD 1.x/2.x");
            else if (tensors.Count == 1) key = tensors.Keys.Single();
            else
                throw new AdapterFormatException(path, string.Join(", ", tensors.Keys.Take(5)),
                    $"{tensors.Count} tensors; a textual inversion holds one (diffusers: token → [n, d]; " +
                    "A1111/kohya: emb_params)");
            var t = tensors[key];
            if (!t.is_floating_point() || t.dim() is < 1 or > 2 || t.numel() == 0)
                throw new AdapterFormatException(path, key, $"[{string.Join(", ", t.shape)}] {t.dtype}: expected " +
                                                            "floating vectors [d] or [n, d]");
            bool diffusers = key != "emb_params" && !key.StartsWith("string_to_param.", StringComparison.Ordinal);
            var name = token ?? (diffusers ? key : Path.GetFileNameWithoutExtension(path));
            return new TextualInversion(name, t.dim() == 1 ? t.unsqueeze(0) : t);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }
}

/// <summary>
/// Textual inversion's training setup, as diffusers' textual_inversion.py does it: every parameter of the text encoder
/// frozen except the token table; the table's other rows put back after every optimizer step (the gradient of the
/// shared table touches only the rows a batch used, but weight decay and momentum would move them all). Disposing
/// restores the parameters' requires_grad flags.
/// </summary>
public sealed class TokenRowTraining : IDisposable
{
    readonly ClipTextModel _text;
    readonly Tensor _original, _keep;
    readonly List<(Parameter p, bool requiresGrad)> _flags;

    public TokenRowTraining(ClipTextModel text, IReadOnlyCollection<int> trainableIds)
    {
        _text = text;
        _flags = text.parameters().Select(p => (p, p.requires_grad)).ToList();
        foreach (var p in text.parameters()) p.requires_grad = false;
        var table = text.TokenEmbedding;
        table.requires_grad = true;
        _original = table.detach().clone().DetachFromDisposeScope();                      // [vocab, d]
        var keep = ones(table.shape[0], dtype: ScalarType.Bool, device: table.device);
        keep[tensor(trainableIds.Select(i => (long)i).ToArray(), device: table.device)] = tensor(false);
        _keep = keep.unsqueeze(1).DetachFromDisposeScope();                                 // [vocab, 1]
    }

    /// <summary>The one parameter to optimise: the token table.</summary>
    public Parameter Parameter => _text.TokenEmbedding;

    /// <summary>Puts every row but the trainable ones back to its value before training.</summary>
    public void RestoreFrozenRows()
    {
        using var _ = no_grad();
        _text.TokenEmbedding.copy_(where(_keep, _original, _text.TokenEmbedding));
    }

    public void Dispose()
    {
        foreach (var (p, flag) in _flags) p.requires_grad = flag;
        _original.Dispose();
        _keep.Dispose();
    }
}
