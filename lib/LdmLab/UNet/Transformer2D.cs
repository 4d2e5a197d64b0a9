using LdmLab.Nn;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.UNet;

/// <summary>
/// Receives the attention probabilities of one attention layer as it runs: <paramref name="layer"/> is its state-dict
/// prefix (e.g. <c>down_blocks.0.attentions.0.transformer_blocks.0.attn2</c>), <paramref name="probabilities"/>
/// softmax(QKᵀ/√d) as [batch, heads, queries, keys]. The tensor belongs to the forward pass, and each U-Net layer
/// runs in its own dispose scope (<see cref="Nn.Layers.Scoped"/>): keep a copy that has left it,
/// <c>p.clone().DetachFromDisposeScope()</c>.
/// </summary>
public delegate void AttentionObserver(string layer, Tensor probabilities);

/// <summary>
/// Multi-head (cross-)attention, diffusers' Attention with the plain AttnProcessor:
/// softmax(Q Kᵀ / √d) V with Q = x W_q, K = c W_k, V = c W_v (c = x for self-attention), then to_out.
/// Runs LibTorch's fused scaled_dot_product_attention unless this layer's <see cref="Observer"/> wants the
/// probabilities (or upcasting half inputs is asked for, or <see cref="Layers.FusedAttention"/> is off); both paths
/// compute the same function (tested); <see cref="SliceSize"/> computes the explicit path in slices (diffusers'
/// sliced processor).
/// Observers and slicing are set per layer, as diffusers' <c>set_attn_processor</c> sets processors:
/// see <see cref="AttentionProcessors"/>.
/// </summary>
public sealed class Attention : nn.Module<Tensor, Tensor?, Tensor>
{
    readonly nn.Module<Tensor, Tensor> to_q, to_k, to_v;   // Linear (or what Compression swaps in)
    readonly ModuleList<nn.Module<Tensor, Tensor>> to_out;
    readonly int _heads;
    readonly double _scale;
    readonly bool _upcast;
    /// <summary>The layer's state-dict prefix inside its U-Net (diffusers' processor name without ".processor").</summary>
    public string LayerName { get; internal set; } = "";
    public int Heads => _heads;
    public int HeadDim { get; }
    /// <summary>True when keys and values come from the context (text tokens, class embedding), not from x itself.</summary>
    public bool IsCrossAttention { get; }

    /// <summary>Set to observe this layer's attention maps (e.g. for the cross-attention visualisations); null costs nothing.</summary>
    public AttentionObserver? Observer { get; set; }

    /// <summary>
    /// Sliced attention (diffusers' SlicedAttnProcessor; set by
    /// <see cref="AttentionProcessors.EnableAttentionSlicing"/>): the explicit softmax(QKᵀ/√d)V for at most this
    /// many of the batch·heads rows at a time, so that only
    /// [slice, n, m] of the attention matrix exists at once instead of [batch·heads, n, m]. Null: not sliced. An
    /// observer, which wants the whole map, turns slicing off for its layer.
    /// </summary>
    public int? SliceSize
    {
        get => _sliceSize;
        set => _sliceSize = value is < 1
            ? throw new ArgumentOutOfRangeException(nameof(value), value, "an attention slice size must be ≥ 1")
            : value;
    }

    int? _sliceSize;

