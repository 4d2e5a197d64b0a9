using System.Diagnostics;
using LdmLab.Pipelines;
using Microsoft.Extensions.Logging;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.Formats.Png;
using static TorchSharp.torch;

namespace LdmLab.Serving;

/// <summary>
/// The one thread that runs the model: takes a batch of same-shape jobs from the <see cref="JobQueue"/>, denoises
/// them in one call per step (progress and decoded previews to each job's event stream), checks each row's latents
/// and finishes each job with its PNG. Faults stay with their job: a batch that throws is rerun job by job, so only
/// the job that throws alone fails; a row whose latents are not finite fails that job only. Cancelled jobs drop out
/// of their batch at once; a batch whose jobs are all cancelled stops at the next step, and the worker takes the
/// next batch.
/// </summary>
public sealed class GenerationWorker(IBatchGenerator generator, JobQueue queue, ResultCache cache,
    ServerMetrics metrics, ServeOptions options, ILogger logger)
{
    double _secondsPerBatch = 1;                         // running mean of a batch's wall time (for Retry-After)
    (long Hits, long Misses) _textCache;

    /// <summary>Seconds a client should wait before retrying when the queue is full: the batches ahead of it times
    /// the recent time per batch.</summary>
    public int RetryAfterSeconds =>
        (int)Math.Clamp(Math.Ceiling(_secondsPerBatch * (queue.Count / (double)options.MaxBatch + 1)), 1, 3600);

    /// <summary>Runs the loop on a thread of its own until <paramref name="stop"/> is cancelled.</summary>
    public Task Start(CancellationToken stop) =>
        Task.Factory.StartNew(() => Loop(stop), stop, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    void Loop(CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            List<Job> taken;
            try { taken = queue.TakeBatchAsync(options.MaxBatch, options.BatchWindow, stop).GetAwaiter().GetResult(); }
            catch (OperationCanceledException) { break; }
            metrics.QueueDepth.Set(queue.Count);
            var waiting = taken.Where(j => j.State == JobState.Queued).ToList();
            var jobs = waiting.Where(j => j.TryStart(waiting.Count)).ToList();
            if (jobs.Count == 0) continue;
            var clock = Stopwatch.StartNew();
            metrics.BatchSize.Observe(jobs.Count);
            metrics.JobsRunning.Set(jobs.Count);
            Execute(jobs);
            metrics.JobsRunning.Set(0);
            _secondsPerBatch = 0.8 * _secondsPerBatch + 0.2 * clock.Elapsed.TotalSeconds;
        }
    }

    void Execute(List<Job> jobs)
    {
        try
        {
            RunBatch(jobs);
        }
        catch (OperationCanceledException)
        {
            logger.LogInformation("batch of {BatchSize} stopped: every job in it was cancelled", jobs.Count);
        }
        catch (Exception e) when (jobs.Count > 1)
        {
            logger.LogWarning(e, "batch of {BatchSize} failed; running its jobs one by one", jobs.Count);
            foreach (var job in jobs.Where(j => !j.IsFinished)) Execute([job]);
        }
        catch (Exception e)
        {
            var job = jobs[0];
            using var _ = logger.BeginScope(Scope(job));
            logger.LogError(e, "job failed");
            Fail(job, "exception", $"the model failed: {e.GetType().Name}: {e.Message}");
        }
    }

    void RunBatch(List<Job> jobs)
    {
        using var scope = NewDisposeScope();
        var stepClock = Stopwatch.StartNew();
        var output = generator.Generate(jobs.Select(j => j.Request).ToList(), step =>
        {
            metrics.StepSeconds.Observe(stepClock.Elapsed.TotalSeconds);
            stepClock.Restart();
            if (jobs.All(j => j.IsFinished)) throw new OperationCanceledException("every job was cancelled");
            foreach (var job in jobs) job.Progress(step.Step, step.Steps);
            var rows = Enumerable.Range(0, jobs.Count).Where(i => !jobs[i].IsFinished && jobs[i].Request.PreviewEvery
                is > 0 and var k && step.Step % k == 0 && step.Step < step.Steps).ToList();
            if (rows.Count == 0) return;
            using var previews = step.Previews();                                   // [B, 3, H, W] in [0, 1]
            foreach (int i in rows)
                if (options.Safety?.CheckImage(previews[i], jobs[i].Request) is null)
                    jobs[i].Preview(step.Step, Png(previews[i], null));
        });
        CountTextCache();
        for (int i = 0; i < jobs.Count; i++)
        {
            var job = jobs[i];
            if (job.IsFinished) continue;
            using var _ = logger.BeginScope(Scope(job));
            if (!output.Latents[i].isfinite().all().item<bool>())
            {
                logger.LogError("job failed: its latents hold NaN or infinity");
                Fail(job, "nan_latents", "the latents hold NaN or infinity (the model diverged)");
                continue;
            }
            if (options.Safety?.CheckImage(output.Images[i], job.Request) is { } reason)
            {
                logger.LogWarning("job failed: the safety filter refused its image ({Reason})", reason);
                Fail(job, "safety", $"the image was withheld by the safety filter: {reason}");
                continue;
            }
            var png = Png(output.Images[i], job.Request);
            cache.Add(job.CacheKey, png);
            if (output.Attention is { } attention)
                job.SetAttentionMaps(attention[i].Select(w => (w.Word, Png(w.Map.unsqueeze(0), null))).ToList());
            // counted before the job finishes, so that whoever waits for it sees the metrics moved
            metrics.Images.Inc();
            metrics.RequestSeconds.Observe((DateTimeOffset.UtcNow - job.CreatedAt).TotalSeconds);
            if (job.Succeed(png)) logger.LogInformation("job succeeded in a batch of {BatchSize}", job.BatchSize);
        }
    }

    void Fail(Job job, string reason, string error)
    {
        if (job.IsFinished) return;
        metrics.Failures.WithLabels(reason).Inc();
        job.Fail(error);
    }

    /// <summary>[3, H, W] (or [1, H, W]: grey) in [0, 1] → PNG bytes; a final image carries its parameters in
    /// A1111's "parameters" chunk (as <c>ldmlab sample</c> writes them).</summary>
    byte[] Png(Tensor image, ImageRequest? request)
    {
        using var picture = Viz.Images.ToImage(image, lo: 0, hi: 1);
        if (request is not null)
        {
            var text = new GenerationParameters(request.Prompt, request.NegativePrompt.Length == 0 ? null
                : request.NegativePrompt,
            [
                ("Steps", request.Steps.ToString(System.Globalization.CultureInfo.InvariantCulture)),
                ("Sampler", request.Scheduler), ("CFG scale", GenerationParameters.Number(request.Guidance)),
                ("Seed", request.Seed.ToString(System.Globalization.CultureInfo.InvariantCulture)),
                ("Size", $"{request.Width}x{request.Height}"), ("Model", generator.Model.Name),
                ("Version", "LdmLab"),
                .. request.Adapters.Count == 0 ? [] : new[] { ("Adapters", string.Join(" ",
                    request.Adapters.Select(a => $"{a.Name}:{GenerationParameters.Number(a.Scale)}"))) },
            ]);
            picture.Metadata.GetPngMetadata().TextData.Add(new PngTextData("parameters", text.ToString(), "", ""));
        }
        using var bytes = new MemoryStream();
        picture.SaveAsPng(bytes);
        return bytes.ToArray();
    }

    void CountTextCache()
    {
        var (hits, misses) = generator.TextCacheCounts;
        metrics.TextCacheHits.Inc(Math.Max(0, hits - _textCache.Hits));
        metrics.TextCacheMisses.Inc(Math.Max(0, misses - _textCache.Misses));
        _textCache = (hits, misses);
    }

    internal static Dictionary<string, object> Scope(Job job) =>
        new() { ["JobId"] = job.Id, ["RequestId"] = job.RequestId };
}
