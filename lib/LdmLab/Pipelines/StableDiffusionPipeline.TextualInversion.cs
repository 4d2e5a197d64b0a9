using LdmLab.Adapters;
using LdmLab.Conditioning;

namespace LdmLab.Pipelines;

/// <summary>Textual inversion on a pipeline (diffusers' <c>load_textual_inversion</c>).</summary>
public sealed partial class StableDiffusionPipeline
{
    /// <summary>
    /// Loads a textual-inversion file (diffusers' learned_embeds or A1111/kohya emb_params, see
    /// <see cref="TextualInversion.Read"/>) and adds its token to this pipeline's tokenizer and text encoder: prompts
    /// may use it at once (a multi-vector token stands for all its vectors). <paramref name="token"/> overrides the
    /// file's own name. The base vocabulary is untouched; a token it already has is refused.
    /// </summary>
    public TextualInversion LoadTextualInversion(string path, string? token = null)
    {
        var inversion = TextualInversion.Read(path, token);
        Tokenizer = inversion.AddTo(Tokenizer, TextEncoder, path);
        TextEncodingCache?.Clear();
        return inversion;
    }

    /// <summary>Replaces the tokenizer (one that extends this one's vocabulary, e.g. after
    /// <see cref="TextualInversion.Create"/>); its entries must match the text encoder's token rows.</summary>
    public void UseTokenizer(ClipTokenizer tokenizer)
    {
        if (tokenizer.VocabSize != TextEncoder.TokenEmbedding.shape[0])
            throw new ArgumentException($"the tokenizer has {tokenizer.VocabSize} entries, the text encoder " +
                                        $"{TextEncoder.TokenEmbedding.shape[0]} token rows", nameof(tokenizer));
        Tokenizer = tokenizer;
        TextEncodingCache?.Clear();
    }
}