    public Attention(int queryDim, int? crossAttentionDim, int heads, int dimHead, bool upcast = false, bool bias = false) : base(nameof(Attention))
    {
        int inner = heads * dimHead;
        to_q = nn.Linear(queryDim, inner, hasBias: bias);
        to_k = nn.Linear(crossAttentionDim ?? queryDim, inner, hasBias: bias);
        to_v = nn.Linear(crossAttentionDim ?? queryDim, inner, hasBias: bias);
        to_out = nn.ModuleList<nn.Module<Tensor, Tensor>>(nn.Linear(inner, queryDim), nn.Dropout(0.0));
        _heads = heads;
        HeadDim = dimHead;
        _scale = 1.0 / Math.Sqrt(dimHead);
        _upcast = upcast;
        IsCrossAttention = crossAttentionDim is not null;
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, Tensor? context)
    {
        context ??= x;
        long b = x.shape[0], n = x.shape[1], m = context.shape[1];
        Tensor Heads(Tensor t, long len) => t.reshape(b, len, _heads, -1).permute(0, 2, 1, 3);   // [b, h, len, d]
        var q = Heads(to_q.call(x), n);
        var k = Heads(to_k.call(context), m);
        var v = Heads(to_v.call(context), m);
        Tensor o;                                                                                   // [b, h, n, d]
        // upcast_attention matters only for half inputs: in float32 the fused kernel is already the upcast maths
        bool upcast = _upcast && q.dtype != ScalarType.Float32;
        if (Observer is null && !upcast && _sliceSize is null && Layers.FusedAttention)
            o = nn.functional.scaled_dot_product_attention(q, k, v);   // fused kernel, same maths (scale 1/√d)
        else if (Observer is null && _sliceSize is int slice)
            o = Sliced(q, k, v, slice);
        else
        {
            if (upcast) { q = q.to_type(ScalarType.Float32); k = k.to_type(ScalarType.Float32); }
            var probs = softmax(q.matmul(k.transpose(-1, -2)) * _scale, -1).to_type(v.dtype);   // [b, h, n, m]
            Observer?.Invoke(LayerName, probs);
            o = probs.matmul(v);
        }
        return to_out[1].call(to_out[0].call(o.permute(0, 2, 1, 3).reshape(b, n, -1)));
    }

    /// <summary>softmax(QKᵀ/√d)V over [b, h, n, d] queries, <paramref name="slice"/> batch·head rows at a time.
    /// </summary>
    Tensor Sliced(Tensor q, Tensor k, Tensor v, int slice)
    {
        long b = q.shape[0], n = q.shape[2], m = k.shape[2], rows = b * _heads;
        var qs = q.reshape(rows, n, -1);                                                            // [b·h, n, d]
        var ks = k.reshape(rows, m, -1);                                                            // [b·h, m, d]
        var vs = v.reshape(rows, m, -1);                                                            // [b·h, m, d]
        var o = empty([rows, n, vs.shape[2]], dtype: v.dtype, device: v.device);                    // [b·h, n, d]
        for (long start = 0; start < rows; start += slice)
        {
            using var scope = NewDisposeScope();                   // each slice's [s, n, m] scores die with it
            long len = Math.Min(slice, rows - start);
            Tensor qi = qs.narrow(0, start, len), ki = ks.narrow(0, start, len);
            if (_upcast) { qi = qi.to_type(ScalarType.Float32); ki = ki.to_type(ScalarType.Float32); }
            var probs = softmax(qi.bmm(ki.transpose(1, 2)) * _scale, -1).to_type(v.dtype);         // [s, n, m]
            o.narrow(0, start, len).copy_(probs.bmm(vs.narrow(0, start, len)));
        }
        return o.reshape(b, _heads, n, -1);
    }
}

/// <summary>GEGLU (Shazeer 2020): h, g = split(x W); h · GELU(g).</summary>
public sealed class GEGLU : nn.Module<Tensor, Tensor>
{
    readonly nn.Module<Tensor, Tensor> proj;   // Linear (or what Compression swaps in)

    public GEGLU(int dimIn, int dimOut) : base(nameof(GEGLU))
    {
        proj = nn.Linear(dimIn, dimOut * 2);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var parts = proj.call(x).chunk(2, -1);
        return parts[0] * nn.functional.gelu(parts[1]);
    }
}

/// <summary>Feed-forward of the transformer block: GEGLU(dim → 4·dim) → dropout → linear(4·dim → dim).</summary>
public sealed class FeedForward : nn.Module<Tensor, Tensor>
{
    readonly ModuleList<nn.Module<Tensor, Tensor>> net;

