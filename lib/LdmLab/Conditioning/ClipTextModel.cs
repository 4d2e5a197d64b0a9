using System.Text.Json;
using System.Text.Json.Nodes;
using LdmLab.Interop;
using LdmLab.Nn;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Conditioning;

/// <summary>transformers' CLIPTextConfig (config.json of a CLIPTextModel folder), with its defaults.</summary>
public sealed record ClipTextConfig
{
    public int VocabSize { get; init; } = 49408;
    public int HiddenSize { get; init; } = 512;
    public int IntermediateSize { get; init; } = 2048;
    public int NumHiddenLayers { get; init; } = 12;
    public int NumAttentionHeads { get; init; } = 8;
    public int MaxPositionEmbeddings { get; init; } = 77;
    public string HiddenAct { get; init; } = "quick_gelu";
    public double LayerNormEps { get; init; } = 1e-5;
    public int BosTokenId { get; init; } = 49406;
    public int EosTokenId { get; init; } = 49407;
    public int PadTokenId { get; init; } = 1;
    public int ProjectionDim { get; init; } = 512;
    /// <summary>
    /// LdmLab's ablation, not transformers': no causal mask, every token attends to every other (as the encoders of
    /// BERT and T5 do), so a noun's state can see the words after it. Written to config.json as
    /// <c>ldmlab_bidirectional</c> only when set (and left out of recipe keys while false).
    /// </summary>
    [System.Text.Json.Serialization.JsonIgnore(
        Condition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingDefault)]
    public bool Bidirectional { get; init; }

    /// <summary>Stable Diffusion 1.x's text encoder: CLIP ViT-L/14's text transformer (123,060,480 parameters).</summary>
    public static ClipTextConfig VitL14 => new()
    {
        HiddenSize = 768, IntermediateSize = 3072, NumHiddenLayers = 12, NumAttentionHeads = 12, ProjectionDim = 768,
        BosTokenId = 0, EosTokenId = 2, PadTokenId = 1,   // the legacy ids SD 1.x's config carries
    };

    /// <summary>SD 2.x's text encoder: OpenCLIP ViT-H/14's text transformer as diffusers ships it (23 of its 24 layers,
    /// since SD 2 conditions on the penultimate one), GELU, 1024-d.</summary>
    public static ClipTextConfig OpenClipVitH => new()
    {
        HiddenSize = 1024, IntermediateSize = 4096, NumHiddenLayers = 23, NumAttentionHeads = 16, HiddenAct = "gelu",
        ProjectionDim = 512, BosTokenId = 0, EosTokenId = 2, PadTokenId = 1,
    };

    /// <summary>SDXL's second text encoder (text_encoder_2): OpenCLIP ViT-bigG/14's text transformer, 32 layers, 1280-d;
    /// diffusers loads it as CLIPTextModelWithProjection (plus a 1280×1280 text_projection without bias).</summary>
    public static ClipTextConfig OpenClipBigG => new()
    {
        HiddenSize = 1280, IntermediateSize = 5120, NumHiddenLayers = 32, NumAttentionHeads = 20, HiddenAct = "gelu",
        ProjectionDim = 1280, BosTokenId = 49406, EosTokenId = 49407, PadTokenId = 1,
    };

    public static ClipTextConfig FromJson(JsonObject o, string source = "config.json")
    {
        int Int(string key, int fallback) => o[key] is JsonValue v
            ? v.TryGetValue<int>(out var i) ? i : (int)v.GetValue<double>()                // built in memory or parsed
            : fallback;
        var c = new ClipTextConfig
        {
            VocabSize = Int("vocab_size", 49408), HiddenSize = Int("hidden_size", 512),
            IntermediateSize = Int("intermediate_size", 2048), NumHiddenLayers = Int("num_hidden_layers", 12),
            NumAttentionHeads = Int("num_attention_heads", 8), MaxPositionEmbeddings = Int("max_position_embeddings", 77),
            HiddenAct = (string?)o["hidden_act"] ?? "quick_gelu", LayerNormEps = (double?)o["layer_norm_eps"] ?? 1e-5,
            BosTokenId = Int("bos_token_id", 49406), EosTokenId = Int("eos_token_id", 49407), PadTokenId = Int("pad_token_id", 1),
            ProjectionDim = Int("projection_dim", 512), Bidirectional = (bool?)o["ldmlab_bidirectional"] ?? false,
        };
        if (c.HiddenAct is not ("quick_gelu" or "gelu"))
            throw new NotSupportedException($"{source}: hidden_act '{c.HiddenAct}' (supported: quick_gelu, gelu)");
        Interop.ConfigFile.RequirePositive(source, ("vocab_size", c.VocabSize), ("hidden_size", c.HiddenSize),
            ("intermediate_size", c.IntermediateSize), ("num_hidden_layers", c.NumHiddenLayers),
            ("num_attention_heads", c.NumAttentionHeads), ("max_position_embeddings", c.MaxPositionEmbeddings));
        if (c.HiddenSize % c.NumAttentionHeads != 0)
            throw new ArgumentException($"{source}: hidden_size {c.HiddenSize} is not divisible by num_attention_heads {c.NumAttentionHeads}");
        if (o["model_type"] is JsonValue mt && (string?)mt is { } type && type != "clip_text_model")
            throw new NotSupportedException($"{source}: model_type '{type}' is not clip_text_model");
        return c;
    }

