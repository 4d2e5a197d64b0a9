using LdmLab.Conditioning;
using LdmLab.Interop.Onnx;
using TorchSharp;
using TorchSharp.Modules;
using static LdmLab.Export.ModuleTree;

namespace LdmLab.Export;

/// <summary>
/// The graph of a <see cref="ClipTextModel"/> (transformers' CLIPTextModel): <c>input_ids</c> [batch, sequence]
/// (int64, or int32 as diffusers' ONNX pipeline feeds them) → <c>last_hidden_state</c> [batch, sequence, d] and
/// <c>pooler_output</c> [batch, d], the final state at each prompt's EOS. Any sequence length up to
/// max_position_embeddings: the position table and the causal mask are sliced to it.
/// </summary>
internal sealed class ClipTextOnnx(OnnxLayers nn, ClipTextConfig config)
{
    OnnxGraphBuilder g => nn.Graph;

    public static void Emit(OnnxGraphBuilder g, ClipTextModel model, int idsType)
    {
        CheckAll(model);
        var c = model.Config;
        var ids = g.Input("input_ids", idsType, ["batch", "sequence"]);
        var (last, pooled) = new ClipTextOnnx(new OnnxLayers(g), c)
            .Forward(Child<ClipTextTransformer>(model, "", "text_model"), ids);
        g.Output(last, "last_hidden_state", OnnxGraphBuilder.Float, ["batch", "sequence", c.HiddenSize]);
        g.Output(pooled, "pooler_output", OnnxGraphBuilder.Float, ["batch", c.HiddenSize]);
    }

    (string last, string pooled) Forward(ClipTextTransformer m, string ids)
    {
        const string path = "text_model";
        var ids64 = g.Op("Cast", [ids], OnnxAttr.Of("to", (long)OnnxGraphBuilder.Int64));       // [B, L]
        var length = nn.Shape(ids, 1, 2);                                                        // [1] = L

        // e_i = E_token[id_i] + E_position[i]
        var embeddings = Child<ClipTextEmbeddings>(m, path, "embeddings");
        var ePath = $"{path}.embeddings";
        string h;
        using (g.Scope(ePath))
        {
            var tokenTable = Child<Embedding>(embeddings, ePath, "token_embedding").weight!;
            var positionTable = Child<Embedding>(embeddings, ePath, "position_embedding").weight!;
            var tokens = g.Op("Gather", [g.Weight($"{ePath}.token_embedding.weight", tokenTable), ids64],
                OnnxAttr.Of("axis", 0L));                                                        // [B, L, d]
            var positions = g.Op("Slice", [g.Weight($"{ePath}.position_embedding.weight", positionTable),
                g.Ints(0), length, g.Ints(0)]);                                                  // [L, d]
            h = nn.Add(tokens, positions);                                                       // [B, L, d]
        }

        // causal mask: 0 where key j ≤ query i, the float minimum above the diagonal (transformers' mask), [L, L]
        string? mask = null;
        if (!config.Bidirectional)
        {
            int n = config.MaxPositionEmbeddings;
            var full = new float[n * n];
            for (int i = 0; i < n; i++)
                for (int j = i + 1; j < n; j++) full[i * n + j] = float.MinValue;
            using (g.Scope($"{path}.causal_mask"))
                mask = g.Op("Slice", [g.Const(full, n, n), g.Ints(0, 0), nn.Concat(0, length, length),
                    g.Ints(0, 1)]);                                                              // [L, L]
        }

        var layers = Items<ClipEncoderLayer>(Child<ClipEncoder>(m, path, "encoder"), $"{path}.encoder", "layers");
        for (int i = 0; i < layers.Count; i++)
            h = Layer($"{path}.encoder.layers.{i}", layers[i], h, mask);                         // [B, L, d]
        var last = nn.LayerNorm($"{path}.final_layer_norm",
            Child<LayerNorm>(m, path, "final_layer_norm"), h);                                   // [B, L, d]

        // pooled: with the legacy eos_token_id 2 transformers takes argmax(ids) (the first 49407), else the first
        // EOS; ArgMax keeps the first of equal maxima, as torch's argmax does
        using var _ = g.Scope($"{path}.pooler");
        var score = config.EosTokenId == 2
            ? ids64
            : g.Op("Equal", [ids64, g.Const(new long[] { config.EosTokenId })]);
        var position = g.Op("ArgMax", [g.Op("Cast", [score], OnnxAttr.Of("to", (long)OnnxGraphBuilder.Float))],
            OnnxAttr.Of("axis", -1L), OnnxAttr.Of("keepdims", 0L));                              // [B]
        var pooled = g.Op("GatherND", [last, nn.Unsqueeze(position, 1)],
            OnnxAttr.Of("batch_dims", 1L));                                                      // [B, d]
        return (last, pooled);
    }

    /// <summary>Pre-norm layer: x += attn(LN₁ x); x += mlp(LN₂ x).</summary>
    string Layer(string path, ClipEncoderLayer m, string x, string? mask)
    {
        using var _ = g.Scope(path);
        var n1 = nn.LayerNorm($"{path}.layer_norm1", Child<LayerNorm>(m, path, "layer_norm1"), x);
        x = nn.Add(x, Attention($"{path}.self_attn", Child<ClipAttention>(m, path, "self_attn"), n1, mask));
        var n2 = nn.LayerNorm($"{path}.layer_norm2", Child<LayerNorm>(m, path, "layer_norm2"), x);
        return nn.Add(x, Mlp($"{path}.mlp", Child<ClipMlp>(m, path, "mlp"), n2));
    }

    /// <summary>CLIPAttention: q, k, v projections → softmax(QKᵀ/√d + causal mask)V per head → out_proj.</summary>
    string Attention(string path, ClipAttention m, string x, string? mask)
    {
        using var _ = g.Scope(path);
        long heads = config.NumAttentionHeads, headDim = config.HiddenSize / config.NumAttentionHeads;
        var q = nn.Linear($"{path}.q_proj", Child<Linear>(m, path, "q_proj"), x);               // [B, L, d]
        var k = nn.Linear($"{path}.k_proj", Child<Linear>(m, path, "k_proj"), x);
        var v = nn.Linear($"{path}.v_proj", Child<Linear>(m, path, "v_proj"), x);
        var o = nn.Attend(q, k, v, heads, headDim, 1 / Math.Sqrt(headDim), mask);               // [B, L, d]
        return nn.Linear($"{path}.out_proj", Child<Linear>(m, path, "out_proj"), o);
    }

    /// <summary>fc1 → quick_gelu(x) = x·σ(1.702 x) (or exact GELU) → fc2.</summary>
    string Mlp(string path, ClipMlp m, string x)
    {
        using var _ = g.Scope(path);
        var h = nn.Linear($"{path}.fc1", Child<Linear>(m, path, "fc1"), x);                     // [B, L, d_ff]
        h = config.HiddenAct == "quick_gelu" ? nn.Mul(h, nn.Sigmoid(nn.Mul(h, 1.702f))) : nn.Gelu(h);
        return nn.Linear($"{path}.fc2", Child<Linear>(m, path, "fc2"), h);                      // [B, L, d]
    }
}
