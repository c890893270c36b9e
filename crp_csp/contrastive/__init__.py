"""Contrastive example selection from the analysis store."""
from .selection import ContrastiveSelection, SelectionConfig, TooFewNegativesError, select_contrastive

__all__ = ["ContrastiveSelection", "SelectionConfig", "TooFewNegativesError", "select_contrastive"]
