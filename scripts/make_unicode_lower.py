#!/usr/bin/env python3
"""Writes the Python Unicode data LdmLab's CLIP text cleaner needs, and the fixtures that check it:

    /usr/bin/python3 scripts/make_unicode_lower.py        (Debian's Python 3.11; standard library only)

CLIP's tokenizers lower-case with Python's str.lower() (full Unicode case mapping: 'İ' → 'i' + U+0307, final
capital sigma → 'ς') and OpenAI's also runs html.unescape twice; .NET has neither. From the running Python it writes

* lib/LdmLab/Conditioning/python_lower.txt.gz — Python's str.lower() as data:
    L <hex> <hex hex ...>   every code point c (0..10FFFF, surrogates skipped) with chr(c).lower() != chr(c), and
                            what it lowers to (all other code points lower to themselves);
    I <hex> <hex>           ranges of case-ignorable code points, as str.lower's Final_Sigma rule sees them;
    C <hex> <hex>           ranges of cased code points that are not case-ignorable.
  CPython lowers U+03A3 to 'ς' when, skipping case-ignorable characters, a cased character comes before it and none
  comes after it (unicodeobject.c, handle_capital_sigma, with _PyUnicode_IsCaseIgnorable / _PyUnicode_IsCased).
  unicodedata exposes neither property, so both are read off str.lower itself, exactly rather than approximated:
    (x + 'Σ').lower() ends in 'ς'        iff x is cased and not case-ignorable (a case-ignorable x is skipped,
                                          leaving nothing before the sigma);
    ('A' + x + 'Σ').lower() ends in 'ς'  iff x is case-ignorable (skipped, so 'A' decides) or cased.
  Whether a case-ignorable character is also cased never matters: the rule skips it before it asks.
* lib/LdmLab/Conditioning/html5_entities.txt.gz — html.unescape's tables:
    E <name> <hex hex ...>  html.entities.html5 (2231 names, with ';' or, for the legacy ones, without);
    R <hex> <hex>           html's _invalid_charrefs: numeric references that map elsewhere (&#128; → €);
    X <hex> <hex>           ranges of html's _invalid_codepoints (numeric references that decode to nothing);
    U <name> <hex ...>      the upper-case names ftfy 6.1.1 also decodes (&NTILDE; → Ñ), built as its
                            chardata._build_html_entities builds them.
* tests/LdmLab.Tests/fixtures/unicode-lower/ — what UnicodeCaseTests compares with:
    blocks.tsv     per block of 4096 code points, the SHA-256 of chr(c).lower() + '\\0' over the block (UTF-8,
                   surrogates skipped), so every code point's lowering is checked without shipping 1.1M of them;
    strings.json   str.lower() of sample strings: every code point of the L table in runs, and sigma contexts;
    unescape.json  html.unescape() of every entity name and of numeric and malformed references.
Every file is written byte-for-byte reproducibly (gzip with mtime 0, sorted keys).
"""
import gzip
import hashlib
import html
import html.entities
import itertools
import json
import os
import sys
import unicodedata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(ROOT, "lib", "LdmLab", "Conditioning")
FIXTURES = os.path.join(ROOT, "tests", "LdmLab.Tests", "fixtures", "unicode-lower")
SIGMA = "\u03a3"


def code_points():
    return (c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)


def hexes(s):
    return " ".join(f"{ord(ch):X}" for ch in s)


def ranges(values):
    """Sorted code points → (first, last) runs."""
    out = []
    for _, run in itertools.groupby(enumerate(sorted(values)), lambda p: p[1] - p[0]):
        run = [v for _, v in run]
        out.append((run[0], run[-1]))
    return out


def header(what):
    return (f"# {what}\n# written by scripts/make_unicode_lower.py with Python {sys.version.split()[0]}, "
            f"unicodedata.unidata_version {unicodedata.unidata_version}\n")


def write_gz(path, text):
    with open(path, "wb") as f:
        f.write(gzip.compress(text.encode("utf-8"), compresslevel=9, mtime=0))


def case_tables():
    lower, ignorable, cased = [], [], []
    for c in code_points():
        ch = chr(c)
        if ch.lower() != ch:
            lower.append((c, ch.lower()))
        alone = (ch + SIGMA).lower()[-1] == "\u03c2"
        after_a = ("A" + ch + SIGMA).lower()[-1] == "\u03c2"
        if after_a and not alone:
            ignorable.append(c)
        elif alone:
            cased.append(c)
    return lower, ignorable, cased


def write_case_data(lower, ignorable, cased):
    lines = [header("Python's str.lower(): L = code point → lower-case; I = case-ignorable ranges; "
                    "C = cased, not case-ignorable ranges (hex)")]
    lines += [f"L {c:X} {hexes(s)}\n" for c, s in lower]
    lines += [f"I {a:X} {b:X}\n" for a, b in ranges(ignorable)]
    lines += [f"C {a:X} {b:X}\n" for a, b in ranges(cased)]
    write_gz(os.path.join(LIB, "python_lower.txt.gz"), "".join(lines))


def ftfy_upper_entities():
    """ftfy 6.1.1 chardata._build_html_entities: for each lower-case html5 name with ';' whose upper-case spelling
    html.unescape leaves alone, that spelling decodes to the character's upper case."""
    out = {}
    for name, char in html.entities.html5.items():
        if name.endswith(";") and name == name.lower():
            entity_upper = "&" + name.upper()
            if html.unescape(entity_upper) == entity_upper:
                out[name.upper()] = char.upper()
    return out


