using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Pipelines;

/// <summary>
/// Attend-and-Excite (Chefer et al. 2023, arXiv 2301.13826; diffusers' StableDiffusionAttendAndExcitePipeline): every
/// subject token should own some patch of the image, so the loss is the most neglected subject's shortfall,
/// <code>
/// Â_b    = softmax_tokens(T · A_b[1 … End−1])      the words' maps re-normalised per position (T = 100; the start
///                                                  token, which soaks up most attention, and end/padding left out)
/// m_{b,s} = max_{x,y} G ∗ Â_{b,s}                   G: a 3×3 Gaussian, reflect-padded
/// L_b    = max_s (1 − m_{b,s})₊
/// </code>
/// and the update lowers it (<see cref="AttentionSteering"/>): a subject nobody attends to gets a place.
/// diffusers' kernel writes exp(−((x − μ)/(2σ))²) with σ = 0.5, a Gaussian of σ = 0.5·√2: the default
/// <see cref="Sigma"/> is that effective width.
/// </summary>
public sealed class AttendAndExcite(IReadOnlyList<SteeringPrompt> prompts) : AttentionSteering(prompts)
{
    /// <summary>T: how sharply the words' maps are re-normalised against each other (A&amp;E: 100).</summary>
    public double Temperature { get; init; } = 100;

    /// <summary>The smoothing Gaussian's σ in grid cells (3×3 kernel).</summary>
    public double Sigma { get; init; } = 0.5 * Math.Sqrt(2);

    public override Tensor Losses(Tensor maps)
    {
        var rows = new List<Tensor>();
        for (int b = 0; b < Prompts.Count; b++)
        {
            var prompt = Prompts[b];
            var words = maps[b].narrow(0, 1, prompt.End - 1);                                  // [End − 1, h, w]
            var renormalised = softmax(words * Temperature, 0);                                 // per position
            var shifted = prompt with
            {
                Targets = prompt.Targets.Select(t => t with
                {
                    TokenPositions = t.TokenPositions.Select(p => p - 1).ToArray(),
                }).ToList(),
            };
            var subjects = Smooth(TargetMaps(renormalised, shifted));                           // [S, h, w]
            var peaks = subjects.flatten(1).max(1).values;                                      // [S]
            rows.Add((1 - peaks).clamp_min(0).max());
        }
        return stack(rows.ToArray());                                                           // [B]
    }

    /// <summary>G ∗ maps for maps [S, h, w]: a normalised 3×3 Gaussian of <see cref="Sigma"/>, reflect padding.
    /// </summary>
    Tensor Smooth(Tensor maps)
    {
        var offsets = tensor(new float[] { -1, 0, 1 }, device: maps.device);
        var g = exp(-(offsets * offsets) / (2 * Sigma * Sigma));                                 // [3]
        var kernel = g.unsqueeze(1) * g.unsqueeze(0);                                           // [3, 3]
        kernel = (kernel / kernel.sum()).reshape(1, 1, 3, 3).to_type(maps.dtype);
        var padded = nn.functional.pad(maps.unsqueeze(1), [1, 1, 1, 1], PaddingModes.Reflect);  // [S, 1, h+2, w+2]
        return nn.functional.conv2d(padded, kernel).squeeze(1);                                  // [S, h, w]
    }
}