    public JsonObject ToJson()
    {
        var json = Json();
        if (Bidirectional) json["ldmlab_bidirectional"] = true;
        return json;
    }

    JsonObject Json() => new()
    {
        ["architectures"] = new JsonArray("CLIPTextModel"), ["model_type"] = "clip_text_model",
        ["vocab_size"] = VocabSize, ["hidden_size"] = HiddenSize, ["intermediate_size"] = IntermediateSize,
        ["num_hidden_layers"] = NumHiddenLayers, ["num_attention_heads"] = NumAttentionHeads,
        ["max_position_embeddings"] = MaxPositionEmbeddings, ["hidden_act"] = HiddenAct, ["layer_norm_eps"] = LayerNormEps,
        ["bos_token_id"] = BosTokenId, ["eos_token_id"] = EosTokenId, ["pad_token_id"] = PadTokenId,
        ["projection_dim"] = ProjectionDim, ["attention_dropout"] = 0.0, ["initializer_range"] = 0.02,
        ["initializer_factor"] = 1.0, ["torch_dtype"] = "float32",
    };
}

/// <summary>What the text encoder returns: the final states, the pooled EOS state, and optionally every layer's.</summary>
/// <param name="LastHiddenState">[B, L, d], after the final LayerNorm (what SD conditions on).</param>
/// <param name="PooledOutput">[B, d]: the last hidden state at each prompt's EOS position.</param>
/// <param name="HiddenStates">Embeddings, then the output of every layer (before the final LayerNorm); null unless asked.</param>
public sealed record ClipTextOutput(Tensor LastHiddenState, Tensor PooledOutput, IReadOnlyList<Tensor>? HiddenStates);

/// <summary>Causal multi-head self-attention (CLIPAttention): q is scaled by 1/√d before Q Kᵀ; k, v, q, out projections.</summary>
public sealed class ClipAttention : nn.Module<Tensor, Tensor>
{
    readonly Linear k_proj, v_proj, q_proj, out_proj;   // declaration order = transformers' state-dict order
    readonly int _heads;

    readonly bool _causal;

    public ClipAttention(int dim, int heads, bool causal = true) : base("CLIPAttention")
    {
        k_proj = nn.Linear(dim, dim); v_proj = nn.Linear(dim, dim); q_proj = nn.Linear(dim, dim); out_proj = nn.Linear(dim, dim);
        _heads = heads;
        _causal = causal;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        long b = x.shape[0], n = x.shape[1];
        Tensor Heads(Tensor t) => t.reshape(b, n, _heads, -1).transpose(1, 2);   // [B, h, L, d]
        var o = nn.functional.scaled_dot_product_attention(Heads(q_proj.call(x)), Heads(k_proj.call(x)),
            Heads(v_proj.call(x)), is_casual: _causal);                   // causal: token i sees tokens ≤ i
        return out_proj.call(o.transpose(1, 2).reshape(b, n, -1));
    }
}

/// <summary>fc1 → activation → fc2, with quick_gelu(x) = x·σ(1.702 x) (OpenAI CLIP's GELU approximation).</summary>
public sealed class ClipMlp : nn.Module<Tensor, Tensor>
{
    readonly Linear fc1, fc2;
    readonly bool _quick;

