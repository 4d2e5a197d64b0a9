using static TorchSharp.torch;

namespace LdmLab.Conditioning;

/// <summary>
/// A least-recently-used cache of text encodings (section 10.5.4): key (a prompt, or a row of token ids) → what the
/// text encoder made of it, at most <see cref="Capacity"/> entries. A hit moves its entry to the front; adding to a
/// full cache evicts the entry used longest ago (and frees its tensor). Hits and misses are counted.
/// <para>The stored tensors are the cache's (detached copies outside every dispose scope); callers get a new
/// reference to the same storage (<c>alias()</c>) that belongs to their own dispose scope. The cache knows nothing of
/// the encoder's weights: whoever changes them (LoRA, textual inversion, another dtype) must <see cref="Clear"/>
/// it — <see cref="Pipelines.StableDiffusionPipeline"/> does for its own changes.</para>
/// </summary>
public sealed class TextEncodingCache : IDisposable
{
    readonly LinkedList<(string key, Tensor value)> _order = new();          // front: most recently used
    readonly Dictionary<string, LinkedListNode<(string key, Tensor value)>> _entries = new(StringComparer.Ordinal);
    readonly object _gate = new();

    public int Capacity { get; }
    public long Hits { get; private set; }
    public long Misses { get; private set; }

    public int Count
    {
        get { lock (_gate) return _entries.Count; }
    }

    /// <summary>The keys, most recently used first.</summary>
    public IReadOnlyList<string> Keys
    {
        get { lock (_gate) return _order.Select(e => e.key).ToList(); }
    }

    public TextEncodingCache(int capacity = 256)
    {
        if (capacity < 1) throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "capacity must be ≥ 1");
        Capacity = capacity;
    }

    /// <summary>The cached encoding of <paramref name="key"/> (a hit), or <paramref name="encode"/>'s, stored (a
    /// miss).</summary>
    public Tensor GetOrAdd(string key, Func<Tensor> encode)
    {
        ArgumentNullException.ThrowIfNull(key);
        if (TryGet(key, out var cached)) return cached;
        var fresh = encode();
        lock (_gate)
        {
            Misses++;
            Store(key, fresh);
        }
        return fresh;
    }

    /// <summary>On a hit, the encoding (a new reference in the caller's dispose scope) and the entry moves to the
    /// front; a miss is not counted here (<see cref="GetOrAdd"/> and <see cref="Add"/> count it).</summary>
    public bool TryGet(string key, out Tensor value)
    {
        lock (_gate)
        {
            if (_entries.TryGetValue(key, out var node))
            {
                _order.Remove(node);
                _order.AddFirst(node);
                Hits++;
                value = node.Value.value.alias();
                return true;
            }
        }
        value = null!;
        return false;
    }

    /// <summary>Stores <paramref name="value"/> (a copy) under <paramref name="key"/> as a counted miss: for callers
    /// that encode their misses in one batch.</summary>
    public void Add(string key, Tensor value)
    {
        ArgumentNullException.ThrowIfNull(key);
        lock (_gate)
        {
            Misses++;
            Store(key, value);
        }
    }

    void Store(string key, Tensor value)
    {
        var stored = value.detach().clone().DetachFromDisposeScope();
        if (_entries.Remove(key, out var old))
        {
            _order.Remove(old);
            old.Value.value.Dispose();
        }
        _entries[key] = _order.AddFirst((key, stored));
        while (_entries.Count > Capacity)
        {
            var last = _order.Last!;
            _order.RemoveLast();
            _entries.Remove(last.Value.key);
            last.Value.value.Dispose();
        }
    }

    /// <summary>Forgets every entry (and frees their tensors); the counters stay.</summary>
    public void Clear()
    {
        lock (_gate)
        {
            foreach (var (_, value) in _order) value.Dispose();
            _order.Clear();
            _entries.Clear();
        }
    }

    public void Dispose() => Clear();

    public override string ToString() =>
        $"{Count}/{Capacity} entries, {Hits} hits, {Misses} misses";
}
