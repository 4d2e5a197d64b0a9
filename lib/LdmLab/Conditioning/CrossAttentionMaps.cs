using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Conditioning;

/// <summary>
/// One cross-attention layer's maps in one model evaluation: <see cref="Maps"/> is [B, heads, h, w, tokens] on the
/// CPU in float32, the probability that each latent position (h × w, the layer's resolution) gives to each token.
/// </summary>
public sealed record AttentionRecord(int Evaluation, string Layer, Tensor Maps)
{
    public int Heads => (int)Maps.shape[1];
    public int Height => (int)Maps.shape[2];
    public int Width => (int)Maps.shape[3];
}

/// <summary>A word of a prompt and the positions of its tokens in the encoded sequence (after the start
/// token).</summary>
public sealed record PromptWord(string Text, int[] TokenPositions);

/// <summary>
/// Records the cross-attention probabilities of a model while it samples (section 10.4.5, exercise 10.4 item 2), per
/// layer, head, model evaluation and token, through per-layer observers (<see cref="AttentionProcessors"/>): the
/// model's outputs are those of an unobserved run up to the fused kernel's rounding (tested). With classifier-free
/// guidance in one batch ([unconditional; conditional], as <see cref="StableDiffusionPipeline"/> and
/// <see cref="ClassConditionedUNet"/> batch it) only the conditional half is kept. Dispose to stop recording.
/// </summary>
/// <remarks>
/// An "evaluation" is one forward pass of the model: one per sampler step for DDIM, Euler, DPM-Solver++, two for
/// Heun. A new evaluation starts when a layer that already reported in the current one reports again.
/// </remarks>
public sealed class CrossAttentionRecorder : IDisposable
{
    readonly IDisposable _observing;
    readonly int _latentHeight, _latentWidth;
    readonly bool _conditionalHalf;
    readonly List<AttentionRecord> _records = [];
    readonly HashSet<string> _seenInEvaluation = [];
    int _evaluation = -1;

    /// <param name="model">the U-Net (or a module holding one)</param>
    /// <param name="latentHeight">height of the latents the model samples (each layer's grid is this / 2ᵏ)</param>
    /// <param name="latentWidth">width of the latents</param>
    /// <param name="guidanceBatch">true when every call holds [unconditional; conditional]: keep the second
    /// half</param>
    public CrossAttentionRecorder(nn.Module model, int latentHeight, int latentWidth, bool guidanceBatch)
    {
        if (latentHeight < 1 || latentWidth < 1)
            throw new ArgumentOutOfRangeException(nameof(latentHeight), "latent height and width must be ≥ 1");
        _latentHeight = latentHeight;
        _latentWidth = latentWidth;
        _conditionalHalf = guidanceBatch;
        _observing = model.ObserveCrossAttention(Record);
    }

    /// <summary>Everything recorded so far, in the order the layers ran.</summary>
    public IReadOnlyList<AttentionRecord> Records => _records;

    /// <summary>How many model evaluations were recorded.</summary>
    public int Evaluations => _evaluation + 1;

    /// <summary>
    /// While true, the layers' reports are ignored (not recorded, no evaluation counted): the extra forward passes of
    /// a sampler-side step (<see cref="Pipelines.AttentionSteering"/>) are not part of the trajectory.
    /// </summary>
    public bool Paused { get; set; }

    /// <summary>The layers that reported, in the order they ran in the first evaluation.</summary>
    public IReadOnlyList<string> Layers => _records.Where(r => r.Evaluation == 0).Select(r => r.Layer).ToList();

    void Record(string layer, Tensor probabilities)
    {
        if (Paused) return;
        if (_evaluation < 0 || !_seenInEvaluation.Add(layer))
        {
            _evaluation++;
            _seenInEvaluation.Clear();
            _seenInEvaluation.Add(layer);
        }
        long batch = probabilities.shape[0], heads = probabilities.shape[1];
        long queries = probabilities.shape[2], tokens = probabilities.shape[3];
        var (h, w) = LayerGrid(queries, _latentHeight, _latentWidth);
        using var _ = no_grad();
        var kept = _conditionalHalf ? probabilities.narrow(0, batch / 2, batch - batch / 2) : probabilities;
        var maps = kept.reshape(kept.shape[0], heads, h, w, tokens)                      // [B, heads, h, w, tokens]
            .to(ScalarType.Float32).cpu().clone().DetachFromDisposeScope();
        _records.Add(new AttentionRecord(_evaluation, layer, maps));
    }

    /// <summary>A layer's grid from its query count: the latent grid <paramref name="latentHeight"/> ×
    /// <paramref name="latentWidth"/> downsampled by the same 2ᵏ (rounded up) in both directions.</summary>
    public static (int h, int w) LayerGrid(long queries, int latentHeight, int latentWidth)
    {
        long area = (long)latentHeight * latentWidth;
        for (int factor = 1; factor <= Math.Max(latentHeight, latentWidth); factor *= 2)
        {
            int h = (latentHeight + factor - 1) / factor, w = (latentWidth + factor - 1) / factor;
            if ((long)h * w == queries) return (h, w);
            if ((long)h * w < queries) break;
        }
        throw new InvalidOperationException(
            $"an attention layer has {queries} queries, which is no 2ᵏ downsampling of the " +
            $"{latentHeight}×{latentWidth} " +
            $"latent grid ({area} positions): pass the latents' height and width to the recorder");
    }

