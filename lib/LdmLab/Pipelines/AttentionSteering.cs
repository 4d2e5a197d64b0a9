using LdmLab.Conditioning;
using LdmLab.Diffusion.Schedulers;
using LdmLab.UNet;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Pipelines;

/// <summary>A word (or run of words) a steering step acts on: its token positions in the encoded prompt (the maps of
/// several tokens are averaged, as DAAM merges a word) and, for <see cref="LayoutSteering"/>, the region of the latent
/// grid [h, w] (1 inside) where its map should lie.</summary>
public sealed record AttentionTarget(int[] TokenPositions, Tensor? Region = null);

/// <summary>One prompt's targets, and the position of its end token: the words are positions 1 … End − 1.</summary>
public sealed record SteeringPrompt(int End, IReadOnlyList<AttentionTarget> Targets)
{
    /// <summary>
    /// The targets of <paramref name="prompt"/> given as words of it (e.g. its nouns, found by the caller): token
    /// positions from the tokenizer, regions from the prompt's own side words (<see cref="SideWords"/>) on the
    /// <paramref name="height"/> × <paramref name="width"/> latent grid.
    /// </summary>
    public static SteeringPrompt FromWords(ClipTokenizer tokenizer, string prompt, IReadOnlyList<PromptWord> targets,
        int height, int width)
    {
        var words = CrossAttentionRecorder.Words(tokenizer, prompt);
        if (words.Count == 0) throw new ArgumentException("an empty prompt has nothing to steer", nameof(prompt));
        var regions = SideWords.Regions(words, targets, height, width);
        return new SteeringPrompt(words[^1].TokenPositions[^1] + 1,
            targets.Select((t, i) => new AttentionTarget(t.TokenPositions, regions[i])).ToList());
    }
}

/// <summary>
/// A sampler-side step on the latents that moves chosen tokens' cross-attention maps (Attend-and-Excite, Chefer et al.
/// 2023, and its layout-steered kin): before the ordinary denoising step at step i,
/// <code>
/// A(z)        = the conditional pass's cross-attention probabilities, mean over heads and the chosen layers,
///               each layer's map upsampled (bilinear) to the latent grid           [B, tokens, h, w]
/// L_b(z)      = a per-prompt loss of A in [0, 1]                                   (<see cref="Losses"/>)
/// z           ← z − α_i ∇_z Σ_b L_b(z),   α_i = s · √(1 − ½ · i / (n − 1))        (A&amp;E's linspace(1, ½) schedule)
/// </code>
/// at the first <see cref="AlterFraction"/> of the n steps; at the refinement steps (<see cref="Refinements"/>) the
/// update repeats, per prompt, until L_b ≤ 1 − threshold or <see cref="MaxRefinementSteps"/> passes (A&amp;E's
/// iterative refinement). Each pass is one U-Net forward and backward on the conditional rows alone (no
/// guidance batch), with gradients on inside the sampler's no-grad loop; the model's weights are untouched and the
/// rows are independent (the gradient of the sum is each prompt's own). A recorder on the model is paused during
/// these passes, so the recorded trajectory holds the sampling passes only.
/// </summary>
public abstract class AttentionSteering
{
    protected AttentionSteering(IReadOnlyList<SteeringPrompt> prompts)
    {
        if (prompts.Count == 0) throw new ArgumentException("give one steering prompt per row", nameof(prompts));
        if (prompts.Any(p => p.Targets.Count == 0))
            throw new ArgumentException("every steering prompt needs at least one target", nameof(prompts));
        Prompts = prompts;
    }

    /// <summary>One per condition row, in order.</summary>
    public IReadOnlyList<SteeringPrompt> Prompts { get; }

    /// <summary>s in α_i = s · √(1 − ½ · i / (n − 1)); A&amp;E's default is 20 (for SD's 64×64 latents).</summary>
    public double ScaleFactor { get; init; } = 20;

    /// <summary>The share of the steps (from the first) that get an update; A&amp;E: 25 of 50.</summary>
    public double AlterFraction { get; init; } = 0.5;

    /// <summary>(share of the steps, threshold): at step round(share · n) refine until L ≤ 1 − threshold; A&amp;E:
    /// steps 0, 10, 20 of 50 with 0.05, 0.5, 0.8.</summary>
    public IReadOnlyList<(double At, double Threshold)> Refinements { get; init; } =
        [(0.0, 0.05), (0.2, 0.5), (0.4, 0.8)];

    /// <summary>At most this many refinement passes per refinement step (A&amp;E: 20).</summary>
    public int MaxRefinementSteps { get; init; } = 20;

    /// <summary>Which cross-attention layers' maps (by state-dict name) enter A; null: all.</summary>
    public Func<string, bool>? Layers { get; init; }

    /// <summary>Forward-and-backward passes run so far (the cost beyond plain sampling).</summary>
    public int Passes { get; private set; }

    /// <summary>The per-prompt loss [B] of the last pass (on the CPU), null before the first.</summary>
    public float[]? LastLosses { get; private set; }

    /// <summary>The loss per prompt, each in [0, 1], from maps [B, tokens, h, w] (probabilities over tokens at every
    /// position; differentiable).</summary>
    public abstract Tensor Losses(Tensor maps);

    /// <summary>The step size α_i of step <paramref name="index"/> of <paramref name="steps"/>.</summary>
    public double StepSize(int index, int steps) =>
        ScaleFactor * Math.Sqrt(1 - 0.5 * (steps > 1 ? (double)index / (steps - 1) : 0));

