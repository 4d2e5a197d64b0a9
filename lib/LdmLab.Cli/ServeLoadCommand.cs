using System.Globalization;
using LdmLab.Runtime;
using LdmLab.Serving;
using LdmLab.Serving.Load;

namespace LdmLab.Cli;

/// <summary>
/// <c>ldmlab serve-load</c>: bounded load, soak and fault runs (<see cref="LoadDriver"/>) against servers it starts
/// in this process on loopback (one per <c>--max-batch</c>, one run per <c>--clients</c>), or against a running
/// server on loopback (<c>--url</c>). Prints a markdown table; <c>--out</c> writes the JSON (and the table beside
/// it). Exit 1 when a valid request was lost or duplicated, a malformed one got the wrong answer, or the worker
/// was not free afterwards.
/// </summary>
public static class ServeLoadCommand
{
    public const string Usage = """
        usage: ldmlab serve-load --model DIR|REPO_ID|FILE [options]     servers started here, one per max batch
               ldmlab serve-load --url http://127.0.0.1:PORT [options]  a running server (loopback only)
          --max-batch A,B,…  servers' max batch, one server each (default 4; not with --url)
          --clients A,B,…    concurrent clients, one run each (default 8)
          --seconds T        no request starts after T seconds (default 20)
          --max-requests N   most requests per run (default 10000)
          --timeout S        one request's deadline in seconds (default 120)
          --steps N          denoising steps per request (default 10);  --guidance W  (default 5)
          --prompt TEXT      (default "a bag on the left and a sneaker on the right")
          --kill F           share of requests dropped mid-generation: stream closed or DELETE (default 0)
          --malformed F      share of malformed requests, each expecting its 400/413/415 naming the field (default 0)
          --verify K         succeeded requests sent again one at a time, bytes compared (default 4)
          --label NAME       the runs' name in the table
          --out FILE.json    the reports as JSON; the markdown table goes to FILE.md
        """;

    public static int Run(string[] args)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help")
        {
            Console.WriteLine(Usage);
            return args.Length == 0 ? 2 : 0;
        }
        string[] known = ["--model", "--url", "--max-batch", "--clients", "--seconds", "--max-requests", "--timeout",
            "--steps", "--guidance", "--prompt", "--kill", "--malformed", "--verify", "--label", "--out"];
        var values = new Dictionary<string, string>();
        for (int i = 0; i < args.Length; i++)
        {
            if (!known.Contains(args[i]))
                throw new CliArgumentException($"{args[i]}: not an option of ldmlab serve-load\n\n{Usage}");
            if (i + 1 >= args.Length) throw new CliArgumentException($"{args[i]} needs a value");
            if (!values.TryAdd(args[i], args[++i])) throw new CliArgumentException($"{args[i - 1]} is given twice");
        }
        int Whole(string name, int fallback, int min, int max) =>
            !values.TryGetValue(name, out var v) ? fallback
            : int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n >= min && n <= max
                ? n : throw new CliArgumentException($"{name} '{v}': expected a whole number in [{min}, {max}]");
        double Real(string name, double fallback, double min, double max) =>
            !values.TryGetValue(name, out var v) ? fallback
            : double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out var x) && x >= min && x <= max
                ? x : throw new CliArgumentException($"{name} '{v}': expected a number in [{min}, {max}]");
        List<int> List(string name, string fallback, int max) =>
            (values.GetValueOrDefault(name) ?? fallback).Split(',').Select(p =>
                int.TryParse(p, NumberStyles.Integer, CultureInfo.InvariantCulture, out var n) && n >= 1 && n <= max
                    ? n : throw new CliArgumentException($"{name} '{values[name]}': expected whole numbers in " +
                                                         $"[1, {max}], comma-separated")).ToList();

        bool hasModel = values.TryGetValue("--model", out var model), hasUrl = values.TryGetValue("--url", out var url);
        if (hasModel == hasUrl) throw new CliArgumentException($"give one of --model and --url\n\n{Usage}");
        if (hasUrl && values.ContainsKey("--max-batch"))
            throw new CliArgumentException("--max-batch: only with --model (a running server has its own)");
        var plan = new LoadPlan
        {
            Label = values.GetValueOrDefault("--label") ?? "load",
            Duration = TimeSpan.FromSeconds(Whole("--seconds", 20, 1, 86_400)),
            MaxRequests = Whole("--max-requests", 10_000, 1, 10_000_000),
            RequestTimeout = TimeSpan.FromSeconds(Whole("--timeout", 120, 1, 3600)),
            Steps = Whole("--steps", 10, 1, 1000), Guidance = Real("--guidance", 5, 0, 30),
            Prompt = values.GetValueOrDefault("--prompt") ?? new LoadPlan().Prompt,
            KillFraction = Real("--kill", 0, 0, 1), MalformedFraction = Real("--malformed", 0, 0, 1),
            VerifySample = Whole("--verify", 4, 0, 1000),
        };
        var clients = List("--clients", "8", 1024);
        try { plan.Validate(); }
        catch (ArgumentException e) { throw new CliArgumentException(e.Message); }

        var reports = new List<LoadReport>();
        void Print(LoadReport r) => Console.Error.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{r.Label}: {r.Succeeded}/{r.Valid} valid ok, lost {r.Lost}, duplicated {r.Duplicated}, " +
            $"{r.ImagesPerSecond:F2} images/s, p50 {r.P50:F2} s, p95 {r.P95:F2} s, RSS {r.Rss.FirstMb:F0} → " +
            $"{r.Rss.LastMb:F0} MB"));
        if (hasUrl)
        {
            Uri target;
            try
            {
                target = new Uri(url!, UriKind.Absolute);
                LoadDriver.RequireLoopback(target);
            }
            catch (Exception e) when (e is UriFormatException or ArgumentException)
            {
                throw new CliArgumentException($"--url '{url}': {e.Message}");
            }
            foreach (int c in clients)
            {
                var r = LoadDriver.Run(target, plan with
                {
                    Clients = c,
                    Label = plan.Label == "load" ? $"c{c}"
                    : plan.Label
                }).GetAwaiter().GetResult();
                Print(r);
                reports.Add(r);
            }
        }
        else
        {
            var batches = List("--max-batch", "4", 256);
            TorchRuntime.Setup();
            Lab.SetThreads();
            var (pipeline, name, size) = SampleCommand.LoadModel(model!, null);
            reports = LoadSweep.Run(o => GenerationServer.Create(pipeline, o with { ModelName = name }, null, size),
                batches, clients, plan, progress: Print).GetAwaiter().GetResult();
        }
        var table = LoadReport.Markdown(reports);
        Console.WriteLine(table);
        if (values.TryGetValue("--out", out var output))
        {
            LdmLab.Data.AtomicFile.WriteAllText(output, LoadReport.Json(reports));
            LdmLab.Data.AtomicFile.WriteAllText(Path.ChangeExtension(output, ".md"), table);
        }
        bool ok = reports.All(r => r.Lost == 0 && r.Duplicated == 0 && r.MalformedAsExpected == r.Malformed
                                   && r.WorkerFreed && r.KilledOther == 0);
        if (!ok) Console.Error.WriteLine("ldmlab serve-load: a run lost, duplicated or mis-answered requests, or " +
                                         "left the worker busy (see the table)");
        return ok ? 0 : 1;
    }
}
