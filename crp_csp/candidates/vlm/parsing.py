"""Turn a VLM's free-text answer into a clean list of candidate concepts.

Every piece of content that is removed (an overlong item, a duplicate, a preamble line) is named in
:attr:`ParsedAnswer.reason`; nothing is dropped silently.
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, field

#: Concepts the prompts ask for.
EXPECTED_CONCEPTS = 3
#: Longest concept kept, in characters and in words.
MAX_CHARS = 40
MAX_WORDS = 4

# Chat-template debris that some backends leave in decoded text.
_THINK = re.compile(r"<think>.*?(</think>|$)", re.IGNORECASE | re.DOTALL)
_SPECIAL_TOKENS = re.compile(
    r"<\|im_start\|>\s*(?:assistant|user|system)?|<\|start_header_id\|>\s*\w*\s*<\|end_header_id\|>|<\|[^|>]{0,40}\|>|</?s>|<eos>|<bos>|<pad>|<unk>|<end_of_turn>|<start_of_turn>(model|user)?"
    r"|\[/?INST\]|<image>|<end_of_utterance>",
    re.IGNORECASE,
)
# A role or answer label at the very start: "Assistant:", "ASSISTANT:", "Answer:", "Concepts:" ...
_LEADING_LABEL = re.compile(
    r"^\s*(assistant|answer|response|output|concepts?|the \d+ concepts are|the concepts are|"
    r"the three concepts are|here are the (?:\d+|three) concepts)\s*[:\-]\s*",
    re.IGNORECASE,
)
# Bullets and enumerations at the start of an item: "1.", "2)", "(3)", "-", "*", "•", "a)".
_ENUMERATION = re.compile(r"^\s*(?:[-*•·–—]+|\(?\d{1,2}\s*[.):\]]|\(?[a-cA-C][.)])\s*")
# "1) red 2) blue 3) green" on one line.
_INLINE_ENUMERATION = re.compile(r"(?:^|\s)\(?\d{1,2}[.)]\s+")
_MARKDOWN = re.compile(r"\*\*|__|`")
_QUOTES = "\"'`“”‘’«»„"
_EDGE_PUNCTUATION = string.punctuation + _QUOTES + "…·•–—"
_CONJUNCTION = re.compile(r"^(and|or|&)\s+", re.IGNORECASE)


@dataclass
class ParsedAnswer:
    """A parsed VLM answer.

    Attributes
    ----------
    concepts : cleaned, lower-case, deduplicated concepts (whatever was usable, even when malformed).
    malformed : True when the answer did not yield exactly 3 concepts.
    reason : why it is malformed and what was removed (``"; "``-separated), or None when nothing was.
    raw : the answer as received.
    """

    concepts: list[str]
    malformed: bool
    reason: str | None
    raw: str
    notes: list[str] = field(default_factory=list, repr=False)


def _clean_item(item: str) -> str:
    item = _MARKDOWN.sub("", item)
    item = _ENUMERATION.sub("", item)
    item = item.strip().strip(_EDGE_PUNCTUATION).strip()
    item = _CONJUNCTION.sub("", item)
    item = " ".join(item.lower().split())
    return item.strip(_EDGE_PUNCTUATION + " ")


def parse_concepts(
    text: str | None,
    expected: int = EXPECTED_CONCEPTS,
    max_chars: int = MAX_CHARS,
    max_words: int = MAX_WORDS,
) -> ParsedAnswer:
    """Parse a comma-separated concept answer.

    Strips chat artifacts, a leading role/answer label, preamble lines ending in ``:``, numbering,
    bullets, quotes and markdown; splits on commas or semicolons (on newlines when there are none);
    lower-cases, collapses whitespace and strips punctuation at both ends; drops items longer than
    ``max_chars`` characters or ``max_words`` words, and duplicates.

    Parameters
    ----------
    text : the answer; None counts as empty.
    expected : number of concepts a well-formed answer holds.
    max_chars, max_words : limits above which an item is dropped.

    Returns
    -------
    ParsedAnswer
        ``malformed`` when the number of kept concepts differs from ``expected`` (including zero);
        ``reason`` lists every removal and the count problem.
    """
    raw = "" if text is None else str(text)
    notes: list[str] = []
    cleaned = _SPECIAL_TOKENS.sub(" ", _THINK.sub(" ", raw))
    cleaned = cleaned.replace("\r", "\n").strip()
    cleaned = _LEADING_LABEL.sub("", cleaned, count=1)

    lines = []
    for line in cleaned.split("\n"):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.endswith(":") and len(cleaned.split("\n")) > 1:
            notes.append(f"dropped preamble {stripped!r}")
            continue
        lines.append(stripped)

    if lines and ":" in lines[0]:
        prefix, _, rest = lines[0].partition(":")
        if rest.strip() and not re.search(r"[,;]", prefix):
            notes.append(f"dropped preamble {prefix.strip() + ':'!r}")
            lines[0] = rest.strip()

    body = "\n".join(lines)
    if re.search(r"[,;]", body):
        pieces = [piece for line in lines for piece in re.split(r"[,;]", line)]
    elif len(lines) == 1 and len(_INLINE_ENUMERATION.findall(lines[0])) >= 2:
        pieces = [piece for piece in _INLINE_ENUMERATION.split(lines[0])]
    else:
        pieces = lines

    concepts: list[str] = []
    for piece in pieces:
        item = _clean_item(piece)
        if not item:
            continue
        if len(item) > max_chars:
            notes.append(f"dropped {item!r} (over {max_chars} characters)")
            continue
        if len(item.split()) > max_words:
            notes.append(f"dropped {item!r} (over {max_words} words)")
            continue
        if item in concepts:
            notes.append(f"dropped duplicate {item!r}")
            continue
        concepts.append(item)

    problems = []
    if not raw.strip():
        problems.append("empty answer")
    elif not concepts:
        problems.append("no usable concept")
    elif len(concepts) != expected:
        problems.append(f"expected {expected} concepts, got {len(concepts)}")
    malformed = bool(problems)
    reason = "; ".join(problems + notes) or None
    return ParsedAnswer(concepts=concepts, malformed=malformed, reason=reason, raw=raw, notes=notes)
