using System.Collections.Concurrent;

namespace LdmLab.Serving;

/// <summary>Every job by id, for GET /v1/jobs/{id}; past <paramref name="history"/> jobs the oldest finished ones are
/// forgotten (unfinished jobs are always kept).</summary>
public sealed class JobStore(int history)
{
    readonly ConcurrentDictionary<string, Job> _byId = new(StringComparer.Ordinal);
    readonly ConcurrentQueue<Job> _order = new();

    public void Add(Job job)
    {
        _byId[job.Id] = job;
        _order.Enqueue(job);
        while (_byId.Count > history && _order.TryPeek(out var oldest) && oldest.IsFinished
               && _order.TryDequeue(out oldest))
            _byId.TryRemove(oldest.Id, out _);
    }

    public Job? Find(string id) => _byId.GetValueOrDefault(id);

    /// <summary>The jobs not yet finished (queued or running).</summary>
    public List<Job> Unfinished() => _byId.Values.Where(j => !j.IsFinished).ToList();
}
