using LdmLab.Data;
using LdmLab.UNet;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace LdmLab.Conditioning;

/// <summary>
/// The ways of section 10.3.3 to put a condition c into the denoiser ε_θ(z_t, t, c), compared in notebook 05 on the
/// same captioned scenes at the same training budget:
/// <list type="bullet">
/// <item>cross-attention: every latent position queries the caption's token states
/// (<see cref="TextConditionedUNet"/>);</item>
/// <item>FiLM: one vector for the whole caption (the text encoder's pooled state) scales and shifts every channel of
/// every ResNet block, the same at every position (<see cref="FilmConditionedUNet"/>);</item>
/// <item>spatial concatenation, addition and gating of a layout map m (the classes the caption puts in each half,
/// <see cref="CaptionedFashion.Layout"/>): as extra input channels, added to each level's features, or multiplying
/// them (<see cref="LayoutConditionedUNet"/>).</item>
/// </list>
/// </summary>
public enum ConditioningMethod { CrossAttention, Film, Concatenation, Addition, Gating }

/// <summary>
/// FiLM (Perez et al. 2018) from the pooled text embedding: e = emb(t) + MLP(pooled(c)), and in every ResNet block
/// GN(h)·(1 + γ(e)) + β(e), with γ, β one number per channel — diffusers' class_embed_type "projection" with
/// resnet_time_scale_shift "scale_shift". One vector per caption: nothing in it says *where*.
/// </summary>
public sealed class FilmConditionedUNet : ConditionalDenoiser
{
    readonly ClipTextModel text_encoder;
    readonly UNet2DConditionModel unet;

    public ClipTokenizer Tokenizer { get; }
    public override UNet2DConditionModel Backbone => unet;

    public FilmConditionedUNet(UNetConfig unetConfig, ClipTextConfig textConfig) : base(nameof(FilmConditionedUNet))
    {
        if (unetConfig.ClassEmbedType != "projection" || unetConfig.ResnetTimeScaleShift != "scale_shift"
            || unetConfig.ProjectionClassEmbeddingsInputDim != textConfig.HiddenSize)
            throw new ArgumentException("FiLM needs class_embed_type projection from the text encoder's hidden_size " +
                $"{textConfig.HiddenSize} and resnet_time_scale_shift scale_shift", nameof(unetConfig));
        text_encoder = new ClipTextModel(textConfig);
        unet = new UNet2DConditionModel(unetConfig);
        Tokenizer = ClipTokenizer.Default.With(maxLength: textConfig.MaxPositionEmbeddings, warn: _ => { });
        RegisterComponents();
    }

    /// <summary>Prompt ids [N, L].</summary>
    public Tensor Tokenize(IEnumerable<string> prompts) => Tokenizer.EncodeBatch(prompts);

    public override Tensor Forward(Tensor zt, Tensor t, Tensor ids) =>
        unet.Forward(zt, t, null, classLabels: text_encoder.Forward(ids).PooledOutput);       // pooled [B, d]

    public override Tensor NullCondition => Tokenize([""])[0];
}

/// <summary>
/// Spatial conditioning by a layout map m [B, 10, h, w] (class weights per position, rasterised from the slots'
/// class weights [B, 2, 10]): concatenation — [z_t; m] into conv_in (LDM's semantic synthesis, SD's inpainting
/// and depth models); addition — h_ℓ + A_ℓ(m) after each down level (T2I-Adapter's place); gating —
/// h_ℓ ⊙ 2σ(G_ℓ(m)). A_ℓ and G_ℓ are 3×3 convolutions started at zero, so training starts from the unconditional
/// model (as ControlNet's zero convolutions do). The null condition is the empty layout.
/// </summary>
public sealed class LayoutConditionedUNet : ConditionalDenoiser
{
    readonly UNet2DConditionModel unet;
    readonly ModuleList<Conv2d>? layout_adapters;

    public ConditioningMethod Method { get; }
    public override UNet2DConditionModel Backbone => unet;
    public static int LayoutChannels => CaptionedFashion.Nouns.Length;

    public LayoutConditionedUNet(UNetConfig unetConfig, ConditioningMethod method) : base(nameof(LayoutConditionedUNet))
    {
        if (method is ConditioningMethod.CrossAttention or ConditioningMethod.Film)
            throw new ArgumentException($"{method} is not a spatial method", nameof(method));
        int latentChannels = unetConfig.OutChannels;
        bool concatenate = method == ConditioningMethod.Concatenation;
        int expected = latentChannels + (concatenate ? LayoutChannels : 0);
        if (unetConfig.InChannels != expected)
            throw new ArgumentException($"{method}: in_channels must be {expected} (latents {latentChannels}" +
                (concatenate ? $" + layout {LayoutChannels})" : ")"), nameof(unetConfig));
        unet = new UNet2DConditionModel(unetConfig);
        if (method != ConditioningMethod.Concatenation)
        {
            var adapters = unetConfig.BlockOutChannels
                .Select(c => nn.Conv2d(LayoutChannels, c, 3, padding: 1)).ToArray();
            using (no_grad())
                foreach (var conv in adapters)
                {
                    conv.weight!.zero_();
                    conv.bias!.zero_();
                }
            layout_adapters = nn.ModuleList(adapters);
        }
        Method = method;
        RegisterComponents();
    }

    /// <summary>Slot class weights [B, 2, 10] → the map [B, 10, h, w]: the left half of the columns from slot 0,
    /// the right half from slot 1.</summary>
    public static Tensor Rasterise(Tensor slots, long height, long width)
    {
        long leftColumns = width / 2;
        var left = slots.select(1, 0)[.., .., TensorIndex.None, TensorIndex.None]
            .expand(-1, -1, height, leftColumns);                                          // [B, 10, h, w/2]
        var right = slots.select(1, 1)[.., .., TensorIndex.None, TensorIndex.None]
            .expand(-1, -1, height, width - leftColumns);
        return cat([left, right], 3);                                                      // [B, 10, h, w]
    }

    public override Tensor Forward(Tensor zt, Tensor t, Tensor slots)
    {
        var map = Rasterise(slots.to(zt.device).to_type(zt.dtype), zt.shape[2], zt.shape[3]);   // [B, 10, h, w]
        if (Method == ConditioningMethod.Concatenation) return unet.Forward(cat([zt, map], 1), t, null);
        Tensor At(Tensor h) => h.shape[2] == map.shape[2] && h.shape[3] == map.shape[3]
            ? map : nn.functional.adaptive_avg_pool2d(map, [h.shape[2], h.shape[3]]);      // the level's grid
        return unet.Forward(zt, t, null, adaptDownBlocks: Method == ConditioningMethod.Addition
            ? (level, h) => h + layout_adapters![level].call(At(h))                        // h + A_ℓ(m)
            : (level, h) => h * (2 * torch.sigmoid(layout_adapters![level].call(At(h))))); // h ⊙ 2σ(G_ℓ(m))
    }

    public override Tensor NullCondition => zeros(2, LayoutChannels);
}
