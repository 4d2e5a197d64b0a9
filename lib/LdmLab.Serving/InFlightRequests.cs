namespace LdmLab.Serving;

/// <summary>
/// Identical requests in flight computed once: the first job of a <see cref="Job.CacheKey"/> leads (it is queued
/// and computed), and an identical request that arrives while it is queued or running follows it
/// (<see cref="Follow"/>): the follower relays the leader's state, progress and previews and ends with the leader's
/// very PNG bytes (or its error). When the leader is cancelled (its client went away) the first follower still waiting
/// is queued in its place, so one client's cancel never takes another's image. The result cache answers identical
/// requests that come after the image exists; this answers the ones that come while it is being made.
/// </summary>
public sealed class InFlightRequests
{
    readonly Dictionary<string, Job> _leaders = new(StringComparer.Ordinal);
    readonly object _gate = new();

    /// <summary>The unfinished leader of <paramref name="job"/>'s request, or null after making
    /// <paramref name="job"/> the leader (it leaves the table when it finishes, or by <see cref="Release"/>).</summary>
    public Job? LeaderOf(Job job)
    {
        lock (_gate)
        {
            if (_leaders.TryGetValue(job.CacheKey, out var leader) && !leader.IsFinished) return leader;
            _leaders[job.CacheKey] = job;
        }
        job.Finished.ContinueWith(_ => Release(job), TaskScheduler.Default);
        return null;
    }

    /// <summary>Takes <paramref name="job"/> out of the table if it leads (a job refused by a full queue).</summary>
    public void Release(Job job)
    {
        lock (_gate)
            if (_leaders.TryGetValue(job.CacheKey, out var leader) && leader == job) _leaders.Remove(job.CacheKey);
    }

    /// <summary>Requests being computed that others may join.</summary>
    public int Count
    {
        get { lock (_gate) return _leaders.Count; }
    }

    /// <summary>
    /// Relays <paramref name="leader"/>'s events to <paramref name="follower"/> until the leader finishes: running
    /// (with the leader's batch size), progress and previews; then the leader's PNG (succeeded) or error (failed).
    /// A cancelled leader hands the request back: <paramref name="requeue"/> queues the follower on its own (or
    /// behind another leader); it answers false when the queue is full, and the follower then fails saying so.
    /// </summary>
    public static async Task Follow(Job follower, Job leader, Func<Job, bool> requeue)
    {
        try
        {
            await foreach (var e in leader.Events(follower.Cancellation))
                switch (e.Name)
                {
                    case "state" when (string?)e.Data["state"] == "running":
                        follower.TryStart((int?)e.Data["batch_size"] ?? 1);
                        break;
                    case "progress":
                        follower.Progress((int)e.Data["step"]!, (int)e.Data["steps"]!);
                        break;
                    case "preview":
                        follower.Relay(e);
                        break;
                }
        }
        catch (OperationCanceledException) when (follower.IsFinished)
        {
            return;                                                   // the follower was cancelled: nothing to relay
        }
        switch (leader.State)
        {
            case JobState.Succeeded:
                follower.TryStart(leader.BatchSize);
                follower.Succeed(leader.Png!, cached: leader.Cached);
                break;
            case JobState.Failed:
                follower.TryStart(leader.BatchSize);
                follower.Fail(leader.Error ?? "the identical request it shared failed");
                break;
            default:
                if (follower.IsFinished || !follower.Requeue()) return;
                if (!requeue(follower))
                    follower.Fail("the identical request it shared was cancelled and the queue is full: retry later");
                break;
        }
    }
}