    public ClipMlp(int dim, int hidden, string act) : base("CLIPMLP")
    {
        fc1 = nn.Linear(dim, hidden); fc2 = nn.Linear(hidden, dim);
        _quick = act == "quick_gelu";
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var h = fc1.call(x);
        return fc2.call(_quick ? h * sigmoid(1.702 * h) : nn.functional.gelu(h));
    }
}

/// <summary>Pre-norm transformer layer: x += attn(LN₁ x); x += mlp(LN₂ x).</summary>
public sealed class ClipEncoderLayer : nn.Module<Tensor, Tensor>
{
    readonly ClipAttention self_attn;
    readonly LayerNorm layer_norm1;
    readonly ClipMlp mlp;
    readonly LayerNorm layer_norm2;

    public ClipEncoderLayer(ClipTextConfig c) : base("CLIPEncoderLayer")
    {
        self_attn = new ClipAttention(c.HiddenSize, c.NumAttentionHeads, causal: !c.Bidirectional);
        layer_norm1 = Layers.LayerNorm(c.HiddenSize, c.LayerNormEps);
        mlp = new ClipMlp(c.HiddenSize, c.IntermediateSize, c.HiddenAct);
        layer_norm2 = Layers.LayerNorm(c.HiddenSize, c.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        x = x + self_attn.call(layer_norm1.call(x));
        return x + mlp.call(layer_norm2.call(x));
    }
}

public sealed class ClipTextEmbeddings : nn.Module<Tensor, Tensor>
{
    readonly Embedding token_embedding, position_embedding;

    public ClipTextEmbeddings(ClipTextConfig c) : base("CLIPTextEmbeddings")
    {
        token_embedding = nn.Embedding(c.VocabSize, c.HiddenSize);
        position_embedding = nn.Embedding(c.MaxPositionEmbeddings, c.HiddenSize);
        RegisterComponents();
    }

    /// <summary>The token embedding table E_token [vocab, d].</summary>
    public Parameter TokenWeight => token_embedding.weight!;

    /// <summary>
    /// Grows the token table to <paramref name="rows"/> rows (textual inversion's new tokens): the old rows are kept,
    /// each new one starts as a copy of row <paramref name="initFrom"/> (diffusers initialises a placeholder from an
    /// initializer word's embedding) or, without one, N(0, 0.02²) as transformers initialises embeddings.
    /// </summary>
    public void ResizeTokens(int rows, int? initFrom)
    {
        var old = token_embedding.weight!;
        if (rows < old.shape[0])
            throw new ArgumentOutOfRangeException(nameof(rows), rows,
                $"the table has {old.shape[0]} rows; it only grows");
        using var _ = no_grad();
        var grown = empty(rows, old.shape[1], dtype: old.dtype, device: old.device);        // [rows, d]
        grown[..(int)old.shape[0]] = old;
        long added = rows - old.shape[0];
        if (added > 0)
            grown[(int)old.shape[0]..] = initFrom is { } from
                ? old[from].unsqueeze(0).expand(added, -1)
                : normal(0, 0.02, [added, old.shape[1]], dtype: old.dtype, device: old.device);
        token_embedding.weight = new Parameter(grown, old.requires_grad);
    }

    /// <summary>e_i = E_token[id_i] + E_position[i].</summary>
    public override Tensor forward(Tensor ids) =>
        token_embedding.call(ids) + position_embedding.call(arange(ids.shape[1], dtype: ScalarType.Int64, device: ids.device));
}

public sealed class ClipEncoder : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<ClipEncoderLayer> layers;
    public IEnumerable<ClipEncoderLayer> Layers => layers;

    public ClipEncoder(ClipTextConfig c) : base("CLIPEncoder")
    {
        layers = nn.ModuleList(Enumerable.Range(0, c.NumHiddenLayers).Select(_ => new ClipEncoderLayer(c)).ToArray());
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => layers.Aggregate(x, (h, layer) => layer.call(h));
}

/// <summary>CLIPTextTransformer: embeddings → causal encoder → final LayerNorm.</summary>
public sealed class ClipTextTransformer : nn.Module
{
    internal readonly ClipTextEmbeddings embeddings;
    internal readonly ClipEncoder encoder;
    internal readonly LayerNorm final_layer_norm;

