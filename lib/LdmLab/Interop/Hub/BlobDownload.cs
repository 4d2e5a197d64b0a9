using System.Diagnostics;
using System.Net;
using System.Security.Cryptography;

namespace LdmLab.Interop.Hub;

/// <summary>
/// Downloads one blob into the cache: the bytes go to blobs/{etag}.incomplete, which a later attempt (in this call or
/// another process) resumes with a Range request; once the size and, for LFS files, the SHA-256 match what the hub
/// reported, the file is renamed to blobs/{etag}. Nothing half-written or unverified ever carries the blob's name.
/// </summary>
static class BlobDownload
{
    /// <summary>Attempts per call; a retry only follows an attempt that added bytes (a broken transfer).</summary>
    const int Attempts = 3;
    const int BufferSize = 1 << 20;
    static readonly TimeSpan ReadTimeout = TimeSpan.FromSeconds(60);

    internal static async Task Run(HubOptions o, HubCache cache, string fileName, string revision,
        HubFileMetadata meta, CancellationToken ct)
    {
        var partial = cache.IncompletePath(meta.Etag);
        var blob = cache.BlobPath(meta.Etag);
        Directory.CreateDirectory(Path.GetDirectoryName(partial)!);
        var stalled = Stopwatch.StartNew();
        long seen = -1;
        for (int attempt = 1; ; attempt++)
        {
            if (File.Exists(blob)) return;                        // another download of the same blob finished it
            long before = Length(partial);
            try
            {
                if (await Attempt(o, cache, fileName, revision, meta, partial, ct)) break;
                // another process holds the partial file: wait while it makes progress (huggingface_hub waits on a
                // lock file the same way), give up when it has not grown for LockPatience
                if (before != seen) { seen = before; stalled.Restart(); }
                if (stalled.Elapsed > LockPatience)
                    throw new HubException(HubErrorKind.Network, cache.RepoId, fileName, null,
                        $"'{fileName}' of '{cache.RepoId}': {partial} is held by another download that has not " +
                        $"progressed for {LockPatience.TotalSeconds:F0} s; stop it or delete the file, then call " +
                        "again");
                attempt--;
                await Task.Delay(TimeSpan.FromMilliseconds(500), ct);
            }
            catch (HubException e) when (e.Kind == HubErrorKind.Network && attempt < Attempts
                                                                        && Length(partial) > before)
            {
                // the transfer broke after some bytes: resume from them
            }
        }
        try { File.Move(partial, blob, overwrite: true); }
        catch (FileNotFoundException) when (File.Exists(blob)) { }   // the other download moved it first
    }

    /// <summary>How long a partial file held by another download may stay the same size before waiting stops.
    /// </summary>
    static readonly TimeSpan LockPatience = TimeSpan.FromMinutes(2);

    static long Length(string path) => File.Exists(path) ? new FileInfo(path).Length : 0;

    /// <summary>One download attempt into the partial file; false when another download holds it.</summary>
    static async Task<bool> Attempt(HubOptions o, HubCache cache, string fileName, string revision,
        HubFileMetadata meta, string partial, CancellationToken ct)
    {
        string repoId = cache.RepoId;
        FileStream file;
        try { file = new FileStream(partial, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
        catch (IOException) { return false; }
        await using var _ = file;
        using var hash = HubNames.IsSha256(meta.Etag) ? IncrementalHash.CreateHash(HashAlgorithmName.SHA256) : null;
        if (file.Length > meta.Size) file.SetLength(0);
        long have = file.Length;
        var buffer = new byte[BufferSize];
        if (hash is not null)   // the kept bytes count towards the hash as much as the new ones
            for (int n; (n = await file.ReadAsync(buffer, ct)) > 0;) hash.AppendData(buffer, 0, n);
        if (have < meta.Size)
        {
            using var response = await HubHttp.Get(o, meta.Location, have, repoId, fileName, revision, ct);
            if (have > 0 && response.StatusCode != HttpStatusCode.PartialContent)
            {
                // the server ignored the Range: start over from byte 0
                file.SetLength(0);
                have = 0;
                hash?.GetHashAndReset();
            }
            else if (have > 0 && response.Content.Headers.ContentRange?.From is { } from && from != have)
                throw HubHttp.Protocol(repoId, fileName, $"asked for bytes from {have}, got them from {from}");
            file.Seek(have, SeekOrigin.Begin);
            await Copy(o, response, file, hash, buffer, repoId, fileName, partial, meta.Size, ct);
            await file.FlushAsync(ct);
            file.Flush(flushToDisk: true);
        }
        long size = file.Length;
        if (size < meta.Size)
            throw new HubException(HubErrorKind.Network, repoId, fileName, null,
                $"'{fileName}' of '{repoId}': the transfer ended after {size} of {meta.Size} bytes; {partial} is " +
                "kept and the next call resumes it");
        if (size > meta.Size) Discard(file, partial, repoId, fileName, $"{size} bytes arrived, the hub reported " +
                                                                       $"{meta.Size}");
        if (hash is not null && Convert.ToHexStringLower(hash.GetHashAndReset()) is var actual && actual != meta.Etag)
            Discard(file, partial, repoId, fileName, $"the bytes have SHA-256 {actual}, the hub reported {meta.Etag}");
        return true;
    }

    /// <summary>Streams the answer into the file, hashing and reporting progress; a stalled or broken transfer is a
    /// Network error that keeps what arrived, more bytes than the hub reported a Corrupt one.</summary>
    static async Task Copy(HubOptions o, HttpResponseMessage response, FileStream file, IncrementalHash? hash,
        byte[] buffer, string repoId, string fileName, string partial, long total, CancellationToken ct)
    {
        long have = file.Position;
        try
        {
            await using var body = await response.Content.ReadAsStreamAsync(ct);
            while (true)
            {
                using var stall = CancellationTokenSource.CreateLinkedTokenSource(ct);
                stall.CancelAfter(ReadTimeout);
                int n = await body.ReadAsync(buffer, stall.Token);
                if (n == 0) break;
                if (have + n > total)
                    Discard(file, partial, repoId, fileName, $"more than the {total} bytes the hub reported arrived");
                await file.WriteAsync(buffer.AsMemory(0, n), ct);
                hash?.AppendData(buffer, 0, n);
                have += n;
                o.Progress?.Invoke(new HubProgress(repoId, fileName, have, total));
            }
        }
        catch (Exception e) when (e is (IOException or HttpRequestException) and not HubException
                                      || e is OperationCanceledException && !ct.IsCancellationRequested)
        {
            await file.FlushAsync(CancellationToken.None);
            throw new HubException(HubErrorKind.Network, repoId, fileName, null,
                $"'{fileName}' of '{repoId}': the transfer broke off after {have} of {total} bytes ({e.Message}); " +
                $"{partial} is kept and the next call resumes it", e);
        }
    }

    /// <summary>Deletes the partial file (its bytes are not to be trusted); throws a Corrupt error.</summary>
    static void Discard(FileStream file, string partial, string repoId, string fileName, string what)
    {
        file.SetLength(0);
        file.Dispose();
        File.Delete(partial);
        throw new HubException(HubErrorKind.Corrupt, repoId, fileName, null,
            $"'{fileName}' of '{repoId}' arrived corrupt: {what}. Nothing was kept; call again to download it " +
            "afresh, and if it fails again the server or a proxy alters the file");
    }
}
