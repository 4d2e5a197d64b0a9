using System.Buffers.Binary;
using System.Text;

namespace LdmLab.Runtime;

/// <summary>
/// Reads and edits the version needs (<c>.gnu.version_r</c>) of a 64-bit little-endian ELF shared object.
/// TorchSharp 0.107's libLibTorchSharp.so asks for GLIBCXX_3.4.32 only for <c>_ZSt21ios_base_library_initv</c>,
/// which nothing calls; marking that need VER_FLG_WEAK lets ld.so load it against an older libstdc++.
/// </summary>
public static class ElfVersionNeeds
{
    const uint ShtGnuVerneed = 0x6ffffffe;
    public const ushort VerFlagWeak = 0x2;

    public sealed record VersionNeed(string File, string Version, ushort Flags, int FlagsOffset)
    {
        public bool IsWeak => (Flags & VerFlagWeak) != 0;
    }

    /// <summary>All (library, version) needs of the object, with the file offset of each flags field.</summary>
    public static IReadOnlyList<VersionNeed> Read(ReadOnlySpan<byte> elf, string nameForErrors = "<elf>")
    {
        if (elf.Length < 64 || elf[0] != 0x7f || elf[1] != (byte)'E' || elf[2] != (byte)'L' || elf[3] != (byte)'F')
            throw new InvalidDataException($"{nameForErrors}: not an ELF file (bad magic).");
        if (elf[4] != 2 || elf[5] != 1)
            throw new InvalidDataException($"{nameForErrors}: only 64-bit little-endian ELF is supported (class {elf[4]}, data {elf[5]}).");

        ulong shoff = U64(elf, 0x28, nameForErrors);
        int shentsize = U16(elf, 0x3A, nameForErrors), shnum = U16(elf, 0x3C, nameForErrors);
        var needs = new List<VersionNeed>();
        for (int i = 0; i < shnum; i++)
        {
            int sh = checked((int)shoff + i * shentsize);
            if (U32(elf, sh + 4, nameForErrors) != ShtGnuVerneed) continue;
            int offset = checked((int)U64(elf, sh + 0x18, nameForErrors));
            int link = (int)U32(elf, sh + 0x28, nameForErrors);       // section index of .dynstr
            int count = (int)U32(elf, sh + 0x2C, nameForErrors);      // number of Verneed entries
            int strtab = checked((int)U64(elf, checked((int)shoff + link * shentsize) + 0x18, nameForErrors));

            int vn = offset;
            for (int n = 0; n < count; n++)
            {
                // Elf64_Verneed: vn_version u16, vn_cnt u16, vn_file u32, vn_aux u32, vn_next u32
                int cnt = U16(elf, vn + 2, nameForErrors);
                string file = CString(elf, strtab + (int)U32(elf, vn + 4, nameForErrors), nameForErrors);
                int aux = vn + (int)U32(elf, vn + 8, nameForErrors);
                for (int a = 0; a < cnt; a++)
                {
                    // Elf64_Vernaux: vna_hash u32, vna_flags u16, vna_other u16, vna_name u32, vna_next u32
                    ushort flags = U16(elf, aux + 4, nameForErrors);
                    string version = CString(elf, strtab + (int)U32(elf, aux + 8, nameForErrors), nameForErrors);
                    needs.Add(new VersionNeed(file, version, flags, aux + 4));
                    uint next = U32(elf, aux + 12, nameForErrors);
                    if (next == 0) break;
                    aux += (int)next;
                }
                uint vnNext = U32(elf, vn + 12, nameForErrors);
                if (vnNext == 0) break;
                vn += (int)vnNext;
            }
        }
        return needs;
    }

    /// <summary>Sets VER_FLG_WEAK on every need of <paramref name="version"/>; returns how many were changed.</summary>
    public static int MarkWeak(byte[] elf, string version, string nameForErrors = "<elf>")
    {
        int changed = 0;
        foreach (var need in Read(elf, nameForErrors))
        {
            if (need.Version != version || need.IsWeak) continue;
            BinaryPrimitives.WriteUInt16LittleEndian(elf.AsSpan(need.FlagsOffset), (ushort)(need.Flags | VerFlagWeak));
            changed++;
        }
        return changed;
    }

    static ushort U16(ReadOnlySpan<byte> b, int at, string name) => BinaryPrimitives.ReadUInt16LittleEndian(Slice(b, at, 2, name));
    static uint U32(ReadOnlySpan<byte> b, int at, string name) => BinaryPrimitives.ReadUInt32LittleEndian(Slice(b, at, 4, name));
    static ulong U64(ReadOnlySpan<byte> b, int at, string name) => BinaryPrimitives.ReadUInt64LittleEndian(Slice(b, at, 8, name));

    static ReadOnlySpan<byte> Slice(ReadOnlySpan<byte> b, int at, int len, string name) =>
        at >= 0 && at + len <= b.Length ? b.Slice(at, len)
            : throw new InvalidDataException($"{name}: truncated ELF (needed bytes {at}..{at + len}, file has {b.Length}).");

    static string CString(ReadOnlySpan<byte> b, int at, string name)
    {
        var rest = Slice(b, at, 1, name).Length > 0 ? b[at..] : default;
        int end = rest.IndexOf((byte)0);
        if (end < 0) throw new InvalidDataException($"{name}: unterminated string in .dynstr at {at}.");
        return Encoding.ASCII.GetString(rest[..end]);
    }
}
