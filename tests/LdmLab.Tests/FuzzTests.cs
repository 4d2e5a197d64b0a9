using System.Diagnostics;
using System.Text;
using LdmLab.Autoencoders;
using LdmLab.Conditioning;
using LdmLab.Data;
using LdmLab.Diffusion;
using LdmLab.Diffusion.Schedulers;
using LdmLab.Interop;
using LdmLab.Runtime;
using LdmLab.UNet;
using SixLabors.ImageSharp;
using SixLabors.ImageSharp.PixelFormats;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace LdmLab.Tests;

/// <summary>
/// A small fuzzing harness: each case mutates a valid input and runs a loader on it. A case passes when the loader
/// succeeds or throws an accepted, typed error (for files: a <see cref="DatasetException"/> or file-not-found error
/// whose message names the file); anything else — another exception type, an error that names nothing, a case slower
/// than <see cref="MaxCaseSeconds"/> (a hang) or one that allocates more than <see cref="MaxCaseBytes"/> of managed
/// memory — fails the test with the case's seed.
/// </summary>
static class Fuzz
{
    public const double MaxCaseSeconds = 10;
    public const long MaxCaseBytes = 512L << 20;

    public sealed record Outcome(int Cases, SortedDictionary<string, int> Kinds, double WorstSeconds, long WorstBytes)
    {
        public override string ToString() =>
            $"{Cases} cases, worst {WorstSeconds * 1000:F0} ms, {WorstBytes >> 10} KiB; " +
            string.Join("; ", Kinds.OrderByDescending(k => k.Value).Take(12).Select(k => $"{k.Value}× {k.Key}"));
    }

    /// <param name="run">runs case i with its own random source; returns nothing, throws what the loader threw.</param>
    /// <param name="named">the text an accepted error's message must contain (the file or argument), for case i.</param>
    public static Outcome Run(int cases, int seed, Action<Random, int> run, Func<Exception, int, bool> accepted)
    {
        var kinds = new SortedDictionary<string, int>();
        var failures = new List<string>();
        double worst = 0;
        long worstBytes = 0;
        for (int i = 0; i < cases; i++)
        {
            var rng = new Random(seed * 100_003 + i);
            long before = GC.GetAllocatedBytesForCurrentThread();
            var sw = Stopwatch.StartNew();
            string kind;
            try
            {
                run(rng, i);
                kind = "loaded";
            }
            catch (Exception e)
            {
                kind = e.GetType().Name + ": " + Summary(e.Message);
                if (!accepted(e, i)) failures.Add($"case {i} (seed {seed}): {e.GetType().FullName}: {e.Message}");
            }
            double seconds = sw.Elapsed.TotalSeconds;
            long bytes = GC.GetAllocatedBytesForCurrentThread() - before;
            worst = Math.Max(worst, seconds);
            worstBytes = Math.Max(worstBytes, bytes);
            if (seconds > MaxCaseSeconds) failures.Add($"case {i} (seed {seed}): took {seconds:F1} s");
            if (bytes > MaxCaseBytes) failures.Add($"case {i} (seed {seed}): allocated {bytes >> 20} MiB");
            kinds[kind] = kinds.GetValueOrDefault(kind) + 1;
        }
        Assert.True(failures.Count == 0, $"{failures.Count} bad cases:\n" + string.Join("\n", failures.Take(15)));
        return new Outcome(cases, kinds, worst, worstBytes);
    }

    /// <summary>An error's first words without paths or numbers, to count the kinds of errors.</summary>
    static string Summary(string message)
    {
        var words = message.Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Where(w => !w.Contains('/') && !w.Any(char.IsDigit)).Take(7);
        return string.Join(' ', words);
    }

    /// <summary>A file error that is typed and names the file.</summary>
    public static bool NamesFile(Exception e, string path) =>
        e is DatasetException or FileNotFoundException or DirectoryNotFoundException && e.Message.Contains(path);

    // ---- byte mutations --------------------------------------------------------------------------------------------