    /// <summary>
    /// The latents for step <paramref name="index"/> after this step's updates (the input itself when the step gets
    /// none). <paramref name="conditions"/> are the conditional rows [B, …]; <paramref name="recorder"/>, if any, is
    /// paused during the passes.
    /// </summary>
    public Tensor Step(ConditionalDenoiser denoiser, Scheduler scheduler, Tensor x, int index, Tensor conditions,
        CrossAttentionRecorder? recorder = null)
    {
        if (x.shape[0] != Prompts.Count)
            throw new ArgumentException($"{x.shape[0]} latents for {Prompts.Count} steering prompts", nameof(x));
        int n = scheduler.Timesteps.Length;
        bool alter = index < (int)Math.Round(AlterFraction * n);
        double? threshold = Refinements.Where(r => (int)Math.Round(r.At * n) == index)
            .Select(r => (double?)r.Threshold).FirstOrDefault();
        if (!alter && threshold is null) return x;
        double t = scheduler.Timesteps[index], alpha = StepSize(index, n);
        var (losses, grad) = LossAndGradient(denoiser, scheduler, x, t, conditions, recorder);
        if (threshold is double tau)
        {
            var active = losses.gt(1 - tau);                                                    // [B] bool
            for (int k = 0; k < MaxRefinementSteps && active.any().item<bool>(); k++)
            {
                x = x - alpha * grad * active.reshape(-1, 1, 1, 1).to_type(grad.dtype);
                (losses, grad) = LossAndGradient(denoiser, scheduler, x, t, conditions, recorder);
                active = active.logical_and(losses.gt(1 - tau));
            }
        }
        if (alter) x = x - alpha * grad * losses.gt(0).reshape(-1, 1, 1, 1).to_type(grad.dtype);
        return x;
    }

    /// <summary>The per-prompt loss [B] at latents <paramref name="x"/> and step <paramref name="index"/> (one pass,
    /// no update): what a step would lower.</summary>
    public float[] Evaluate(ConditionalDenoiser denoiser, Scheduler scheduler, Tensor x, int index, Tensor conditions)
    {
        using var scope = NewDisposeScope();
        LossAndGradient(denoiser, scheduler, x, scheduler.Timesteps[index], conditions, null);
        return LastLosses!;
    }

    /// <summary>One conditional pass with gradients on: the per-prompt losses [B] and ∇_z Σ_b L_b [B, c, h, w].
    /// </summary>
    (Tensor losses, Tensor grad) LossAndGradient(ConditionalDenoiser denoiser, Scheduler scheduler, Tensor x,
        double t, Tensor conditions, CrossAttentionRecorder? recorder)
    {
        int height = (int)x.shape[2], width = (int)x.shape[3];
        var maps = new List<Tensor>();                                         // per layer [B, tokens, h, w]
        try
        {
            using var scope = NewDisposeScope();
            using var grads = enable_grad();
            var z = x.detach().requires_grad_(true);
            if (recorder is not null) recorder.Paused = true;
            using (denoiser.ObserveCrossAttention((layer, p) =>
                   {
                       if (Layers is { } which && !which(layer)) return;
                       maps.Add(ToGrid(p, height, width).DetachFromDisposeScope());
                   }))
                denoiser.Forward(scheduler.ScaleModelInput(z, t), tensor((float)t, device: z.device), conditions);
            if (maps.Count == 0)
                throw new InvalidOperationException("the denoiser has no cross-attention layer that the steering's " +
                                                    "Layers selects: nothing to steer");
            var losses = Losses(stack(maps).mean([0]));                                          // [B]
            var grad = autograd.grad([losses.sum()], [z])[0];                                    // [B, c, h, w]
            Passes++;
            LastLosses = losses.detach().cpu().data<float>().ToArray();
            return (losses.detach().MoveToOuterDisposeScope(), grad.MoveToOuterDisposeScope());
        }
        finally
        {
            if (recorder is not null) recorder.Paused = false;
            foreach (var m in maps) m.Dispose();
        }
    }

    /// <summary>A layer's probabilities [B, heads, h_ℓ·w_ℓ, tokens] → the mean over heads on the latent grid
    /// [B, tokens, h, w] (bilinear, as DAAM upsamples).</summary>
    static Tensor ToGrid(Tensor p, int height, int width)
    {
        var (h, w) = CrossAttentionRecorder.LayerGrid(p.shape[2], height, width);
        var perToken = p.mean([1]).reshape(p.shape[0], h, w, p.shape[3]).permute(0, 3, 1, 2);  // [B, tokens, h_ℓ, w_ℓ]
        return h == height && w == width ? perToken.contiguous()
            : nn.functional.interpolate(perToken, [height, width], mode: InterpolationMode.Bilinear,
                align_corners: false);                                                           // [B, tokens, h, w]
    }

    /// <summary>Map of each of a prompt's targets: the mean over its tokens' maps, [targets, h, w], from one prompt's
    /// maps [tokens, h, w].</summary>
    protected static Tensor TargetMaps(Tensor maps, SteeringPrompt prompt) =>
        stack(prompt.Targets.Select(target =>
            maps.index_select(0, tensor(target.TokenPositions.Select(p => (long)p).ToArray(), device: maps.device))
                .mean([0])).ToArray());
}
