using static TorchSharp.torch;

namespace LdmLab.Pipelines;

/// <summary>
/// Layout-steered sampling (the idea of BoxDiff, Xie et al. 2023, and Directed Diffusion, Ma et al. 2023) with the
/// regions read off the prompt's own side words (<see cref="SteeringPrompt.FromWords"/>), not handed in: each
/// target's map should lie inside its region R,
/// <code>
/// a_{b,s}  = A_b[tokens of s]                     the raw map (probabilities, mean over the target's tokens)
/// r_{b,s}  = Σ a ⊙ R / Σ a                        the share of its mass inside its region
/// L_b      = mean_s (1 − r_{b,s})                  over the targets that have a region
///            + λ · A&amp;E's max_s (1 − max G ∗ Â_{b,s})₊   (optional: <see cref="ExciteWeight"/>, then ÷ (1 + λ))
/// </code>
/// lowered by the same latent updates as Attend-and-Excite (<see cref="AttentionSteering"/>). The inside-mass ratio
/// is scale-free, so a map that is weak everywhere can still score well: the optional excite term keeps each target
/// attended somewhere.
/// </summary>
public sealed class LayoutSteering : AttentionSteering
{
    readonly AttendAndExcite _excite;

    public LayoutSteering(IReadOnlyList<SteeringPrompt> prompts) : base(prompts)
    {
        if (prompts.Any(p => p.Targets.All(t => t.Region is null)))
            throw new ArgumentException("every prompt needs a target with a region (a side word in its clause)",
                nameof(prompts));
        _excite = new AttendAndExcite(prompts);
    }

    /// <summary>λ, the weight of the Attend-and-Excite term (0: the layout term alone).</summary>
    public double ExciteWeight { get; init; }

    public override Tensor Losses(Tensor maps)
    {
        var rows = new List<Tensor>();
        for (int b = 0; b < Prompts.Count; b++)
        {
            var prompt = Prompts[b];
            var placed = prompt with { Targets = prompt.Targets.Where(t => t.Region is not null).ToList() };
            var a = TargetMaps(maps[b], placed);                                                // [S, h, w]
            var regions = stack(placed.Targets.Select(t => Fit(t.Region!, a)).ToArray());         // [S, h, w]
            var inside = (a * regions).flatten(1).sum(1) / a.flatten(1).sum(1).clamp_min(1e-12);  // [S]
            rows.Add((1 - inside).mean());
        }
        var layout = stack(rows.ToArray());                                                       // [B]
        return ExciteWeight == 0 ? layout : (layout + ExciteWeight * _excite.Losses(maps)) / (1 + ExciteWeight);
    }

    /// <summary>A region [h', w'] on the maps' grid [S, h, w] (nearest when the sizes differ).</summary>
    static Tensor Fit(Tensor region, Tensor maps)
    {
        long h = maps.shape[1], w = maps.shape[2];
        var r = region.to(maps.device).to_type(maps.dtype);
        return r.shape[0] == h && r.shape[1] == w ? r
            : nn.functional.interpolate(r.reshape(1, 1, r.shape[0], r.shape[1]), [h, w])[0, 0];
    }
}
