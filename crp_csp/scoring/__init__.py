"""Scoring candidate labels for units: CSP, SemanticLens, CLIP-Dissect, and the labelling API."""
from .labels import LayerLabels, UnitLabel, encoder_for, label_units
from .scorers import (
    SCORERS, ClipDissectScorer, CSPScorer, Scorer, ScoringContext, SemanticLensScorer, csp_unit_embeddings,
    make_scorer,
)
from .text import LABEL_TEMPLATES, cached_label_embeddings, embed_labels

__all__ = [
    "LABEL_TEMPLATES", "SCORERS", "CSPScorer", "ClipDissectScorer", "LayerLabels", "Scorer", "ScoringContext",
    "SemanticLensScorer", "UnitLabel", "cached_label_embeddings", "csp_unit_embeddings", "embed_labels",
    "encoder_for", "label_units", "make_scorer",
]
