"""Rebuild ``data/english_concepts.txt``: frequent English words for the general candidate set.

Order: OpenAI CLIP's BPE merges (as shipped with open_clip), which follow token frequency. Filter:
whole-word tokens that are lowercase entries of SCOWL's american-english list (Debian package
``wamerican``), minus function words. Usage: ``python -m crp_csp.candidates.build_english_list``.
"""
from __future__ import annotations

import argparse
import gzip
import re
from pathlib import Path

from open_clip.tokenizer import default_bpe

from .vocabularies import ENGLISH_FILE

FUNCTION_WORDS = frozenset("""
the and for with that this you are was not but have from they his her she him its our their them what
when where which who whom why how all any can will just than then too very also into over under about
after before again off once here there each few more most other some such only own same both being been
were had has does did doing would should could might must shall may one two three four five six seven
eight nine ten out via per yes etc your yours ours theirs myself himself herself itself themselves these
those while because until although though upon within without onto toward towards nor either neither
whether whose whatever whenever wherever however
""".split())

HEADER = """# crp-csp general English concept list: the most frequent (up to {limit:,}) lowercase English words
# (frequency order of OpenAI CLIP's BPE merges, as shipped with open_clip, MIT licence) that are
# entries of SCOWL's american-english word list (Debian package wamerican; Copyright 2000-2011
# Kevin Atkinson, permissive licence: use, copy, modify, distribute with this notice), minus
# function words. Regenerate with: python -m crp_csp.candidates.build_english_list
"""


def build(dictionary: Path, limit: int = 20_000) -> list[str]:
    words = {w.strip() for w in dictionary.read_text(encoding="utf-8").splitlines()}
    words = {w for w in words if re.fullmatch(r"[a-z]{3,}", w)}
    merges = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:49152 - 256 - 2 + 1]
    chosen: list[str] = []
    for merge in merges:
        token = "".join(merge.split())
        word = token[:-4]
        if token.endswith("</w>") and word in words and word not in FUNCTION_WORDS and word not in chosen:
            chosen.append(word)
    return chosen[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dictionary", type=Path, default=Path("/usr/share/dict/american-english"))
    parser.add_argument("--limit", type=int, default=20_000)
    args = parser.parse_args()
    words = build(args.dictionary, args.limit)
    ENGLISH_FILE.write_text(HEADER.format(limit=args.limit) + "\n".join(words) + "\n", encoding="utf-8")
    print(f"wrote {len(words)} words to {ENGLISH_FILE}")


if __name__ == "__main__":
    main()
