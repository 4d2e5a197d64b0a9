using System.Security.Cryptography;
using TorchSharp;
using static TorchSharp.torch;

namespace LdmLab.Training;

/// <summary>
/// Hashes of what a trained model was made from — the data actually used, an upstream model's weights — for cache
/// keys that cannot go stale: the same shape with other content, or latents of a retrained VAE, gives another key.
/// SHA-256 over dtype, shape and the raw bytes (row-major, CPU), first 16 hex digits.
/// </summary>
public static class ContentHash
{
    public static string Of(Tensor t)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        Append(sha, "", t);
        return Hex(sha);
    }

    /// <summary>Every state-dict entry (name, dtype, shape, bytes) in name order.</summary>
    public static string Of(nn.Module module)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var (name, t) in module.state_dict().OrderBy(kv => kv.Key, StringComparer.Ordinal)) Append(sha, name, t);
        return Hex(sha);
    }

    public static string Of(float[] values) => Of(tensor(values));

    /// <summary>Lines of text (captions, prompts), in order: SHA-256 of their UTF-8 bytes, each line ended by '\n'.</summary>
    public static string Of(IEnumerable<string> lines)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var line in lines) sha.AppendData(System.Text.Encoding.UTF8.GetBytes(line + "\n"));
        return Hex(sha);
    }

    static void Append(IncrementalHash sha, string name, Tensor t)
    {
        sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"{name}|{t.dtype}|{string.Join(",", t.shape)}|"));
        using var c = t.detach().cpu().contiguous();
        // in slices, so that a large tensor is not copied into one managed array
        long n = c.numel(), step = Math.Max(1, (64L << 20) / Math.Max(1, c.ElementSize));
        using var flat = c.reshape(-1);
        for (long i = 0; i < n; i += step)
        {
            using var slice = flat.narrow(0, i, Math.Min(step, n - i));
            sha.AppendData(slice.bytes);
        }
    }

    static string Hex(IncrementalHash sha) => Convert.ToHexString(sha.GetHashAndReset())[..16].ToLowerInvariant();
}