    public static byte[] Mutate(byte[] valid, Random rng)
    {
        var b = valid.ToArray();
        switch (rng.Next(8))
        {
            case 0: return b[..rng.Next(b.Length)];                                             // truncated
            case 1:                                                                             // a few flipped bits
                for (int k = rng.Next(1, 9); k > 0; k--) b[rng.Next(b.Length)] ^= (byte)(1 << rng.Next(8));
                return b;
            case 2:                                                                             // random bytes
                for (int k = rng.Next(1, 5); k > 0; k--) b[rng.Next(b.Length)] = (byte)rng.Next(256);
                return b;
            case 3:                                                                             // a run overwritten
            {
                int at = rng.Next(b.Length), n = Math.Min(b.Length - at, rng.Next(1, 64));
                byte fill = (byte)(rng.Next(2) == 0 ? 0xFF : rng.Next(256));
                for (int k = 0; k < n; k++) b[at + k] = fill;
                return b;
            }
            case 4:                                                                             // bytes inserted
            {
                int at = rng.Next(b.Length);
                var extra = new byte[rng.Next(1, 32)];
                rng.NextBytes(extra);
                return [.. b[..at], .. extra, .. b[at..]];
            }
            case 5:                                                                             // a slice repeated
            {
                int at = rng.Next(b.Length), n = Math.Min(b.Length - at, rng.Next(1, 200));
                return [.. b[..(at + n)], .. b[at..(at + n)], .. b[(at + n)..]];
            }
            case 6: return [.. b, .. Enumerable.Repeat((byte)rng.Next(256), rng.Next(1, 100))];   // trailing bytes
            default:                                                                            // an int32/int64 field
            {
                int at = rng.Next(Math.Max(1, b.Length - 8));
                long v = rng.Next(4) switch { 0 => -1, 1 => long.MaxValue, 2 => int.MaxValue, _ => rng.NextInt64() };
                BitConverter.GetBytes(v).AsSpan(0, Math.Min(8, b.Length - at)).CopyTo(b.AsSpan(at));
                return b;
            }
        }
    }

    static readonly string[] JsonTokens =
        ["\"", "{", "}", "[", "]", ",", ":", "-1", "0", "1e999", "-7", "null", "true", "\"x\"", "NaN", "-Infinity",
         "99999999999999999999", "0.5", "\\u0000", "\"\\ud800\"", "[]", "{}", "\"a\":1,\"a\":2"];

    /// <summary>Text-level mutations of a JSON document (cut, tokens inserted, values replaced, a key repeated).</summary>
    public static string MutateJson(string valid, Random rng, (long min, long max)? numbers = null)
    {
        var s = valid;
        switch (rng.Next(5))
        {
            case 0: return s[..rng.Next(s.Length)];
            case 1:
            {
                int at = rng.Next(s.Length);
                return s[..at] + JsonTokens[rng.Next(JsonTokens.Length)] + s[at..];
            }
            case 2:
            {
                int at = rng.Next(s.Length), n = Math.Min(s.Length - at, rng.Next(1, 12));
                return s.Remove(at, n);
            }
            case 3:                                                                             // a number replaced
            {
                var digits = Enumerable.Range(0, s.Length).Where(i => char.IsDigit(s[i]) && (i == 0 || !char.IsDigit(s[i - 1]))).ToList();
                if (digits.Count == 0) return s;
                int at = digits[rng.Next(digits.Count)], end = at;
                while (end < s.Length && (char.IsDigit(s[end]) || s[end] is '.' or 'e' or '-')) end++;
                var (min, max) = numbers ?? (-1_000_000_000_000, 1_000_000_000_000);
                return s[..at] + rng.NextInt64(min, max + 1) + s[end..];
            }
            default:                                                                            // a line repeated
            {
                var lines = s.Split('\n').ToList();
                int i = rng.Next(lines.Count);
                lines.Insert(i, lines[i]);
                return string.Join('\n', lines);
            }
        }
    }
}

/// <summary>
/// ≥ 10,000 generated cases per loader (safetensors, IDX, images, config JSON, tokenizer input) and 3,334 per kind of
/// diffusers folder (U-Net, VAE, text encoder: 10,002 folder cases): no crash, hang or unbounded allocation, and every
/// error typed and naming the file or argument.
/// </summary>
public class FuzzTests(ITestOutputHelper output)
{
    static string Fixture(string name) => Path.Combine(AppContext.BaseDirectory, "fixtures", name);