    /// <summary>
    /// DAAM aggregation (Tang et al. 2022): every selected record's maps upsampled (bilinear) to
    /// <paramref name="height"/> × <paramref name="width"/> and summed over heads, layers and evaluations:
    /// [B, tokens, height, width]. Upsampling is linear, so summing heads first changes nothing.
    /// </summary>
    public Tensor Aggregate(int height, int width, Func<AttentionRecord, bool>? which = null) =>
        AggregateRecords(_records.Where(which ?? (_ => true)), height, width);

    /// <summary>The same aggregation over any records (e.g. a hand-made set in a test).</summary>
    public static Tensor AggregateRecords(IEnumerable<AttentionRecord> records, int height, int width)
    {
        Tensor? sum = null;
        foreach (var r in records)
        {
            using var scope = NewDisposeScope();
            var perToken = r.Maps.sum(1).permute(0, 3, 1, 2);                                  // [B, tokens, h, w]
            var up = nn.functional.interpolate(perToken, [height, width], mode: InterpolationMode.Bilinear,
                align_corners: false);                                                          // [B, tokens, H, W]
            // in place: a new sum per record kept every partial sum alive until the caller's scope or the GC (a DAAM
            // study of 50 prompts peaked at 12.3 GB resident that way)
            if (sum is null) sum = up.MoveToOuterDisposeScope();
            else sum.add_(up);
        }
        return sum ?? throw new InvalidOperationException("no attention records were selected: nothing to aggregate");
    }

    /// <summary>
    /// The prompt's words with their token positions, from the tokenizer's own pieces (a word ends at a piece that
    /// ends in &lt;/w&gt;), counted after the start token — the positions in the encoded sequence.
    /// </summary>
    public static IReadOnlyList<PromptWord> Words(ClipTokenizer tokenizer, string prompt)
    {
        var words = new List<PromptWord>();
        var pieces = new List<string>();
        var positions = new List<int>();
        int position = 1;                                                                       // 0 is <|startoftext|>
        foreach (var token in tokenizer.EncodeTokens(prompt))
        {
            if (position >= tokenizer.MaxLength - 1) break;                                     // truncated away
            pieces.Add(token);
            positions.Add(position++);
            if (!token.EndsWith("</w>", StringComparison.Ordinal)) continue;
            words.Add(new PromptWord(string.Concat(pieces)[..^4], positions.ToArray()));
            pieces.Clear();
            positions.Clear();
        }
        return words;
    }

    /// <summary>A word's map: the mean over its tokens' maps (DAAM merges a multi-token word so): [B, H, W].</summary>
    public static Tensor WordMap(Tensor aggregated, PromptWord word) =>
        aggregated.index_select(1, tensor(word.TokenPositions.Select(p => (long)p).ToArray())).mean([1]);

    /// <summary>Each map scaled to [0, 1] by its own minimum and maximum: [..., H, W] → same shape.</summary>
    public static Tensor Normalise(Tensor maps)
    {
        var flat = maps.flatten(-2);
        var low = flat.min(-1, keepdim: true).values.unsqueeze(-1);
        var high = flat.max(-1, keepdim: true).values.unsqueeze(-1);
        return (maps - low) / (high - low).clamp_min(1e-12);
    }

    /// <summary>DAAM's threshold: the normalised map ≥ τ (DAAM uses τ = 0.4) as a 0/1 mask.</summary>
    public static Tensor Threshold(Tensor maps, double tau = 0.4) => Normalise(maps).ge(tau).to(ScalarType.Float32);

    /// <summary>Pointing game: 1 where the map's maximum lies inside the mask, per map. maps, masks: [N, H,
    /// W].</summary>
    public static Tensor PointingHits(Tensor maps, Tensor masks)
    {
        var peak = maps.flatten(1).argmax(1, keepdim: true);                                  // [N, 1]
        return masks.flatten(1).to(ScalarType.Float32).gather(1, peak).squeeze(1).gt(0.5).to(ScalarType.Float32);
    }

    /// <summary>IoU of the thresholded maps with the masks, per map (0 when both are empty). maps, masks: [N, H,
    /// W].</summary>
    public static Tensor Iou(Tensor maps, Tensor masks, double tau = 0.4)
    {
        var a = Threshold(maps, tau).flatten(1);
        var b = masks.flatten(1).gt(0.5).to(ScalarType.Float32);
        var intersection = (a * b).sum(1);
        var union = (a + b).clamp_max(1).sum(1);
        return where(union.gt(0), intersection / union.clamp_min(1), zeros_like(union));
    }

    /// <summary>Stops recording; what was recorded stays readable until <see cref="Dispose"/>.</summary>
    public void Stop() => _observing.Dispose();

    public void Dispose()
    {
        _observing.Dispose();
        foreach (var r in _records) r.Maps.Dispose();
        _records.Clear();
    }
}
