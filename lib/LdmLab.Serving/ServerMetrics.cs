using Prometheus;

namespace LdmLab.Serving;

/// <summary>
/// The server's Prometheus metrics, in a registry of its own (two servers in one process — the tests — count
/// apart). Served at /metrics in the text exposition format.
/// </summary>
public sealed class ServerMetrics
{
    public CollectorRegistry Registry { get; } = Prometheus.Metrics.NewCustomRegistry();

    public Gauge QueueDepth { get; }
    public Gauge JobsRunning { get; }
    public Histogram BatchSize { get; }
    public Histogram StepSeconds { get; }
    public Histogram RequestSeconds { get; }
    public Counter Images { get; }
    public Counter Failures { get; }
    public Counter Cancelled { get; }
    public Counter Rejected { get; }
    public Counter ResultCacheHits { get; }
    public Counter ResultCacheMisses { get; }
    public Counter Deduplicated { get; }
    public Counter TextCacheHits { get; }
    public Counter TextCacheMisses { get; }
    public Counter AdapterRequests { get; }

    public ServerMetrics(int maxBatch)
    {
        var f = Prometheus.Metrics.WithCustomRegistry(Registry);
        QueueDepth = f.CreateGauge("ldmlab_queue_depth", "Jobs waiting for the worker.");
        JobsRunning = f.CreateGauge("ldmlab_jobs_running", "Jobs in the batch the worker is denoising.");
        BatchSize = f.CreateHistogram("ldmlab_batch_size", "Requests per denoiser batch.",
            new HistogramConfiguration { Buckets = Histogram.LinearBuckets(1, 1, Math.Max(1, maxBatch)) });
        StepSeconds = f.CreateHistogram("ldmlab_step_seconds", "Seconds per denoising step of a batch.",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.001, 2, 16) });
        RequestSeconds = f.CreateHistogram("ldmlab_request_seconds",
            "Seconds from POST to a finished image (queue wait included).",
            new HistogramConfiguration { Buckets = Histogram.ExponentialBuckets(0.01, 2, 16) });
        Images = f.CreateCounter("ldmlab_images_total", "Images generated (cache hits not counted).");
        Failures = f.CreateCounter("ldmlab_job_failures_total", "Jobs that failed, by reason.",
            new CounterConfiguration { LabelNames = ["reason"] });
        Cancelled = f.CreateCounter("ldmlab_jobs_cancelled_total", "Jobs cancelled (DELETE, closed stream, shutdown).");
        Rejected = f.CreateCounter("ldmlab_requests_rejected_total", "Requests refused, by reason.",
            new CounterConfiguration { LabelNames = ["reason"] });
        ResultCacheHits = f.CreateCounter("ldmlab_result_cache_hits_total", "Requests answered from the result cache.");
        ResultCacheMisses = f.CreateCounter("ldmlab_result_cache_misses_total", "Requests that had to be generated.");
        Deduplicated = f.CreateCounter("ldmlab_requests_deduplicated_total",
            "Requests that shared the compute of an identical request in flight.");
        DotNetStats.Register(Registry);   // process_working_set_bytes (RSS on Linux), GC counts, CPU seconds
        TextCacheHits = f.CreateCounter("ldmlab_text_cache_hits_total", "Prompt encodings found in the LRU cache.");
        TextCacheMisses = f.CreateCounter("ldmlab_text_cache_misses_total", "Prompts the text encoder had to encode.");
        AdapterRequests = f.CreateCounter("ldmlab_adapter_requests_total", "Accepted requests naming each adapter.",
            new CounterConfiguration { LabelNames = ["adapter"] });
    }
}
