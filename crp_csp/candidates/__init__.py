"""Candidate labels: vocabularies, users' label files and (in ``vlm``) vision-language models."""
from .vocabularies import (
    ENGLISH_FILE, CandidateSet, demo_concepts, english_concepts, load_candidates, read_label_file,
)

__all__ = ["ENGLISH_FILE", "CandidateSet", "demo_concepts", "english_concepts", "load_candidates",
           "read_label_file"]
