namespace LdmLab.Serving;

/// <summary>
/// The bounded FIFO of jobs waiting for the worker. <see cref="TakeBatchAsync"/> takes the oldest job and, behind
/// it, up to max − 1 more jobs of the same shape (<see cref="ImageRequest.ShapeKey"/>) in arrival order, waiting at
/// most a short window for them to arrive; jobs of other shapes keep their place.
/// </summary>
public sealed class JobQueue(int capacity, ModelInfo model)
{
    readonly LinkedList<(Job Job, string Shape)> _jobs = new();
    readonly object _gate = new();
    readonly SemaphoreSlim _arrived = new(0);

    public int Capacity { get; } = capacity >= 1 ? capacity
        : throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "the queue capacity must be ≥ 1");

    public int Count
    {
        get { lock (_gate) return _jobs.Count; }
    }

    /// <summary>False when the queue is full (the caller answers 429).</summary>
    public bool TryEnqueue(Job job)
    {
        lock (_gate)
        {
            if (_jobs.Count >= Capacity) return false;
            _jobs.AddLast((job, job.Request.ShapeKey(job.Id, model)));
        }
        _arrived.Release();
        return true;
    }

    /// <summary>Takes a cancelled job out of the line (false when the worker has it already).</summary>
    public bool Remove(Job job)
    {
        lock (_gate)
        {
            for (var node = _jobs.First; node is not null; node = node.Next)
                if (node.Value.Job == job)
                {
                    _jobs.Remove(node);
                    return true;
                }
        }
        return false;
    }

    /// <summary>Every job still waiting (for a shutdown that runs out of time).</summary>
    public List<Job> TakeAll()
    {
        lock (_gate)
        {
            var all = _jobs.Select(j => j.Job).ToList();
            _jobs.Clear();
            return all;
        }
    }

    /// <summary>The oldest job and up to <paramref name="max"/> − 1 of the same shape behind it; waits for the first
    /// as long as it takes, then at most <paramref name="window"/> for a batch that is not yet full.</summary>
    public async Task<List<Job>> TakeBatchAsync(int max, TimeSpan window, CancellationToken ct)
    {
        while (true)
        {
            await _arrived.WaitAsync(ct);
            string? shape;
            lock (_gate) shape = _jobs.First?.Value.Shape;
            if (shape is null) continue;                       // a signal for a job that was removed
            var deadline = DateTime.UtcNow + window;
            while (SameShape(shape) < max && DateTime.UtcNow < deadline)
                await Task.Delay(TimeSpan.FromMilliseconds(2), ct);
            var batch = new List<Job>();
            lock (_gate)
            {
                for (var node = _jobs.First; node is not null && batch.Count < max;)
                {
                    var next = node.Next;
                    if (node.Value.Shape == shape)
                    {
                        batch.Add(node.Value.Job);
                        _jobs.Remove(node);
                    }
                    node = next;
                }
            }
            // one signal per job was released on arrival; the first was consumed above
            for (int i = 1; i < batch.Count; i++) _arrived.Wait(0);
            if (batch.Count > 0) return batch;
        }
    }

    int SameShape(string shape)
    {
        lock (_gate) return _jobs.Count(j => j.Shape == shape);
    }
}