    [Fact]
    public void Safetensors_loader()
    {
        TorchRuntime.Setup();
        var dir = TestPaths.TempDir("fuzz-safetensors");
        var seedFile = Path.Combine(dir, "seed.safetensors");
        SafeTensors.Save(seedFile, new Dictionary<string, Tensor>
        {
            ["a.weight"] = randn(3, 4), ["b.ids"] = arange(5L), ["c.half"] = ones(2, 2, ScalarType.Float16),
        }, new Dictionary<string, string> { ["format"] = "pt" });
        var valid = File.ReadAllBytes(seedFile);
        var headerLength = (int)BitConverter.ToUInt64(valid, 0);
        var header = Encoding.UTF8.GetString(valid, 8, headerLength);
        var data = valid[(8 + headerLength)..];
        var path = Path.Combine(dir, "case.safetensors");
        var outcome = Fuzz.Run(10_000, 1, (rng, _) =>
        {
            byte[] bytes;
            if (rng.Next(2) == 0) bytes = Fuzz.Mutate(valid, rng);
            else
            {
                // a header that is still JSON-like: the header's text mutated, its length field kept consistent
                var text = Fuzz.MutateJson(header, rng, rng.Next(2) == 0 ? (-3, 100) : null);
                if (rng.Next(8) == 0) text = text.Replace("a.weight", "b.ids");                 // a duplicate key
                var h = Encoding.UTF8.GetBytes(text);
                if (rng.Next(10) == 0) h[rng.Next(h.Length)] = 0xC3;                             // invalid UTF-8
                bytes = [.. BitConverter.GetBytes((ulong)h.Length), .. h, .. data];
            }
            File.WriteAllBytes(path, bytes);
            foreach (var t in SafeTensors.Load(path).Values) t.Dispose();
        }, (e, _) => Fuzz.NamesFile(e, path));
        output.WriteLine("safetensors: " + outcome);
        Assert.True(outcome.Kinds.Keys.Count(k => k.StartsWith("DatasetException")) >= 5, outcome.ToString());

        // the two errors that used to name nothing
        var duplicated = Encoding.UTF8.GetBytes(header.Replace("\"b.ids\"", "\"a.weight\""));
        File.WriteAllBytes(path, [.. BitConverter.GetBytes((ulong)duplicated.Length), .. duplicated, .. data]);
        var dup = Assert.Throws<DatasetException>(() => SafeTensors.Load(path));
        Assert.Contains("duplicate tensor name", dup.Message);
        Assert.Contains(path, dup.Message);
        var bad = Encoding.UTF8.GetBytes(header);
        bad[header.IndexOf("a.weight", StringComparison.Ordinal)] = 0xFF;
        File.WriteAllBytes(path, [.. BitConverter.GetBytes((ulong)bad.Length), .. bad, .. data]);
        var utf = Assert.Throws<DatasetException>(() => SafeTensors.Load(path));
        Assert.Contains("not valid UTF-8", utf.Message);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Idx_loader()
    {
        var dir = TestPaths.TempDir("fuzz-idx");
        byte[] raw = [0, 0, 8, 3, 0, 0, 0, 5, 0, 0, 0, 4, 0, 0, 0, 4, .. Enumerable.Range(0, 80).Select(i => (byte)i)];
        byte[] gz;
        using (var ms = new MemoryStream())
        {
            using (var g = new System.IO.Compression.GZipStream(ms, System.IO.Compression.CompressionLevel.Optimal, true)) g.Write(raw);
            gz = ms.ToArray();
        }
        var path = Path.Combine(dir, "case-idx3-ubyte");
        var outcome = Fuzz.Run(10_000, 2, (rng, _) =>
        {
            File.WriteAllBytes(path, Fuzz.Mutate(rng.Next(2) == 0 ? raw : gz, rng));
            Idx.Read(path, 3);
        }, (e, _) => Fuzz.NamesFile(e, path));
        output.WriteLine("IDX: " + outcome);

        // a gzip bomb: a small file that inflates past the bound is refused, not read into memory
        using (var fs = File.Create(path))
        using (var g = new System.IO.Compression.GZipStream(fs, System.IO.Compression.CompressionLevel.SmallestSize))
        {
            var zeros = new byte[1 << 20];
            for (long written = 0; written <= Idx.MaxBytes; written += zeros.Length) g.Write(zeros);
        }
        var e = Assert.Throws<DatasetException>(() => Idx.Read(path, 3));
        Assert.Contains("decompresses to more than", e.Message);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Image_loader()
    {
        var dir = TestPaths.TempDir("fuzz-images");
        var seeds = new Dictionary<string, byte[]>();
        using (var img = new Image<Rgb24>(24, 16))
        {
            for (int y = 0; y < 16; y++) for (int x = 0; x < 24; x++) img[x, y] = new Rgb24((byte)(x * 10), (byte)(y * 15), 90);
            foreach (var ext in new[] { ".png", ".jpg", ".bmp" })
            {
                using var ms = new MemoryStream();
                if (ext == ".png") img.SaveAsPng(ms); else if (ext == ".jpg") img.SaveAsJpeg(ms); else img.SaveAsBmp(ms);
                seeds[ext] = ms.ToArray();
            }
        }
        var exts = seeds.Keys.ToArray();
        string path = "";
        var outcome = Fuzz.Run(10_000, 3, (rng, i) =>
        {
            var ext = exts[rng.Next(exts.Length)];
            var bytes = Fuzz.Mutate(seeds[ext], rng);
            if (ext == ".png" && bytes.Length >= 24 && rng.Next(6) == 0)                                              // a huge canvas in IHDR
                BitConverter.GetBytes(System.Buffers.Binary.BinaryPrimitives.ReverseEndianness(rng.Next(20_000, int.MaxValue)))
                    .CopyTo(bytes.AsSpan(16 + 4 * rng.Next(2)));
            var caseDir = Path.Combine(dir, (i % 2).ToString());
            Directory.CreateDirectory(caseDir);
            foreach (var f in Directory.GetFiles(caseDir)) File.Delete(f);
            path = Path.Combine(caseDir, "photo" + ext);
            File.WriteAllBytes(path, bytes);
            using var _ = new ImageFolder(caseDir, shortSide: 8).Photo(0);
        }, (e, _) => Fuzz.NamesFile(e, path));
        output.WriteLine("images: " + outcome);
        Assert.Contains(outcome.Kinds.Keys, k => k.StartsWith("DatasetException"));
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Config_json_loaders()
    {
        var dir = TestPaths.TempDir("fuzz-config");
        var parsers = new (string seed, Func<string, object> read)[]
        {
            (File.ReadAllText(Path.Combine(Fixture("tiny-unet"), "config.json")),
                p => ConfigFile.Read(p, j => UNetConfig.FromJson(j, p))),
            (File.ReadAllText(Path.Combine(Fixture("tiny-vae"), "config.json")),
                p => ConfigFile.Read(p, j => AutoencoderKLConfig.FromJson(j, p))),
            (File.ReadAllText(Path.Combine(Fixture("tiny-clip-text"), "config.json")),
                p => ConfigFile.Read(p, j => ClipTextConfig.FromJson(j, p))),
            ("""
             {"_class_name": "EulerDiscreteScheduler", "beta_start": 0.00085, "beta_end": 0.012,
              "beta_schedule": "scaled_linear", "steps_offset": 1, "timestep_spacing": "leading",
              "use_karras_sigmas": false, "lambda_min_clipped": -Infinity}
             """,
                p => ConfigFile.Read(p, j =>
                {
                    var s = Scheduler.Create((string?)j["_class_name"] ?? "DDIMScheduler", j);
                    s.SetTimesteps(5);
                    return s;
                })),
        };
        var path = Path.Combine(dir, "config.json");
        var outcome = Fuzz.Run(10_000, 4, (rng, i) =>
        {
            var (seed, read) = parsers[i % parsers.Length];
            var text = Fuzz.MutateJson(seed, rng);
            if (rng.Next(3) == 0) text = Fuzz.MutateJson(text, rng);
            File.WriteAllText(path, text);
            read(path);
        }, (e, _) => Fuzz.NamesFile(e, path));
        output.WriteLine("config JSON: " + outcome);
        Directory.Delete(dir, true);
    }

    [Fact]
    public void Tokenizer_input()
    {
        var tokenizer = ClipTokenizer.Default.With(warn: _ => { });
        (int lo, int hi)[] ranges =
        [
            (0x20, 0x7E), (0x00, 0x1F), (0xA0, 0x17F), (0x300, 0x36F), (0x4E00, 0x4E80), (0x1F600, 0x1F64F),
            (0xD800, 0xDFFF), (0x200B, 0x200F), (0x0590, 0x05FF), (0xFF01, 0xFF5E), (0xFFFD, 0xFFFF),
        ];
        const string syntax = "()[]:\\ 1.3 word ";
        var outcome = Fuzz.Run(10_000, 5, (rng, _) =>
        {
            // lone surrogates in one case of ten (they are refused, naming the argument; the rest must encode)
            bool surrogates = rng.Next(10) == 0;
            var sb = new StringBuilder();
            int length = rng.Next(6) == 0 ? rng.Next(200, 3000) : rng.Next(0, 80);
            for (int k = 0; k < length; k++)
            {
                if (rng.Next(4) == 0) { sb.Append(syntax[rng.Next(syntax.Length)]); continue; }
                var (lo, hi) = ranges[rng.Next(ranges.Length)];
                if (!surrogates && lo == 0xD800) (lo, hi) = (0x10000, 0x1FFFF);
                int cp = rng.Next(lo, hi + 1);
                // lone surrogates on purpose: .NET strings can hold them, and users paste them
                if (cp is >= 0xD800 and <= 0xDFFF) sb.Append((char)cp); else sb.Append(char.ConvertFromUtf32(cp));
            }
            var text = sb.ToString();
            var plain = tokenizer.Encode(text);
            Assert.Equal(tokenizer.MaxLength, plain.Ids.Length);
            Assert.Equal(tokenizer.BosId, plain.Ids[0]);
            Assert.Equal(tokenizer.MaxLength, tokenizer.EncodeWeighted(text).Ids.Length);
            Assert.All(tokenizer.EncodeChunks(text, weighted: rng.Next(2) == 0), c => Assert.Equal(tokenizer.MaxLength, c.Ids.Length));
        }, (e, _) => e is ArgumentException { ParamName: "text" } && e.Message.Contains("surrogate"));
        output.WriteLine("tokenizer: " + outcome);
        Assert.Throws<ArgumentNullException>(() => tokenizer.Encode(null!));
    }

    /// <summary>Micro models saved as diffusers / transformers folders, then one file of a copy mutated per case.</summary>
    [Fact]
    public void Diffusers_folders()
    {
        TorchRuntime.Setup();
        var root = TestPaths.TempDir("fuzz-folders");
        var vaeDir = Path.Combine(root, "vae");
        new AutoencoderKL(new AutoencoderKLConfig
        {
            BlockOutChannels = [8], LayersPerBlock = 1, NormNumGroups = 4, LatentChannels = 2, SampleSize = 8,
        }).SavePretrained(vaeDir);
        var unetDir = Path.Combine(root, "unet");
        new UNet2DConditionModel(new UNetConfig
        {
            SampleSize = 8, InChannels = 2, OutChannels = 2, BlockOutChannels = [8, 8], LayersPerBlock = 1, NormNumGroups = 4,
            CrossAttentionDim = 8, AttentionHeadDim = [2], DownBlockTypes = ["CrossAttnDownBlock2D", "DownBlock2D"],
            UpBlockTypes = ["UpBlock2D", "CrossAttnUpBlock2D"],
        }).SavePretrained(unetDir);
        var textDir = Path.Combine(root, "text_encoder");
        new ClipTextModel(new ClipTextConfig
        {
            VocabSize = 64, HiddenSize = 8, IntermediateSize = 16, NumHiddenLayers = 1, NumAttentionHeads = 2,
            MaxPositionEmbeddings = 16, BosTokenId = 62, EosTokenId = 63, PadTokenId = 1, ProjectionDim = 8,
        }).SavePretrained(textDir);
        var kinds = new (string dir, Action<string> load)[]
        {
            (vaeDir, d => AutoencoderKL.FromPretrained(d).Dispose()),
            (unetDir, d => UNet2DConditionModel.FromPretrained(d).Dispose()),
            (textDir, d => ClipTextModel.FromPretrained(d).Dispose()),
        };
        var work = Path.Combine(root, "case");
        foreach (var (source, load) in kinds)
        {
            var files = Directory.GetFiles(source).Select(Path.GetFileName).ToArray();
            var outcome = Fuzz.Run(3_334, 6, (rng, _) =>
            {
                if (Directory.Exists(work)) Directory.Delete(work, true);
                Directory.CreateDirectory(work);
                foreach (var f in files) File.Copy(Path.Combine(source, f!), Path.Combine(work, f!));
                var victim = Path.Combine(work, files[rng.Next(files.Length)]!);
                switch (rng.Next(10))
                {
                    case 0: File.Delete(victim); break;
                    case <= 4 when victim.EndsWith(".json"):
                        // numbers kept small: a config may ask for any model, and a huge one is a legitimate (big) model
                        File.WriteAllText(victim, Fuzz.MutateJson(File.ReadAllText(victim), rng, (-2, 16)));
                        break;
                    default: File.WriteAllBytes(victim, Fuzz.Mutate(File.ReadAllBytes(victim), rng)); break;
                }
                using var scope = NewDisposeScope();
                load(work);
            }, (e, _) => Fuzz.NamesFile(e, work));
            output.WriteLine($"{Path.GetFileName(source)} folder: {outcome}");
        }
        Directory.Delete(root, true);
    }
}
