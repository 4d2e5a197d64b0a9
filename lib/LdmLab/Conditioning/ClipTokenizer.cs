using System.IO.Compression;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using TorchSharp;

namespace LdmLab.Conditioning;

/// <summary>Token ids of one prompt, laid out for the text encoder, with what truncation dropped.</summary>
/// <param name="Ids">[BOS, ≤ MaxLength − 2 BPE ids, EOS, padding…], exactly <c>MaxLength</c> long when padded.</param>
/// <param name="Length">Ids before padding (BOS and EOS included).</param>
/// <param name="Dropped">BPE tokens cut off by truncation (0 if none).</param>
/// <param name="Weights">Per-id emphasis weights (1 unless a weighted prompt set them); same length as Ids.</param>
public sealed record TokenizedPrompt(long[] Ids, int Length, int Dropped, float[] Weights);

/// <summary>
/// CLIP's tokenizer (OpenAI CLIP / transformers CLIPTokenizer, as Stable Diffusion 1.x uses it), BPE on
/// Microsoft.ML.Tokenizers:
/// 1. clean: ftfy's fixes, whitespace runs → one space, Python's str.lower() (<see cref="TextCleaner"/>);
/// 2. split: <c>&lt;|startoftext|&gt;|&lt;|endoftext|&gt;|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+</c>
///    (digits one by one);
/// 3. each piece's UTF-8 bytes → CLIP's printable byte symbols, then BPE with the end-of-word suffix "&lt;/w&gt;";
/// 4. layout: BOS 49406, at most 75 BPE ids (a warning says how many were dropped), EOS 49407, padded to 77 with
///    the pad id (49407 for SD 1.x; SD 2.x tokenizers pad with 0).
/// The vocabulary is built from OpenAI's bpe_simple_vocab_16e6.txt.gz (MIT, shipped inside the library) exactly as
/// CLIP's SimpleTokenizer builds it, or read from a Hugging Face tokenizer folder (vocab.json + merges.txt).
/// </summary>
public sealed partial class ClipTokenizer
{
    public const string StartOfText = "<|startoftext|>", EndOfText = "<|endoftext|>";
    readonly BpeTokenizer _bpe;
    readonly IReadOnlyList<string> _merges;
    readonly Dictionary<string, int> _vocab;
    readonly Dictionary<int, string> _byId;
    readonly Dictionary<string, int[]> _cache;
    /// <summary>Tokens added after the BPE vocabulary (textual inversion), token → id, matched in the raw prompt
    /// before cleaning, longest first.</summary>
    readonly IReadOnlyDictionary<string, int> _added = new Dictionary<string, int>();
    static readonly (string[] ByByte, string[] VocabOrder) ByteSymbols = BuildByteSymbols();

    public int BosId { get; }
    public int EosId { get; }
    public int PadId { get; init; }
    public int MaxLength { get; init; } = 77;
    /// <summary>Entries of the vocabulary, added tokens included (the text encoder's embedding rows).</summary>
    public int VocabSize => _vocab.Count + _added.Count;

    /// <summary>The tokens added after the BPE vocabulary, with their ids.</summary>
    public IReadOnlyDictionary<string, int> AddedTokens => _added;

    /// <summary>Where truncation warnings go (default: standard error).</summary>
    public Action<string> Warn { get; init; } = message => Console.Error.WriteLine(message);

    ClipTokenizer(Dictionary<string, int> vocab, IReadOnlyList<string> merges, string source)
    {
        if (!vocab.TryGetValue(StartOfText, out var bos) || !vocab.TryGetValue(EndOfText, out var eos))
            throw new InvalidDataException($"{source}: the vocabulary has no {StartOfText} / {EndOfText} entries");
        _vocab = vocab;
        _merges = merges;
        _byId = vocab.ToDictionary(kv => kv.Value, kv => kv.Key);
        // pieces arrive already split (step 2): the BPE must see each as one word, so its pre-tokenizer keeps it whole
        _bpe = BpeTokenizer.Create(new BpeOptions(vocab)
        {
            Merges = merges, EndOfWordSuffix = "</w>", PreTokenizer = new RegexPreTokenizer(WholeInput(), null),
        });
        BosId = bos; EosId = eos; PadId = eos;
        _cache = new Dictionary<string, int[]>();
    }

