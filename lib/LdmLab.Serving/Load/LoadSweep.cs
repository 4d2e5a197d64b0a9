namespace LdmLab.Serving.Load;

/// <summary>
/// Load runs against servers started here, in this process, on a free loopback port: one server per max batch
/// (made by <c>create</c>, e.g. <see cref="GenerationServer.Create"/> over one pipeline), and one run per client
/// count on it, in turn; each server is stopped before the next starts. The servers do not cache results
/// (<see cref="ServerOptions"/>), so that the one-by-one check after each run computes again.
/// </summary>
public static class LoadSweep
{
    /// <summary>What a load run's server is given: a free loopback port, no result cache, a queue that takes every
    /// client's request, no previews unless asked, and a short drain.</summary>
    public static ServeOptions ServerOptions(int maxBatch, ServeOptions? basis = null) => (basis ?? new ServeOptions())
        with
    {
        Host = "127.0.0.1",
        Port = 0,
        MaxBatch = maxBatch,
        ResultCacheCapacity = 0,
        QueueCapacity = 4096,
        DefaultPreviewEvery = 0,
        DrainTimeout = TimeSpan.FromSeconds(5),
    };

    /// <param name="create">A server with these options (not started).</param>
    /// <param name="progress">Called with each run's report as it ends.</param>
    public static async Task<List<LoadReport>> Run(Func<ServeOptions, GenerationServer> create,
        IEnumerable<int> maxBatches, IEnumerable<int> clients, LoadPlan plan, ServeOptions? basis = null,
        Action<LoadReport>? progress = null, CancellationToken ct = default)
    {
        plan.Validate();
        var reports = new List<LoadReport>();
        var counts = clients.ToList();
        foreach (int b in maxBatches)
        {
            await using var server = create(ServerOptions(b, basis));
            await server.StartAsync(ct);
            foreach (int c in counts)
            {
                var label = plan.Label == "load" ? $"b{b}×c{c}" : plan.Label;
                var report = await LoadDriver.Run(server.Address, plan with { Clients = c, Label = label }, b, ct);
                reports.Add(report);
                progress?.Invoke(report);
            }
        }
        return reports;
    }
}
