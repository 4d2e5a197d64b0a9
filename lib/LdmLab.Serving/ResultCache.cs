namespace LdmLab.Serving;

/// <summary>
/// Finished PNGs by the whole request (<see cref="ImageRequest.CacheKey"/>), least recently used evicted: the same
/// seed and parameters answer with the very bytes made the first time, without running the model.
/// </summary>
public sealed class ResultCache(int capacity)
{
    readonly LinkedList<(string Key, byte[] Png)> _order = new();                 // front: most recently used
    readonly Dictionary<string, LinkedListNode<(string Key, byte[] Png)>> _entries = new(StringComparer.Ordinal);
    readonly object _gate = new();

    public int Capacity { get; } = capacity >= 0 ? capacity
        : throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "capacity must be ≥ 0 (0: no cache)");

    public bool TryGet(string key, out byte[] png)
    {
        lock (_gate)
        {
            if (_entries.TryGetValue(key, out var node))
            {
                _order.Remove(node);
                _order.AddFirst(node);
                png = node.Value.Png;
                return true;
            }
        }
        png = [];
        return false;
    }

    public void Add(string key, byte[] png)
    {
        if (Capacity == 0) return;
        lock (_gate)
        {
            if (_entries.Remove(key, out var old)) _order.Remove(old);
            _entries[key] = _order.AddFirst((key, png));
            while (_entries.Count > Capacity)
            {
                _entries.Remove(_order.Last!.Value.Key);
                _order.RemoveLast();
            }
        }
    }

    public int Count
    {
        get { lock (_gate) return _entries.Count; }
    }
}
