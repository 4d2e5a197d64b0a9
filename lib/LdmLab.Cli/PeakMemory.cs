namespace LdmLab.Cli;

/// <summary>
/// The largest peak resident memory (Linux VmHWM) among a process's descendants, sampled while it runs: for a
/// notebook run, the kernel's peak (nbconvert → .NET Interactive). VmHWM is each process's own high-water mark, so
/// sampling every half second misses only a peak reached in a process's last half second. Null without /proc.
/// </summary>
public sealed class PeakMemory : IDisposable
{
    readonly int _root;
    readonly Timer _timer;
    readonly object _gate = new();
    long _peak;

    public PeakMemory(int rootPid)
    {
        _root = rootPid;
        _timer = new Timer(_ => Sample(), null, TimeSpan.Zero, TimeSpan.FromMilliseconds(500));
    }

    /// <summary>The largest VmHWM seen in bytes, or null off Linux.</summary>
    public long? PeakBytes
    {
        get
        {
            if (!Directory.Exists("/proc/self")) return null;
            Sample();
            lock (_gate) return _peak;
        }
    }

    void Sample()
    {
        if (!Directory.Exists("/proc/self")) return;
        var parents = new Dictionary<int, int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
            if (int.TryParse(Path.GetFileName(dir), out int pid) && ParentOf(pid) is int ppid) parents[pid] = ppid;
        foreach (var pid in parents.Keys.Where(p => Descends(p, parents)))
            if (HighWaterBytes(pid) is long bytes)
                lock (_gate) _peak = Math.Max(_peak, bytes);
    }

    bool Descends(int pid, Dictionary<int, int> parents)
    {
        for (int p = pid, hops = 0; hops < 64 && parents.TryGetValue(p, out int up); p = up, hops++)
            if (up == _root) return true;
        return false;
    }

    /// <summary>The fourth field of /proc/PID/stat (after the parenthesised name, which may hold spaces).</summary>
    static int? ParentOf(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');          // state ppid …
            return int.TryParse(fields[1], out int ppid) ? ppid : null;
        }
        catch (IOException) { return null; }                                       // the process has exited
        catch (UnauthorizedAccessException) { return null; }
    }

    static long? HighWaterBytes(int pid)
    {
        try
        {
            var line = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("VmHWM:"));
            return line is null ? null : long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    public void Dispose() => _timer.Dispose();
}
