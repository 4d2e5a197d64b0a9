using System.Globalization;
using LdmLab.Runtime;
using LdmLab.Serving;
using Microsoft.Extensions.Logging;

namespace LdmLab.Cli;

/// <summary>
/// <c>ldmlab serve</c>: one model behind the generation server (<see cref="GenerationServer"/>): POST /v1/images,
/// job status, server-sent events, cancellation, a bounded queue with batching, /healthz, /readyz, /metrics and JSON
/// log lines with request ids on stdout. SIGTERM or Ctrl+C drains in-flight jobs, then exits. Argument errors name
/// the argument and exit 2.
/// </summary>
public static class ServeCommand
{
    public const string Usage = """
        usage: ldmlab serve --model DIR|REPO_ID|FILE [options]
          --model            anything ldmlab sample takes (a diffusers folder, a hub repo id, a one-file checkpoint,
                             data/checkpoints/fashion-text2img)
          --variant NAME     weights variant of a folder or repo id, e.g. fp16
          --host ADDRESS     where to listen (default 127.0.0.1: this machine only; * for every interface)
          --port N           (default 7860; 0: a free port, printed at start)
          --max-batch N      most same-shape requests per denoiser call (default 4)
          --queue N          most jobs waiting; more are refused with 429 + Retry-After (default 32)
          --batch-window-ms N  how long to wait for a batch to fill (default 20)
          --max-steps N      (default 150);  --default-steps N  (default 25)
          --preview-every N  a decoded preview every N steps unless a request says otherwise (default 5; 0: none)
          --max-body-kb N    largest request body (default 64)
          --cache N          finished images kept for identical requests (default 128; 0: none)
          --drain-seconds N  on SIGTERM, how long running and queued jobs get to finish (default 30)
          --api-key KEY      requests without "Authorization: Bearer KEY" get 401 (/healthz, /readyz, / stay open)
          --api-key-file F   the key from a file (its first line), kept out of the process list
          --cors-origin O    let pages from origin O (scheme://host[:port], or *) call the API; default: no CORS
          --adapter NAME=PATH  a LoRA .safetensors file (diffusers, PEFT or kohya keys) requests may name as
                             "adapters": [{"name": NAME, "scale": s}]; repeatable; checked against the model at start
          --no-self-check    skip the one-step image made before /readyz says ready
        """;

    public static int Run(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help")
        {
            Console.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        var values = new Dictionary<string, string>();
        bool selfCheck = true;
        var adapters = new Dictionary<string, string>(StringComparer.Ordinal);
        string[] known = ["--model", "--variant", "--host", "--port", "--max-batch", "--queue", "--batch-window-ms",
            "--max-steps", "--default-steps", "--preview-every", "--max-body-kb", "--cache", "--drain-seconds",
            "--api-key", "--api-key-file", "--cors-origin"];
        for (int i = 0; i < args.Length; i++)
        {
            if (args[i] == "--no-self-check") { selfCheck = false; continue; }
            if (args[i] == "--adapter")
            {
                if (i + 1 >= args.Length) throw new CliArgumentException("--adapter needs NAME=PATH");
                var spec = args[++i];
                int eq = spec.IndexOf('=');
                if (eq < 1 || eq == spec.Length - 1)
                    throw new CliArgumentException($"--adapter '{spec}': expected NAME=PATH");
                if (!adapters.TryAdd(spec[..eq], spec[(eq + 1)..]))
                    throw new CliArgumentException($"--adapter: the name '{spec[..eq]}' is given twice");
                continue;
            }
            if (!known.Contains(args[i]))
                throw new CliArgumentException($"{args[i]}: not an option of ldmlab serve\n\n{Usage}");
            if (i + 1 >= args.Length) throw new CliArgumentException($"{args[i]} needs a value");
            if (!values.TryAdd(args[i], args[++i])) throw new CliArgumentException($"{args[i - 1]} is given twice");
        }
        int Whole(string name, int fallback, int min, int max)
        {
            if (!values.TryGetValue(name, out var v)) return fallback;
            return int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n >= min
                                                                                                && n <= max
                ? n : throw new CliArgumentException($"{name} '{v}': expected a whole number in [{min}, {max}]");
        }
        var model = values.GetValueOrDefault("--model")
                    ?? throw new CliArgumentException($"--model is required\n\n{Usage}");
        int maxSteps = Whole("--max-steps", 150, 1, 10_000);
        var options = new ServeOptions
        {
            Host = values.GetValueOrDefault("--host") ?? "127.0.0.1", Port = Whole("--port", 7860, 0, 65535),
            MaxBatch = Whole("--max-batch", 4, 1, 256), QueueCapacity = Whole("--queue", 32, 1, 100_000),
            BatchWindow = TimeSpan.FromMilliseconds(Whole("--batch-window-ms", 20, 0, 10_000)),
            MaxSteps = maxSteps, DefaultSteps = Whole("--default-steps", Math.Min(25, maxSteps), 1, maxSteps),
            DefaultPreviewEvery = Whole("--preview-every", 5, 0, maxSteps),
            MaxBodyBytes = 1024L * Whole("--max-body-kb", 64, 1, 1 << 20),
            ResultCacheCapacity = Whole("--cache", 128, 0, 1_000_000),
            DrainTimeout = TimeSpan.FromSeconds(Whole("--drain-seconds", 30, 0, 3600)), SelfCheck = selfCheck,
        };
        if (values.ContainsKey("--api-key") && values.ContainsKey("--api-key-file"))
            throw new CliArgumentException("--api-key and --api-key-file: give one of them");
        options = options with
        {
            ApiKey = ApiKey(values),
            CorsOrigin = values.GetValueOrDefault("--cors-origin"),
            Adapters = adapters,
        };
        try { options.Validate(); }
        catch (ArgumentException e) { throw new CliArgumentException(e.Message); }
        TorchRuntime.Setup();
        Lab.SetThreads();
        var (pipeline, name, size) = SampleCommand.LoadModel(model, values.GetValueOrDefault("--variant"));
        GenerationServer server;
        try
        {
            // ASP.NET Core's own per-request lines are left out: the server logs each request once, with its id
            server = GenerationServer.Create(pipeline, options with { ModelName = name }, logs => logs
                .AddFilter("Microsoft.AspNetCore", LogLevel.Warning)
                .AddJsonConsole(o =>
                {
                    o.IncludeScopes = true;
                    o.TimestampFormat = "yyyy-MM-ddTHH:mm:ss.fffZ";
                    o.UseUtcTimestamp = true;
                }), size);
        }
        catch (ArgumentException e)
        {
            throw new CliArgumentException(e.Message);
        }
        server.StartAsync().GetAwaiter().GetResult();
        Console.Error.WriteLine($"ldmlab serve: {name} at {server.Address} (SIGTERM or Ctrl+C drains and stops)");
        server.WaitForShutdownAsync().GetAwaiter().GetResult();
        return 0;
    }

    static string? ApiKey(Dictionary<string, string> values)
    {
        if (values.TryGetValue("--api-key", out var key)) return key;
        if (!values.TryGetValue("--api-key-file", out var file)) return null;
        try { return File.ReadLines(file).FirstOrDefault()?.Trim() ?? ""; }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliArgumentException($"--api-key-file '{file}': cannot read it ({e.Message})");
        }
    }
}