def write_entity_data():
    lines = [header("html.unescape's tables: E = html5 entity; R = remapped numeric reference; "
                    "X = numeric references that decode to nothing (ranges); U = ftfy 6.1.1's upper-case names")]
    lines += [f"E {name} {hexes(char)}\n" for name, char in sorted(html.entities.html5.items())]
    lines += [f"R {num:X} {hexes(char)}\n" for num, char in sorted(html._invalid_charrefs.items())]
    lines += [f"X {a:X} {b:X}\n" for a, b in ranges(html._invalid_codepoints)]
    lines += [f"U {name} {hexes(char)}\n" for name, char in sorted(ftfy_upper_entities().items())]
    write_gz(os.path.join(LIB, "html5_entities.txt.gz"), "".join(lines))


def write_blocks():
    lines = []
    for start in range(0, 0x110000, 0x1000):
        sha = hashlib.sha256()
        for c in range(start, start + 0x1000):
            if not 0xD800 <= c <= 0xDFFF:
                sha.update((chr(c).lower() + "\0").encode("utf-8"))
        lines.append(f"{start:X}\t{sha.hexdigest()}\n")
    with open(os.path.join(FIXTURES, "blocks.tsv"), "w", encoding="utf-8", newline="\n") as f:
        f.write("".join(lines))


def sample_strings(lower, ignorable, cased):
    texts = []
    # every lowered code point, 32 to a run, separated by spaces (sigmas among them lower by their neighbours)
    changed = [chr(c) for c, _ in lower]
    texts += [" ".join(changed[i:i + 32]) for i in range(0, len(changed), 32)]
    texts += ["".join(changed[i:i + 32]) for i in range(0, len(changed), 32)]
    # sigma contexts: what comes before × what comes after, with case-ignorable runs in between
    ign = [chr(c) for c in (0x27, 0x2E, 0xAD, 0x301, 0x345, 0x2B0, 0x200D, 0xE0001, 0x1F3FB)]
    cas = [chr(c) for c in (0x41, 0xAA, 0x130, 0x1C5, 0x3A3, 0x1D400, 0x24B6, 0x10400, 0x2160)]
    neither = [chr(c) for c in (0x20, 0x31, 0x4E00, 0x1F600, 0x0)]
    before = [""] + cas + neither + [x + i for x in ("A", "1") for i in ign] + ["A" + "".join(ign)]
    after = [""] + cas + neither + [i + x for x in ("A", "1") for i in ign] + ign + ["".join(ign) + "A"]
    texts += [b + SIGMA + a for b in before for a in after]
    texts += ["ΟΔΟΣ", "ΟΔΟΣ ΟΔΟΣ.", "ΣΑΣ", "Σ", "ΣΣ", "ΑΣΣ", "ΑΣ'Σ", "ὈΔΥΣΣΕΎΣ", "İstanbul", "ǅ ǈ ǋ ǲ",
              "ΑΣ\u0301", "Α\u0301Σ", "ẞ SS ß", "ΆΣ.Σ", "A\U000E0001Σ\U000E0001", "ς σ Σ"]
    texts += ["".join(chr(c) for c in range(a, min(b, a + 24) + 1)) + SIGMA for a, b in ranges(ignorable)[:80]]
    texts += ["A" + chr(a) + SIGMA + chr(b) for a, b in ranges(cased)]
    return [{"text": t, "lower": t.lower()} for t in texts]


def unescape_cases():
    texts = []
    for name in sorted(html.entities.html5):
        texts += ["&" + name + "x" if name.endswith(";") else "&" + name + "x;"]
    texts += ["&" + name for name in sorted(ftfy_upper_entities())[::8]]
    for num in itertools.chain(range(0, 0x100), [0xD7FF, 0xD800, 0xDFFF, 0xE000, 0xFDCF, 0xFDD0, 0xFDEF, 0xFDF0,
                                                 0xFFFD, 0xFFFE, 0xFFFF, 0x10000, 0x1FFFE, 0x1F600, 0x10FFFE,
                                                 0x10FFFF, 0x110000, 0xFFFFFFFF]):
        texts += [f"&#{num};", f"&#x{num:x}", f"&#X{num:X}a", f"&#00{num}"]
    texts += ["&", "&&", "&;", "&#", "&#;", "&#x;", "&#xg;", "&#0x41;", "&#99999999999999999999999;", "& amp;",
              "&amp;amp;", "&amp;lt;", "a&b", "this&not that", "&notit;", "&notin;", "&noti", "&no", "&n", "&ampx",
              "&AMP;", "&AMP", "&Amp;", "&lt&gt&quot", "&" + "a" * 40 + ";", "&" + "é" * 40, "&ü;", "&\U0001F600;",
              "&amp\U0001F600", "&#65&#66;&#x43", "&\t&\n&\f& &<&#&;", "&ampamp;", "&Eacute;&EACUTE;&eacute",
              "<b>&amp;</b>", "&r\u00e9;", "&" + "\U0001F600" * 33 + ";", "&" + "x" * 31 + "\U0001F600" + "amp;"]
    return [{"text": t, "unescape": html.unescape(t)} for t in texts]


def write_json(name, doc):
    with open(os.path.join(FIXTURES, name), "w", encoding="utf-8", newline="\n") as f:
        json.dump(doc, f, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
        f.write("\n")


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    lower, ignorable, cased = case_tables()
    write_case_data(lower, ignorable, cased)
    write_entity_data()
    write_blocks()
    versions = {"python": sys.version.split()[0], "unidata_version": unicodedata.unidata_version}
    write_json("strings.json", {"versions": versions, "cases": sample_strings(lower, ignorable, cased)})
    write_json("unescape.json", {"versions": versions, "cases": unescape_cases()})
    print(f"{len(lower)} lowered code points, {len(ranges(ignorable))} case-ignorable and {len(ranges(cased))} "
          f"cased ranges, {len(html.entities.html5)} entities (Unicode {unicodedata.unidata_version})")


if __name__ == "__main__":
    main()
