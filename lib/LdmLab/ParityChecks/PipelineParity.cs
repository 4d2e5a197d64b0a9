using System.Text.Json.Nodes;
using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Pipelines;
using LdmLab.UNet;
using static TorchSharp.torch;

using LdmLab.Interop;

namespace LdmLab.ParityChecks;

/// <summary>
/// End-to-end pipeline fixtures (tiny-pipeline format): info.json names the component folders, the prompts, the
/// scheduler and the call's settings; tensors.safetensors holds ids, embeddings, the latents after every step and the
/// decoded image. The pipeline is assembled from info.json alone and run from the recorded initial latents.
/// </summary>
public static class PipelineParity
{
    public const double LatentTolerance = 1e-3, ImageTolerance = 1e-4;

    public static IReadOnlyList<ParityCheck> Check(string dir)
    {
        using var scope = NewDisposeScope();
        var infoPath = Path.Combine(dir, "info.json");
        var info = PyJson.ParseFile(infoPath) as JsonObject ?? throw new ParityFormatException($"{infoPath}: not a JSON object");
        if ((string?)info["pipeline"] != "StableDiffusionPipeline")
            throw new ParityFormatException($"{infoPath}: pipeline '{info["pipeline"]}' is not StableDiffusionPipeline");
        var components = info["components"] as JsonObject ?? throw new ParityFormatException($"{infoPath}: no 'components'");
        string Part(string name) => Path.GetFullPath(Path.Combine(dir, (string?)components[name]
            ?? throw new ParityFormatException($"{infoPath}: components.{name} is missing")));
        var scheduler = info["scheduler"] as JsonObject ?? throw new ParityFormatException($"{infoPath}: no 'scheduler'");
        var vae = AutoencoderKL.FromPretrained(Part("vae"));
        vae.eval();
        var unet = UNet2DConditionModel.FromPretrained(Part("unet"));
        unet.eval();
        var pipe = new StableDiffusionPipeline(ClipTokenizer.FromFolder(Part("tokenizer")), ClipTextModel.FromPretrained(Part("text_encoder")),
            unet, vae, (string)scheduler["class"]!, scheduler["config"]!.AsObject()).To(Parity.Device);
        if (info["vae_scaling_factor"] is JsonNode sf && Math.Abs((double)sf - vae.Config.ScalingFactor) > 1e-9)
            throw new ParityFormatException($"{infoPath}: vae_scaling_factor {sf} differs from the VAE config's {vae.Config.ScalingFactor}");
        var r = SafeTensors.Load(Path.Combine(dir, "tensors.safetensors"));
        var name = Path.GetFileName(Path.GetFullPath(dir).TrimEnd(Path.DirectorySeparatorChar));
        var checks = new List<ParityCheck>();
        string prompt = (string?)info["prompt"] ?? "", negative = (string?)info["negative_prompt"] ?? "";

        void Ids(string key, string text)
        {
            if (!r.TryGetValue(key, out var reference)) return;
            var ours = tensor(pipe.Tokenizer.Encode(text).Ids).unsqueeze(0);
            checks.Add(new ParityCheck($"{name}/{key}", Parity.MaxAbsDiff(ours, reference), 0));
        }
        Ids("prompt_input_ids", prompt);
        Ids("negative_input_ids", negative);
        var embeds = pipe.EncodePrompts([prompt]);
        var negativeEmbeds = pipe.EncodePrompts([negative]);
        Parity.Compare(checks, $"{name}/prompt_embeds", embeds, r, "prompt_embeds", ModelParity.Tolerance);
        Parity.Compare(checks, $"{name}/negative_prompt_embeds", negativeEmbeds, r, "negative_prompt_embeds", ModelParity.Tolerance);

        var perStep = new List<Tensor>();
        var output = pipe.Generate(new GenerationOptions
        {
            Prompts = [prompt], NegativePrompts = [negative], Steps = (int)info["num_inference_steps"]!,
            GuidanceScale = (double)info["guidance_scale"]!, Eta = (double?)info["eta"] ?? 0,
            Height = (int?)info["height"], Width = (int?)info["width"], Latents = r["latents_init"],
            Callback = s => perStep.Add(s.Latents.clone().DetachFromDisposeScope()),
        });
        var timesteps = pipe.NewScheduler();
        timesteps.SetTimesteps((int)info["num_inference_steps"]!);
        if (r.TryGetValue("timesteps", out var refT))
            checks.Add(new ParityCheck($"{name}/timesteps", Parity.MaxAbsDiff(tensor(timesteps.Timesteps), refT), 0));
        if (r.TryGetValue("latents_per_step", out var refSteps))
            checks.Add(new ParityCheck($"{name}/latents_per_step", Parity.MaxAbsDiff(stack(perStep), refSteps),
                LatentTolerance, $"{perStep.Count} steps"));
        Parity.Compare(checks, $"{name}/latents_final", output.Latents, r, "latents_final", LatentTolerance);
        using (no_grad())
        {
            Parity.Compare(checks, $"{name}/vae_decode", vae.Decode(output.Latents / vae.Config.ScalingFactor), r, "vae_decode", LatentTolerance);
            if (r.TryGetValue("latents_final", out var refFinal))
                Parity.Compare(checks, $"{name}/vae_decode_of_reference_latents", vae.Decode(refFinal / vae.Config.ScalingFactor), r, "vae_decode",
                    ModelParity.Tolerance);
        }
        Parity.Compare(checks, $"{name}/image", output.Images, r, "image", ImageTolerance);
        foreach (var t in perStep) t.Dispose();
        return checks;
    }
}
