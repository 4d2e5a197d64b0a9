using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Conditioning;

/// <summary>
/// Stable Diffusion's conditioning path in small, trained from scratch end to end: the real CLIP tokenizer → a small
/// CLIP text encoder (transformers' CLIPTextModel, names and all) → its last hidden states [B, L, d] as the U-Net's
/// cross-attention context (section 10.4.3–10.4.5). Conditions are rows of token ids [B, L]; the null condition is
/// the empty prompt's ids, so condition dropout trains the unconditional branch of classifier-free guidance as SD
/// does. Pipelines.TextConditionedPipelines.ToPipeline gives a StableDiffusionPipeline over the same modules.
/// </summary>
public sealed class TextConditionedUNet : ConditionalDenoiser
{
    readonly ClipTextModel text_encoder;
    readonly UNet2DConditionModel unet;

    /// <summary>The CLIP tokenizer cut to the text encoder's positions.</summary>
    public ClipTokenizer Tokenizer { get; private set; }
    public ClipTextModel TextEncoder => text_encoder;
    public override UNet2DConditionModel Backbone => unet;

    public TextConditionedUNet(UNetConfig unetConfig, ClipTextConfig textConfig, ClipTokenizer? tokenizer = null)
        : base(nameof(TextConditionedUNet))
    {
        if (unetConfig.CrossAttentionDim != textConfig.HiddenSize)
            throw new ArgumentException($"the U-Net's cross_attention_dim {unetConfig.CrossAttentionDim} must equal " +
                                        $"the text encoder's hidden_size {textConfig.HiddenSize}", nameof(unetConfig));
        text_encoder = new ClipTextModel(textConfig);
        unet = new UNet2DConditionModel(unetConfig);
        Tokenizer = (tokenizer ?? ClipTokenizer.Default).With(maxLength: textConfig.MaxPositionEmbeddings,
            warn: _ => { });                                                          // captions longer than L are cut
        RegisterComponents();
    }

    /// <summary>
    /// Over existing modules — a loaded Stable Diffusion pipeline's U-Net, text encoder and tokenizer — so that the
    /// generic training code (<see cref="Training.FineTuner"/>) fine-tunes them in place; nothing is copied.
    /// </summary>
    public TextConditionedUNet(UNet2DConditionModel unet, ClipTextModel textEncoder, ClipTokenizer tokenizer)
        : base(nameof(TextConditionedUNet))
    {
        if (unet.Config.CrossAttentionDim != textEncoder.Config.HiddenSize)
            throw new ArgumentException($"the U-Net's cross_attention_dim {unet.Config.CrossAttentionDim} must " +
                                        $"equal the text encoder's hidden_size {textEncoder.Config.HiddenSize}",
                nameof(unet));
        text_encoder = textEncoder;
        this.unet = unet;
        Tokenizer = tokenizer.With(maxLength: Math.Min(tokenizer.MaxLength, textEncoder.Config.MaxPositionEmbeddings),
            warn: _ => { });
        RegisterComponents();
    }

    /// <summary>
    /// Replaces the tokenizer with one that knows more tokens (textual inversion's
    /// <see cref="Adapters.TextualInversion.AddTo"/> or <c>Create</c>): its vocabulary must match the text encoder's
    /// token rows; it is cut to the encoder's positions.
    /// </summary>
    public void UseTokenizer(ClipTokenizer tokenizer)
    {
        if (tokenizer.VocabSize != text_encoder.TokenEmbedding.shape[0])
            throw new ArgumentException($"the tokenizer has {tokenizer.VocabSize} entries but the text encoder " +
                                        $"{text_encoder.TokenEmbedding.shape[0]} token rows", nameof(tokenizer));
        Tokenizer = tokenizer.With(maxLength: Tokenizer.MaxLength, warn: _ => { });
    }

    /// <summary>Prompt ids [N, L] int64, padded and truncated to the text encoder's L positions.</summary>
    public Tensor Tokenize(IEnumerable<string> prompts) => Tokenizer.EncodeBatch(prompts);

    /// <summary>
    /// Prompt ids → context, least recently used evicted (section 10.5.4). A sampling loop over this model calls
    /// <see cref="Forward"/> with the same ids at every step (and the empty prompt's in every guided batch): with
    /// the cache on, only the first step runs the text encoder. Used only in eval mode; null (the default): off.
    /// Clear it after changing the text encoder's weights.
    /// </summary>
    public TextEncodingCache? TextEncodingCache { get; set; }

    /// <summary>The U-Net's context: the text encoder's last hidden states [B, L, d] (rows from the
    /// <see cref="TextEncodingCache"/> when it is on, in eval mode; the misses encoded in one batch).</summary>
    public Tensor TextContext(Tensor ids)
    {
        if (TextEncodingCache is not { } cache || training) return text_encoder.Forward(ids).LastHiddenState;
        long rows = ids.shape[0], length = ids.shape[1];
        var values = ids.cpu().contiguous().data<long>().ToArray();
        var keys = Enumerable.Range(0, (int)rows)
            .Select(i => string.Join(',', values.Skip(i * (int)length).Take((int)length))).ToArray();
        var unique = keys.Distinct().ToList();
        var encoded = new Tensor[unique.Count];                                                     // each [L, d]
        var missing = new List<int>();
        for (int u = 0; u < unique.Count; u++)
            if (cache.TryGet(unique[u], out var hit)) encoded[u] = hit;
            else missing.Add(u);
        if (missing.Count > 0)
        {
            var first = missing.Select(u => (long)Array.IndexOf(keys, unique[u])).ToArray();
            var states = text_encoder.Forward(ids.index_select(0, tensor(first, device: ids.device)))
                .LastHiddenState;                                                                   // [misses, L, d]
            for (int j = 0; j < missing.Count; j++)
            {
                encoded[missing[j]] = states[j];
                cache.Add(unique[missing[j]], states[j]);
            }
        }
        var which = keys.Select(k => (long)unique.IndexOf(k)).ToArray();
        return stack(encoded).index_select(0, tensor(which, device: encoded[0].device));          // [B, L, d]
    }

    public override Tensor Forward(Tensor zt, Tensor t, Tensor ids) => unet.Forward(zt, t, TextContext(ids));

    /// <summary>The empty prompt's ids [L] ("" = start, end, padding), the unconditional condition.</summary>
    public override Tensor NullCondition => Tokenize([""])[0];
}