    public FeedForward(int dim, int mult = 4) : base(nameof(FeedForward))
    {
        net = nn.ModuleList<nn.Module<Tensor, Tensor>>(new GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => net[2].call(net[1].call(net[0].call(x)));
}

/// <summary>Pre-norm transformer block: x += attn1(LN x); x += attn2(LN x, context); x += ff(LN x).</summary>
public sealed class BasicTransformerBlock : nn.Module<Tensor, Tensor?, Tensor>
{
    readonly LayerNorm norm1;
    readonly Attention attn1;
    readonly LayerNorm norm2;
    readonly Attention attn2;
    readonly LayerNorm norm3;
    readonly FeedForward ff;
    readonly bool _onlyCross;

    public BasicTransformerBlock(int dim, int heads, int dimHead, int crossAttentionDim, bool onlyCrossAttention, bool upcast) : base(nameof(BasicTransformerBlock))
    {
        norm1 = Layers.LayerNorm(dim);
        attn1 = new Attention(dim, onlyCrossAttention ? crossAttentionDim : null, heads, dimHead, upcast);
        norm2 = Layers.LayerNorm(dim);
        attn2 = new Attention(dim, crossAttentionDim, heads, dimHead, upcast);
        norm3 = Layers.LayerNorm(dim);
        ff = new FeedForward(dim);
        _onlyCross = onlyCrossAttention;
        RegisterComponents();
    }

    internal void Name(string prefix) { attn1.LayerName = prefix + ".attn1"; attn2.LayerName = prefix + ".attn2"; }

    public override Tensor forward(Tensor x, Tensor? context)
    {
        x = attn1.call(norm1.call(x), _onlyCross ? context : null) + x;
        x = attn2.call(norm2.call(x), context) + x;
        return ff.call(norm3.call(x)) + x;
    }
}

/// <summary>
/// The spatial transformer (diffusers' Transformer2DModel, continuous input): GroupNorm → proj_in (1×1 conv or
/// linear) → tokens [B, H·W, C] → transformer blocks → proj_out → + residual.
/// </summary>
public sealed class Transformer2DModel : nn.Module<Tensor, Tensor?, Tensor>
{
    readonly GroupNorm norm;
    readonly nn.Module<Tensor, Tensor> proj_in;
    readonly ModuleList<BasicTransformerBlock> transformer_blocks;
    readonly nn.Module<Tensor, Tensor> proj_out;
    readonly bool _linear;

    public Transformer2DModel(int heads, int dimHead, int inChannels, int layers, int crossAttentionDim, int groups,
        bool useLinearProjection, bool onlyCrossAttention, bool upcast) : base(nameof(Transformer2DModel))
    {
        int inner = heads * dimHead;
        norm = Layers.GroupNorm(groups, inChannels, 1e-6);
        proj_in = useLinearProjection ? nn.Linear(inChannels, inner) : nn.Conv2d(inChannels, inner, 1);
        transformer_blocks = nn.ModuleList(Enumerable.Range(0, layers)
            .Select(_ => new BasicTransformerBlock(inner, heads, dimHead, crossAttentionDim, onlyCrossAttention, upcast)).ToArray());
        proj_out = useLinearProjection ? nn.Linear(inner, inChannels) : nn.Conv2d(inner, inChannels, 1);
        _linear = useLinearProjection;
        RegisterComponents();
    }

    internal void Name(string prefix)
    {
        for (int i = 0; i < transformer_blocks.Count; i++) transformer_blocks[i].Name($"{prefix}.transformer_blocks.{i}");
    }

    public override Tensor forward(Tensor x, Tensor? context)
    {
        long b = x.shape[0], h = x.shape[2], w = x.shape[3];
        var residual = x;
        var t = norm.call(x);
        if (!_linear) t = proj_in.call(t);
        t = t.permute(0, 2, 3, 1).reshape(b, h * w, -1);
        if (_linear) t = proj_in.call(t);
        foreach (var block in transformer_blocks) t = block.call(t, context);
        if (_linear) t = proj_out.call(t);
        t = t.reshape(b, h, w, -1).permute(0, 3, 1, 2);                                       // [b, c, h, w] (NHWC)
        if (!MemoryFormat.IsChannelsLast(x)) t = t.contiguous();                          // back to x's layout
        if (!_linear) t = proj_out.call(t);
        return t + residual;
    }
}