    public ClipTextTransformer(ClipTextConfig c) : base("CLIPTextTransformer")
    {
        embeddings = new ClipTextEmbeddings(c);
        encoder = new ClipEncoder(c);
        final_layer_norm = Layers.LayerNorm(c.HiddenSize, c.LayerNormEps);
        RegisterComponents();
    }
}

/// <summary>
/// transformers' CLIPTextModel with its state-dict names (<c>text_model.embeddings.token_embedding.weight</c>, …):
/// the text encoder of Stable Diffusion. Prompt ids [B, L] → hidden states [B, L, d] (causal: token i sees ≤ i) and
/// the pooled state at each prompt's EOS. No attention mask, as Stable Diffusion calls it.
/// </summary>
public sealed class ClipTextModel : nn.Module
{
    readonly ClipTextTransformer text_model;
    public ClipTextConfig Config { get; private set; }
    public const string WeightsName = "model.safetensors";

    public ClipTextModel(ClipTextConfig config) : base("CLIPTextModel")
    {
        Config = config;
        text_model = new ClipTextTransformer(config);
        RegisterComponents();
    }

    /// <summary>The token embedding table [vocab, d] (textual inversion trains rows of it).</summary>
    public Parameter TokenEmbedding => text_model.embeddings.TokenWeight;

    /// <summary>transformers' <c>resize_token_embeddings</c>: the table grows to <paramref name="vocabSize"/> rows
    /// (new rows copy row <paramref name="initFrom"/>, or N(0, 0.02²)); the config's vocab_size follows.</summary>
    public void ResizeTokenEmbeddings(int vocabSize, int? initFrom = null)
    {
        text_model.embeddings.ResizeTokens(vocabSize, initFrom);
        Config = Config with { VocabSize = vocabSize };
    }

    /// <param name="inputIds">[B, L] int64, L ≤ max_position_embeddings.</param>
    public ClipTextOutput Forward(Tensor inputIds, bool outputHiddenStates = false)
    {
        if (inputIds.dim() != 2 || inputIds.dtype != ScalarType.Int64)
            throw new ArgumentException(
                $"input ids must be [batch, tokens] int64, got [{string.Join(",", inputIds.shape)}] {inputIds.dtype}", nameof(inputIds));
        if (inputIds.shape[1] > Config.MaxPositionEmbeddings)
            throw new ArgumentException($"{inputIds.shape[1]} tokens exceed max_position_embeddings {Config.MaxPositionEmbeddings} " +
                                        "(truncate, or encode long prompts in chunks: ClipTokenizer.EncodeChunks)", nameof(inputIds));
        var h = text_model.embeddings.call(inputIds);                                        // [B, L, d]
        var states = outputHiddenStates ? new List<Tensor> { h } : null;
        foreach (var layer in text_model.encoder.Layers)
        {
            h = layer.call(h);
            states?.Add(h);
        }
        var last = text_model.final_layer_norm.call(h);
        // pooled: with the legacy eos_token_id 2 transformers takes argmax(ids) (the first 49407); else the first EOS
        var eosPosition = Config.EosTokenId == 2
            ? inputIds.argmax(-1)
            : (inputIds == Config.EosTokenId).to_type(ScalarType.Int32).argmax(-1);
        var pooled = last[arange(last.shape[0], device: last.device), eosPosition];       // [B, d]
        return new ClipTextOutput(last, pooled, states);
    }

    public long ParameterCount => parameters().Sum(p => p.numel());

    /// <summary>A transformers CLIPTextModel folder: config.json + model.safetensors (float32, float16 or bfloat16,
    /// converted to float32); with a <paramref name="variant"/> model.{variant}.safetensors where present.</summary>
    public static ClipTextModel FromPretrained(string dir, string? variant = null)
    {
        var configPath = Path.Combine(dir, "config.json");
        if (!File.Exists(configPath)) throw new FileNotFoundException($"{configPath}: a CLIPTextModel folder needs config.json", configPath);
        var model = new ClipTextModel(ConfigFile.Read(configPath, json => ClipTextConfig.FromJson(json, configPath)));
        StateDicts.Load(model, DiffusersFolder.WeightsPath(dir, WeightsName, variant),
            optional: ["text_model.embeddings.position_ids"]);
        model.eval();
        return model;
    }

    public void SavePretrained(string dir)
    {
        Directory.CreateDirectory(dir);
        StateDicts.Save(this, Path.Combine(dir, WeightsName));
        Data.AtomicFile.WriteAllText(Path.Combine(dir, "config.json"),
            Config.ToJson().ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
    }
}
