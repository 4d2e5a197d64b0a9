#!/usr/bin/env python3
"""Writes CLIP tokenizer cases in the shared fixtures' clip-tokenizer format (prompts.json) for prompts the published
folder does not have, with OpenAI CLIP's own SimpleTokenizer (openai/CLIP d05afc43, ftfy 6.1.1) as the reference:

    PYTHONPATH=<dir with clip/simple_tokenizer.py + its vocab, and ftfy 6.1.1> /usr/bin/python3 \\
        scripts/make_tokenizer_fixtures.py OUT_DIR

Layout per case as Stable Diffusion 1.x tokenizes: 49406, at most 75 BPE ids, 49407, padded to 77 with 49407.
"""
import json
import os
import sys

import ftfy
from clip.simple_tokenizer import SimpleTokenizer

PROMPTS = [
    "a sneaker on the left and a bag on the right",
    "an ankle boot on the right and a t-shirt on the left",
    "a photo of a pullover, a shoe and a top",
    "masterpiece, (best quality:1.4), ((ultra detailed)), [blurry], 8k uhd, f/1.8, 35mm",
    "1girl, solo, looking at viewer, #portrait @artist",
    "DON'T STOP, it'S fine, rock'n'roll, o'clock",
    "The Quick Brown Fox — jumps… over the lazy dog!!! ???",
    "https://example.com/path?query=1&x=2 and user_name_2024",
    "donâ€™t panic, itâ€™s a â€œtestâ€",
    "ﬁne ﬂowers and ﬀ ligatures",
    "&quot;quoted&quot; &#39;apostrophe&#39; &nbsp;non-breaking &copy; 2024",
    # not here: text with '<' and an entity, where OpenAI (html.unescape twice) and transformers (ftfy only, which
    # leaves entities alone when '<' is present) differ; LdmLab follows transformers (TextPathTests covers it)
    "Ελληνικά γράμματα και αριθμοί 123",
    "العربية من اليمين إلى اليسار",
    "हिन्दी पाठ और 한국어 텍스트",
    "family 👨‍👩‍👧‍👦 flags 🇺🇸🇯🇵 and skin tones 👍🏽",
    "ＦＵＬＬ　ＷＩＤＴＨ　ｔｅｘｔ，ｗｉｔｈ　ｐｕｎｃｔｕａｔｉｏｎ！",
    "tabs\tand\r\nwindows\rline endings",
    "zero\u200b\u200bwidth joiner\u200d and soft\u00adhyphen",
    "3.14159 2.71828 1e-5 -42 +7 50% $9.99 €5",
    "snake_case camelCase PascalCase kebab-case SCREAMING_CASE",
    "a " * 60 + "cat",
    " ".join(["astronaut riding a horse on mars"] * 12),
    "",
    "   ",
    "!!!",
    "<|startoftext|>",
    "<|endoftext|> <|endoftext|>",
    "naïve café façade jalapeño Zürich Ærø",
    "ǅungla ǈ ǋ titlecase digraphs",
]


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    t = SimpleTokenizer()
    sot, eot = t.encoder["<|startoftext|>"], t.encoder["<|endoftext|>"]
    cases = []
    for text in PROMPTS:
        bpe = t.encode(text)
        full = [sot] + bpe + [eot]
        kept = [sot] + bpe[:75] + [eot]
        cases.append({
            "text": text,
            "input_ids": kept + [eot] * (77 - len(kept)),
            "ids_untruncated": full,
            "num_tokens_untruncated": len(full),
            "truncated": len(bpe) > 75,
            "bpe_tokens": [t.decoder[i] for i in bpe],
        })
    doc = {
        "versions": {"openai_clip": "d05afc436d78f1c48dc0dbf8e5980a9d471f35f6", "ftfy": ftfy.__version__},
        "tokenizer": "OpenAI CLIP SimpleTokenizer (ftfy.fix_text, html.unescape twice, whitespace cleanup, lower-case, BPE); "
                     "SD1.x layout: bos 49406, eos 49407, pad 49407, max length 77, truncation keeps the first 75 tokens",
        "bos_token_id": sot, "eos_token_id": eot, "pad_token_id": eot, "model_max_length": 77,
        "vocab_size": len(t.encoder), "cases": cases,
    }
    with open(os.path.join(out, "prompts.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main()
