"""Candidate label sets: the demo world's concepts, a general English list, users' files, merged."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Iterable

ENGLISH_FILE = Path(__file__).parent / "data" / "english_concepts.txt"


@dataclasses.dataclass
class CandidateSet:
    """Candidate labels with where each came from (``sources[label]`` lists vocabularies / VLMs)."""

    labels: list[str] = dataclasses.field(default_factory=list)
    sources: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_labels(cls, labels: Iterable[str], source: str) -> "CandidateSet":
        candidates = cls()
        candidates.add(labels, source)
        return candidates

    def add(self, labels: Iterable[str], source: str) -> "CandidateSet":
        for label in labels:
            label = " ".join(str(label).strip().split())
            if not label:
                continue
            if label not in self.sources:
                self.labels.append(label)
                self.sources[label] = []
            if source not in self.sources[label]:
                self.sources[label].append(source)
        return self

    def merge(self, other: "CandidateSet") -> "CandidateSet":
        merged = CandidateSet(list(self.labels), {k: list(v) for k, v in self.sources.items()})
        for label in other.labels:
            for source in other.sources[label]:
                merged.add([label], source)
        return merged

    def __len__(self) -> int:
        return len(self.labels)


def read_label_file(path: str | os.PathLike) -> list[str]:
    """One label per line; blank lines and lines starting with ``#`` are skipped."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"label file {path} does not exist")
    labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    labels = [line for line in labels if line and not line.startswith("#")]
    if not labels:
        raise ValueError(f"label file {path} holds no labels (one per line, # for comments)")
    return labels


def english_concepts() -> list[str]:
    """The shipped general English concept list (see the file's header for source and licence)."""
    return read_label_file(ENGLISH_FILE)


def demo_concepts() -> list[str]:
    """Every attribute value of the demo world, its class names, and two-attribute phrases."""
    from ..demo import CLASS_NAMES, FAMILIES

    labels = [value for values in FAMILIES.values() for value in values]
    labels += list(CLASS_NAMES)
    labels += [f"{colour} {shape}" for colour in FAMILIES["colour"] for shape in FAMILIES["shape"]]
    labels += [f"{shape} on {background}" for shape in FAMILIES["shape"] for background in FAMILIES["background"]]
    return list(dict.fromkeys(labels))


VOCABULARIES = {"demo": demo_concepts, "english": english_concepts}


def load_candidates(specs: Iterable[str]) -> CandidateSet:
    """Merge vocabularies by name (``demo``, ``english``, ``classes:demo``) or label file paths."""
    candidates = CandidateSet()
    for spec in specs:
        if spec in VOCABULARIES:
            candidates.add(VOCABULARIES[spec](), spec)
        elif spec == "classes:demo":
            from ..demo import CLASS_NAMES

            candidates.add(CLASS_NAMES, spec)
        elif Path(spec).exists():
            candidates.add(read_label_file(spec), f"file:{Path(spec).name}")
        else:
            raise ValueError(
                f"unknown candidate set {spec!r}: use one of {', '.join(VOCABULARIES)}, classes:demo, "
                "or the path of a text file with one label per line"
            )
    return candidates
