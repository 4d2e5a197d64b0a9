using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Interop.Onnx;
using LdmLab.UNet;
using static TorchSharp.torch;

namespace LdmLab.ParityChecks;

/// <summary>
/// An exported ONNX graph in ONNX Runtime against the TorchSharp module it came from, on the same inputs: one
/// <see cref="ParityCheck"/> per output, named after the output and the input shape, with the largest absolute
/// difference (a shape mismatch is +∞). The models' tolerance is the fixtures' 1e-4.
/// </summary>
public static class OnnxCheck
{
    public const double Tolerance = 1e-4;

    /// <summary>out_sample for latents [B, c, H, W], timesteps (a scalar or [B]) and context [B, L, d].</summary>
    public static IReadOnlyList<ParityCheck> UNet(UNet2DConditionModel unet, OnnxSession session, Tensor sample,
        Tensor timestep, Tensor context, double tolerance = Tolerance)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var expected = unet.Forward(sample, timestep, context);
        var got = session.Run(new Dictionary<string, Tensor>
        {
            ["sample"] = sample, ["timestep"] = timestep, ["encoder_hidden_states"] = context,
        });
        return [Compare($"unet/out_sample {Shape(sample)}", got["out_sample"], expected, tolerance)];
    }

    /// <summary>latent_sample (the posterior mean) and latent_parameters ([μ, log σ²], compared with log σ² clamped
    /// as the posterior clamps it) for images [B, C, H, W].</summary>
    public static IReadOnlyList<ParityCheck> VaeEncoder(AutoencoderKL vae, OnnxSession session, Tensor images,
        double tolerance = Tolerance)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var posterior = vae.Encode(images);
        var got = session.Run(new Dictionary<string, Tensor> { ["sample"] = images });
        var parts = got["latent_parameters"].chunk(2, 1);                                         // μ, log σ²
        var name = $"vae_encoder {Shape(images)}";
        return
        [
            Compare($"{name}/latent_sample", got["latent_sample"], posterior.Mean, tolerance),
            Compare($"{name}/latent_parameters.mean", parts[0], posterior.Mean, tolerance),
            Compare($"{name}/latent_parameters.logvar", parts[1].clamp(-30.0, 20.0), posterior.LogVar, tolerance),
        ];
    }

    /// <summary>sample (the decoded image) for latents [B, c, h, w].</summary>
    public static IReadOnlyList<ParityCheck> VaeDecoder(AutoencoderKL vae, OnnxSession session, Tensor latents,
        double tolerance = Tolerance)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var expected = vae.Decode(latents);
        var got = session.Run(new Dictionary<string, Tensor> { ["latent_sample"] = latents });
        return [Compare($"vae_decoder/sample {Shape(latents)}", got["sample"], expected, tolerance)];
    }

    /// <summary>last_hidden_state and pooler_output for token ids [B, L].</summary>
    public static IReadOnlyList<ParityCheck> TextEncoder(ClipTextModel model, OnnxSession session, Tensor ids,
        double tolerance = Tolerance)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var expected = model.Forward(ids);
        var got = session.Run(new Dictionary<string, Tensor> { ["input_ids"] = ids });
        var name = $"text_encoder {Shape(ids)}";
        return
        [
            Compare($"{name}/last_hidden_state", got["last_hidden_state"], expected.LastHiddenState, tolerance),
            Compare($"{name}/pooler_output", got["pooler_output"], expected.PooledOutput, tolerance),
        ];
    }

    static ParityCheck Compare(string name, Tensor got, Tensor expected, double tolerance)
    {
        var note = got.shape.SequenceEqual(expected.shape) ? null
            : $"shape [{string.Join(", ", got.shape)}], expected [{string.Join(", ", expected.shape)}]";
        return new ParityCheck(name, Parity.MaxAbsDiff(got, expected), tolerance, note);
    }

    static string Shape(Tensor t) => $"[{string.Join("×", t.shape)}]";
}
