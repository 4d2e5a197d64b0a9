using static TorchSharp.torch;

namespace LdmLab.Diffusion.Schedulers;

/// <summary>
/// The prediction-type conversion, written once. With x_t = α x_0 + σ ε (variance preserving: α = √ᾱ_t,
/// σ = √(1 − ᾱ_t)) and v = α ε − σ x_0 (Salimans &amp; Ho 2022), a model output m is read as
/// <list type="bullet">
/// <item>epsilon: ε̂ = m, x̂_0 = (x_t − σ m)/α;</item>
/// <item>sample: x̂_0 = m, ε̂ = (x_t − α m)/σ;</item>
/// <item>v_prediction: x̂_0 = α x_t − σ m, ε̂ = α m + σ x_t.</item>
/// </list>
/// The σ-parameterised (k-diffusion) schedulers work on x = x_t/α and use <see cref="DataFromSigmaSpace"/>.
/// </summary>
public static class Predictions
{
    public static readonly string[] Names = ["epsilon", "sample", "v_prediction"];

    public static Tensor Data(string predictionType, Tensor modelOutput, Tensor sample, double alpha, double sigma) =>
        predictionType switch
        {
            "epsilon" => (sample - sigma * modelOutput) / alpha,
            "sample" => modelOutput,
            "v_prediction" => alpha * sample - sigma * modelOutput,
            var p => throw Unknown(p),
        };

    public static Tensor Noise(string predictionType, Tensor modelOutput, Tensor sample, double alpha, double sigma) =>
        predictionType switch
        {
            "epsilon" => modelOutput,
            "sample" => (sample - alpha * modelOutput) / sigma,
            "v_prediction" => alpha * modelOutput + sigma * sample,
            var p => throw Unknown(p),
        };

    /// <summary>
    /// x̂_0 for a sample x = x_t/α in σ-space (σ = σ_t/α): x − σ m (ε), m (x_0), or
    /// −σ/√(σ²+1) m + x/(σ²+1) (v), as diffusers' Euler, Heun and LMS compute it.
    /// </summary>
    public static Tensor DataFromSigmaSpace(string predictionType, Tensor modelOutput, Tensor sample, double sigma) =>
        predictionType switch
        {
            "epsilon" => sample - sigma * modelOutput,
            "sample" => modelOutput,
            "v_prediction" => modelOutput * (-sigma / Math.Sqrt(sigma * sigma + 1)) + sample / (sigma * sigma + 1),
            var p => throw Unknown(p),
        };

    static NotSupportedException Unknown(string p) =>
        new($"prediction_type '{p}' is not one of {string.Join(", ", Names)}");
}
