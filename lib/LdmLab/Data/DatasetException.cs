namespace LdmLab.Data;

/// <summary>A data file is missing, truncated, corrupt or not in the expected format; names the file.</summary>
public class DatasetException(string filePath, string message, Exception? inner = null)
    : IOException($"{filePath}: {message}", inner)
{
    public string FilePath { get; } = filePath;
}

/// <summary>A downloaded or local file whose SHA-256 is not the published one.</summary>
public sealed class ChecksumMismatchException(string filePath, string expected, string actual)
    : DatasetException(filePath, $"SHA-256 mismatch: expected {expected}, got {actual} (corrupt or wrong file)")
{
    public string Expected { get; } = expected;
    public string Actual { get; } = actual;
}