    static ClipTokenizer? _default;

    /// <summary>The CLIP ViT-L/14 tokenizer of Stable Diffusion 1.x (vocabulary 49,408, pad = EOS).</summary>
    public static ClipTokenizer Default => _default ??= FromOpenAiBpe(
        typeof(ClipTokenizer).Assembly.GetManifestResourceStream("LdmLab.Conditioning.bpe_simple_vocab_16e6.txt.gz")
        ?? throw new InvalidOperationException("the embedded CLIP vocabulary is missing from LdmLab.dll"), "embedded bpe_simple_vocab_16e6");

    /// <summary>Builds the tables as CLIP's SimpleTokenizer does: merges = lines 1…48,894 of the file; vocab = the 256
    /// byte symbols, the same with "&lt;/w&gt;", one entry per merge, then the two special tokens.</summary>
    public static ClipTokenizer FromOpenAiBpe(Stream gzipped, string source)
    {
        using var gz = new GZipStream(gzipped, CompressionMode.Decompress);
        using var reader = new StreamReader(gz, Encoding.UTF8);
        var lines = reader.ReadToEnd().Split('\n');
        const int mergeCount = 49152 - 256 - 2;
        if (lines.Length < mergeCount + 1) throw new InvalidDataException($"{source}: {lines.Length} lines, expected ≥ {mergeCount + 1}");
        var merges = lines[1..(mergeCount + 1)];
        var tokens = ByteSymbols.VocabOrder.Concat(ByteSymbols.VocabOrder.Select(s => s + "</w>")).Concat(merges.Select(m => m.Replace(" ", "")))
            .Append(StartOfText).Append(EndOfText);
        var vocab = new Dictionary<string, int>();
        foreach (var t in tokens) vocab[t] = vocab.Count;
        return new ClipTokenizer(vocab, merges, source);
    }

