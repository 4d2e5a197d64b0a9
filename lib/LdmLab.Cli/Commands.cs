using LdmLab.Runtime;

namespace LdmLab.Cli;

public static class Commands
{
    const string Usage = """
        ldmlab — latent diffusion lab

        usage:
          ldmlab info                      what the runtime bootstrap did, device, versions
          ldmlab parity DIR [DIR...]       compare against reference fixtures (schedulers, models); exit 0 iff all pass
          ldmlab bench [BenchmarkDotNet args]  micro-benchmarks (in process, short runs), e.g. --filter *Conv*
          ldmlab bench --json [--case A,B] [--threads 1,2] [--onednn on,off]
                                           training/sampling steps (3 warm-ups, median of 10) as JSON
          ldmlab bench --profile           one latent U-Net training step by phase and layer family
          ldmlab bench --half-accuracy [--samples N] [--steps S] [--dtypes bf16,bf16-vae32,f16,f16-vae32]
                                           the shipped text-to-image model in float32 and half precision:
                                           judged accuracy, time and image differences as JSON
          ldmlab sample --model DIR|REPO_ID|FILE --prompt TEXT [options]
                                           one image from a prompt (img2img, inpainting, LoRA; ldmlab sample --help)
          ldmlab serve --model DIR|REPO_ID|FILE [options]
                                           a generation server on 127.0.0.1:7860: HTTP API, queue, batching,
                                           server-sent events, /metrics (ldmlab serve --help; docs/serving.md)
          ldmlab serve-load --model M|--url U [--max-batch 1,4] [--clients 4,8] [--seconds T] [--kill F]
                            [--malformed F] [--out FILE.json]
                                           bounded load, soak and fault runs on loopback: p50/p95/p99, images/s,
                                           lost and duplicated answers, RSS (ldmlab serve-load --help)
          ldmlab export-onnx --model DIR|REPO_ID|FILE --out DIR
                                           the pipeline as an ONNX Stable Diffusion folder (ldmlab export-onnx --help)
          ldmlab notebooks [options]       execute notebooks in the real .NET Interactive kernel
              --dir DIR                    notebooks folder (default: notebooks)
              --out DIR                    executed notebooks + index.html (default: out)
              --only NAME[,NAME]           run only these notebooks (file names)
              --profile quick|full|gpu     LDMLAB_PROFILE for the kernels (default: quick)
              --timeout SECONDS            per-cell timeout (default: 900)
          ldmlab train fashion-vae|fashion-denoiser|fashion-classifier|fashion-vq|photo-autoencoders|
                       fashion-text2img|fashion-text2img-multires|fashion-modes|fashion-kl-sweep|
                       fashion-text2img-bidirectional|fashion-text2img-deep|fashion-text2img-side-first
                       [--out DIR] [--only NAME] [--method cross-attention|film|concatenation|addition|gating]
                                           train a recipe with its full-profile settings and write the shipped
                                           checkpoint (default data/checkpoints/NAME, see data/README.md);
                                           --method: fashion-text2img's conditioning (default cross-attention;
                                           the others write fashion-text2img-METHOD)
                       [--schedule scaled-linear|linear|cosine|snr-adaptive|zero-snr|all]
                                           fashion-denoiser's noise schedule (default scaled-linear; the others
                                           write fashion-denoiser-SCHEDULE, notebook 04's study)
          ldmlab checkpoint-soak DIR       diagnostics: save a 16 MB training checkpoint into DIR over and over until
                                           killed, printing each saved step (the crash-safety test kills it mid-save)
        """;

    public static int Run(string[] args)
    {
        try
        {
            if (args.Length == 0 || args[0] is "-h" or "--help" or "help") { Console.WriteLine(Usage); return args.Length == 0 ? 2 : 0; }
            // the one place the CLI reads LDMLAB_* settings; commands pass changes on through Lab.Settings
            try { Lab.Settings = RunSettings.FromEnvironment(); }
            catch (ArgumentException e) { return Fail(e.Message); }
            return args[0] switch
            {
                "info" => Info(),
                "notebooks" => NotebooksCommand.Run(args[1..]),
                "parity" => ParityCommand.Run(args[1..]),
                "bench" => BenchCommand.Run(args[1..]),
                "checkpoint-soak" => CheckpointSoak(args[1..]),
                "train" => TrainCommand.Run(args[1..]),
                "sample" => SampleCommand.Run(args[1..]),
                "export-onnx" => ExportOnnxCommand.Run(args[1..]),
                "serve" => ServeCommand.Run(args[1..]),
                "serve-load" => ServeLoadCommand.Run(args[1..]),
                _ => Fail($"unknown command '{args[0]}'\n\n{Usage}"),
            };
        }
        catch (CliArgumentException e) { return Fail(e.Message); }
        catch (TorchRuntimeException e) { return Fail(e.Message); }
    }

    /// <summary>Saves step 1, 2, 3, … of one checkpoint file until killed; each tensor holds its step, so a reader can
    /// tell a whole checkpoint from a mix of two.</summary>
    static int CheckpointSoak(string[] args)
    {
        if (args.Length != 1) throw new CliArgumentException("usage: ldmlab checkpoint-soak DIR");
        TorchRuntime.Setup();
        var path = Path.Combine(args[0], "soak-checkpoint.safetensors");
        Directory.CreateDirectory(args[0]);
        for (int step = 1; ; step++)
        {
            using var scope = TorchSharp.torch.NewDisposeScope();
            var tensors = Enumerable.Range(0, 4).ToDictionary(i => $"model.layer{i}.weight",
                i => TorchSharp.torch.full(1024, 1024, (float)step));                          // 4 × 4 MB
            Training.Checkpoint.Save(path, "ldmlab-soak-1", step, int.MaxValue, tensors);
            Console.Out.WriteLine(step);
            Console.Out.Flush();
        }
    }

    static int Info()
    {
        Console.WriteLine(Lab.Describe());
        return 0;
    }

    internal static int Fail(string message)
    {
        Console.Error.WriteLine("ldmlab: " + message);
        return 2;
    }
}

public sealed class CliArgumentException(string message) : Exception(message);
