using System.Runtime.InteropServices;

namespace LdmLab.Runtime;

/// <summary>
/// The real peak memory of a piece of work, from the kernel's high-water mark (Linux): reset VmHWM (write 5 to
/// /proc/self/clear_refs), give freed heap back (malloc_trim), run, then peak − resident-before. Null where unsupported.
/// </summary>
public static class ProcessMemory
{
    [DllImport("libc", EntryPoint = "malloc_trim")] static extern int MallocTrim(nuint pad);

    public static bool Supported => OperatingSystem.IsLinux() && File.Exists("/proc/self/clear_refs");

    /// <summary>Resident set size now (VmRSS), in bytes; null where /proc/self/status does not exist.</summary>
    public static long? ResidentBytes => OperatingSystem.IsLinux() && File.Exists("/proc/self/status") ? StatusKb("VmRSS") * 1024 : null;

    /// <summary>
    /// Hands freed native memory back to the OS: a full GC (finalizes tensors that escaped a dispose scope), then
    /// glibc's malloc_trim(0), which returns the free pages of every arena. glibc keeps freed blocks otherwise, so RSS
    /// after a loop stays at its high-water mark although every tensor was disposed. The loops call it when they end.
    /// </summary>
    public static void Release()
    {
        GC.Collect(); GC.WaitForPendingFinalizers();
        if (!OperatingSystem.IsLinux()) return;
        try { MallocTrim(0); } catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException) { }
    }

    /// <summary>
    /// The process's peak resident memory so far (VmHWM), in bytes, including the peaks before each reset that
    /// <see cref="PeakIncrease"/> made; null where /proc/self/status does not exist.
    /// </summary>
    public static long? PeakBytes =>
        OperatingSystem.IsLinux() && File.Exists("/proc/self/status")
            ? Math.Max(_peakBeforeResets, StatusKb("VmHWM") * 1024) : null;

    static long _peakBeforeResets;

    public static long? PeakIncrease(Action work)
    {
        if (!Supported) { work(); return null; }
        Release();
        _peakBeforeResets = Math.Max(_peakBeforeResets, StatusKb("VmHWM") * 1024);   // VmHWM is reset next
        try { File.WriteAllText("/proc/self/clear_refs", "5"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { work(); return null; }
        long before = StatusKb("VmRSS");
        work();
        return (StatusKb("VmHWM") - before) * 1024;
    }

    static long StatusKb(string key)
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith(key + ":")) return long.Parse(line[(key.Length + 1)..].Trim().Split(' ')[0]);
        throw new InvalidOperationException($"/proc/self/status has no {key}");
    }
}