    /// <summary>A Hugging Face CLIPTokenizer folder (diffusers' <c>tokenizer/</c>): vocab.json, merges.txt and, if
    /// present, tokenizer_config.json / special_tokens_map.json for the pad token and model_max_length.</summary>
    public static ClipTokenizer FromFolder(string dir)
    {
        string vocabPath = Path.Combine(dir, "vocab.json"), mergesPath = Path.Combine(dir, "merges.txt");
        foreach (var p in new[] { vocabPath, mergesPath })
            if (!File.Exists(p)) throw new FileNotFoundException($"{p}: a CLIP tokenizer folder needs vocab.json and merges.txt", p);
        Dictionary<string, int> vocab;
        try { vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(vocabPath)) ?? []; }
        catch (JsonException e) { throw new InvalidDataException($"{vocabPath}: not a JSON object of token → id ({e.Message})", e); }
        var merges = File.ReadLines(mergesPath).Where(l => l.Length > 0 && !l.StartsWith("#version")).ToList();
        if (merges.Any(m => m.Split(' ').Length != 2))
            throw new InvalidDataException($"{mergesPath}: every merge line must hold two symbols separated by one space");
        var tokenizer = new ClipTokenizer(vocab, merges, vocabPath);
        int pad = tokenizer.PadId, max = tokenizer.MaxLength;
        var config = Path.Combine(dir, "tokenizer_config.json");
        if (File.Exists(config))
            (pad, max) = Interop.ConfigFile.Read(config, c =>
            {
                int m = c["model_max_length"] is { } ml && (double)ml is > 2 and < 100_000 ? (int)(double)ml : max;
                var padToken = c["pad_token"] is System.Text.Json.Nodes.JsonObject po ? (string?)po["content"] : (string?)c["pad_token"];
                return (padToken is not null && vocab.TryGetValue(padToken, out var p) ? p : pad, m);
            });
        tokenizer = tokenizer.With(pad, max);
        var addedPath = Path.Combine(dir, "added_tokens.json");
        if (!File.Exists(addedPath)) return tokenizer;
        Dictionary<string, int> addedTokens;
        try { addedTokens = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(addedPath)) ?? []; }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{addedPath}: not a JSON object of token → id ({e.Message})", e);
        }
        foreach (var (token, id) in addedTokens.OrderBy(kv => kv.Value))
        {
            if (id != tokenizer.VocabSize)
                throw new InvalidDataException($"{addedPath}: '{token}' has id {id}, expected " +
                                               $"{tokenizer.VocabSize} (added tokens follow the vocabulary " +
                                               "without gaps)");
            tokenizer = tokenizer.WithAddedToken(token);
        }
        return tokenizer;
    }

    ClipTokenizer(ClipTokenizer other)
    {
        _bpe = other._bpe; _merges = other._merges; _vocab = other._vocab; _byId = other._byId; _cache = other._cache;
        _added = other._added;
        BosId = other.BosId; EosId = other.EosId; PadId = other.PadId; MaxLength = other.MaxLength; Warn = other.Warn;
    }

    /// <summary>The same vocabulary with another pad id, length or warning sink (SD 2.x pads with 0).</summary>
    public ClipTokenizer With(int? padId = null, int? maxLength = null, Action<string>? warn = null) => new(this)
    {
        PadId = padId ?? PadId, MaxLength = maxLength ?? MaxLength, Warn = warn ?? Warn,
    };

    /// <summary>Writes a Hugging Face CLIPTokenizer folder (vocab.json, merges.txt, tokenizer_config.json,
    /// special_tokens_map.json) that transformers' CLIPTokenizer.from_pretrained reads; each file atomically.</summary>
    public void SavePretrained(string dir)
    {
        Directory.CreateDirectory(dir);
        var json = new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        Data.AtomicFile.WriteAllText(Path.Combine(dir, "vocab.json"),
            JsonSerializer.Serialize(_vocab.OrderBy(kv => kv.Value).ToDictionary(kv => kv.Key, kv => kv.Value), json));
        Data.AtomicFile.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\n" + string.Join("\n", _merges) + "\n");
        string pad = _byId[PadId];
        var special = new System.Text.Json.Nodes.JsonObject
        {
            ["bos_token"] = StartOfText, ["eos_token"] = EndOfText, ["unk_token"] = EndOfText, ["pad_token"] = pad,
        };
        Data.AtomicFile.WriteAllText(Path.Combine(dir, "special_tokens_map.json"), special.ToJsonString(json));
        var config = new System.Text.Json.Nodes.JsonObject
        {
            ["tokenizer_class"] = "CLIPTokenizer", ["model_max_length"] = MaxLength, ["do_lower_case"] = true,
            ["bos_token"] = StartOfText, ["eos_token"] = EndOfText, ["unk_token"] = EndOfText, ["pad_token"] = pad,
            ["errors"] = "replace", ["clean_up_tokenization_spaces"] = true,
        };
        Data.AtomicFile.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), config.ToJsonString(json));
        // transformers' added_tokens.json: token → id (a multi-vector token's parts are tokens of their own)
        var added = _byId.Where(kv => kv.Key >= _vocab.Count).OrderBy(kv => kv.Key)
            .ToDictionary(kv => kv.Value, kv => kv.Key);
        var addedPath = Path.Combine(dir, "added_tokens.json");
        if (added.Count > 0) Data.AtomicFile.WriteAllText(addedPath, JsonSerializer.Serialize(added, json));
        else if (File.Exists(addedPath)) File.Delete(addedPath);
    }

    /// <summary>BPE ids of a prompt, without BOS/EOS, truncation or padding; added tokens are matched first in the
    /// raw text (case-sensitive, longest first, as transformers' added tokens), the text between them is cleaned and
    /// split as usual.</summary>
    public int[] EncodeIds(string text)
    {
        if (_added.Count == 0) return Pieces(text).SelectMany(PieceIds).ToArray();
        var ids = new List<int>();
        int start = 0;
        var byLength = _added.Keys.OrderByDescending(k => k.Length).ToList();
        for (int i = 0; i < text.Length;)
        {
            var hit = byLength.FirstOrDefault(k => string.CompareOrdinal(text, i, k, 0, k.Length) == 0);
            if (hit is null) { i++; continue; }
            ids.AddRange(Pieces(text[start..i]).SelectMany(PieceIds));
            ids.AddRange(AddedIds(hit));
            i += hit.Length;
            start = i;
        }
        ids.AddRange(Pieces(text[start..]).SelectMany(PieceIds));
        return ids.ToArray();
    }

    /// <summary>An added token's ids: its own, then those of <c>token_1</c>, <c>token_2</c>, … while the tokenizer
    /// has them — diffusers' rule (<c>maybe_convert_prompt</c>) for multi-vector textual inversions.</summary>
    IEnumerable<int> AddedIds(string token)
    {
        yield return _added[token];
        for (int i = 1; _added.TryGetValue($"{token}_{i}", out var id); i++) yield return id;
    }

    /// <summary>
    /// A tokenizer with <paramref name="vectors"/> new tokens for <paramref name="token"/> (textual inversion):
    /// <c>token</c>, then <c>token_1</c> … <c>token_{n−1}</c> as diffusers names a multi-vector token, with ids from
    /// <see cref="VocabSize"/> on; in a prompt, <c>token</c> stands for all n ids. A token the vocabulary already has
    /// is refused (it would change what existing prompts mean).
    /// </summary>
    public ClipTokenizer WithAddedToken(string token, int vectors = 1)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(token);
        ArgumentOutOfRangeException.ThrowIfLessThan(vectors, 1);
        var names = Enumerable.Range(0, vectors).Select(i => i == 0 ? token : $"{token}_{i}").ToList();
        foreach (var name in names)
            if (_vocab.ContainsKey(name) || _vocab.ContainsKey(name + "</w>") || _added.ContainsKey(name))
                throw new ArgumentException($"the tokenizer already contains the token '{name}': pass a different " +
                                            "placeholder token, e.g. '<my-concept>'", nameof(token));
        int first = VocabSize;
        var added = new Dictionary<string, int>(_added);
        for (int i = 0; i < vectors; i++) added[names[i]] = first + i;
        var byId = new Dictionary<int, string>(_byId);
        for (int i = 0; i < vectors; i++) byId[first + i] = names[i];
        return new ClipTokenizer(this, added, byId);
    }

    ClipTokenizer(ClipTokenizer other, IReadOnlyDictionary<string, int> added, Dictionary<int, string> byId)
        : this(other)
    {
        _added = added;
        _byId = byId;
    }

    /// <summary>The BPE token strings (byte symbols, "&lt;/w&gt;" ends a word), for inspection and parity.</summary>
    public string[] EncodeTokens(string text) => EncodeIds(text).Select(i => _byId[i]).ToArray();

    /// <summary>The token string of an id.</summary>
    public string Token(int id) => _byId.TryGetValue(id, out var t) ? t
        : throw new ArgumentOutOfRangeException(nameof(id), id, $"not an id of this vocabulary (0…{_vocab.Count - 1})");

    /// <summary>Step 4: BOS + ids + EOS, truncated to MaxLength (with a warning) and padded when asked.</summary>
    public TokenizedPrompt Encode(string text, bool pad = true, bool truncate = true) => Layout(EncodeIds(text), null, pad, truncate);

    /// <summary>Prompt ids [N, MaxLength] int64, padded and truncated: one row per prompt.</summary>
    public torch.Tensor EncodeBatch(IEnumerable<string> prompts)
    {
        var rows = prompts.Select(p => Encode(p).Ids).ToList();
        if (rows.Count == 0) throw new ArgumentException("no prompts", nameof(prompts));
        return torch.tensor(rows.SelectMany(r => r).ToArray(), [rows.Count, MaxLength]);
    }

    TokenizedPrompt Layout(int[] bpe, float[]? weights, bool pad, bool truncate)
    {
        int room = MaxLength - 2, dropped = 0;
        if (truncate && bpe.Length > room)
        {
            dropped = bpe.Length - room;
            Warn($"CLIP tokenizer: the prompt is {bpe.Length} tokens, {dropped} beyond the {room} that fit in " +
                 $"{MaxLength}; the last {dropped} were dropped (ClipTokenizer.EncodeChunks keeps them)");
            bpe = bpe[..room];
            if (weights is not null) weights = weights[..room];
        }
        var ids = new List<long> { BosId };
        ids.AddRange(bpe.Select(i => (long)i));
        ids.Add(EosId);
        int length = ids.Count;
        var w = new List<float> { 1f };
        w.AddRange(weights ?? Enumerable.Repeat(1f, bpe.Length));
        w.Add(1f);
        while (pad && ids.Count < MaxLength) { ids.Add(PadId); w.Add(1f); }
        return new TokenizedPrompt(ids.ToArray(), length, dropped, w.ToArray());
    }

    /// <summary>
    /// Long prompts (opt-in), AUTOMATIC1111's convention: the BPE ids are cut into chunks of MaxLength − 2 = 75, each
    /// laid out as its own BOS … EOS + padding; the text encoder embeds every chunk and the pipeline concatenates the
    /// hidden states along the sequence (77·k tokens of context). An empty prompt gives one chunk.
    /// </summary>
    public IReadOnlyList<TokenizedPrompt> EncodeChunks(string text, bool weighted = false)
    {
        var (ids, weights) = weighted ? EncodeWeighted(text) : (EncodeIds(text), null);
        int room = MaxLength - 2;
        var chunks = new List<TokenizedPrompt>();
        for (int start = 0; start == 0 || start < ids.Length; start += room)
        {
            int end = Math.Min(ids.Length, start + room);
            chunks.Add(Layout(ids[start..end], weights?[start..end], pad: true, truncate: false));
        }
        return chunks;
    }

    /// <summary>A weighted prompt (see <see cref="PromptWeights"/>) laid out with per-token weights.</summary>
    public TokenizedPrompt EncodeWeighted(string text, bool pad = true)
    {
        var (ids, weights) = EncodeWeighted(text);
        return Layout(ids, weights, pad, truncate: true);
    }

    (int[] ids, float[] weights) EncodeWeighted(string text)
    {
        var ids = new List<int>();
        var weights = new List<float>();
        foreach (var (segment, weight) in PromptWeights.Parse(text))
        {
            var segmentIds = EncodeIds(segment);
            ids.AddRange(segmentIds);
            weights.AddRange(Enumerable.Repeat((float)weight, segmentIds.Length));
        }
        return (ids.ToArray(), weights.ToArray());
    }

    /// <summary>Steps 1–2: the cleaned text split into pieces (words, single digits, punctuation runs, specials).</summary>
    static IEnumerable<string> Pieces(string text) =>
        PieceRegex().Matches(TextCleaner.Clean(text)).Select(m => m.Value);

    /// <summary>Step 3: one piece → ids (special tokens map to themselves; pieces are cached).</summary>
    int[] PieceIds(string piece)
    {
        if (piece is StartOfText or EndOfText) return [_vocab[piece]];
        if (_cache.TryGetValue(piece, out var cached)) return cached;
        var symbols = string.Concat(Encoding.UTF8.GetBytes(piece).Select(b => ByteSymbols.ByByte[b]));
        var ids = _bpe.EncodeToIds(symbols).ToArray();
        if (_cache.Count < 100_000) _cache[piece] = ids;
        return ids;
    }

    /// <summary>
    /// CLIP's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other bytes map to U+0100 onwards in
    /// byte order. Returns the symbol of each byte value and the vocabulary's order (printable bytes first).
    /// </summary>
    static (string[] byByte, string[] vocabOrder) BuildByteSymbols()
    {
        var printable = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1))
            .Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToList();
        var byByte = new string[256];
        foreach (var b in printable) byByte[b] = ((char)b).ToString();
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (byByte[b] is null) byByte[b] = ((char)(256 + n++)).ToString();
        var order = printable.Concat(Enumerable.Range(0, 256).Where(b => !printable.Contains(b))).Select(b => byByte[b]);
        return (byByte, order.ToArray());
    }

    [GeneratedRegex(@"[\s\S]+")]
    private static partial Regex WholeInput();

    [GeneratedRegex(@"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        RegexOptions.IgnoreCase)]
    private static partial Regex PieceRegex();
}
