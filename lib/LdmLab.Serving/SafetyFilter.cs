using static TorchSharp.torch;

namespace LdmLab.Serving;

/// <summary>
/// A pluggable safety check (off unless <see cref="ServeOptions.Safety"/> is set), the place for a prompt block list
/// or an image classifier such as diffusers' StableDiffusionSafetyChecker. Each method returns null to let the text
/// or image through, or the reason it was refused; the server reports the reason and never the refused content.
/// <list type="bullet">
/// <item>a refused prompt or negative prompt → 400 naming the field, before the job is queued;</item>
/// <item>a refused final image → the job fails (<c>failed</c>, reason "safety"; nothing is cached);</item>
/// <item>a refused preview is not sent (the job goes on; its final image is checked again).</item>
/// </list>
/// Both run on the server's threads: <see cref="CheckPrompt"/> on a request thread, <see cref="CheckImage"/> on the
/// worker between denoising steps, so a slow check slows every batch.
/// </summary>
public interface ISafetyFilter
{
    /// <param name="field">"prompt" or "negative_prompt"</param>
    /// <param name="text">the field's text as the request gave it</param>
    string? CheckPrompt(string field, string text);

    /// <param name="image">[3, H, W] in [0, 1], on the model's device</param>
    /// <param name="request">the request that made it</param>
    string? CheckImage(Tensor image, ImageRequest request);
}
