"""crp-csp: faithful unit labels with Contrastive Semantic Projection, in the same pass as CRP."""
import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())

from .analysis import AnalysisConfig, CSPFeatureVisualization, rank_device, run_analysis  # noqa: E402
from .circuits import Circuit, build_circuit  # noqa: E402
from .candidates import CandidateSet, load_candidates, read_label_file  # noqa: E402
from .contrastive import ContrastiveSelection, SelectionConfig, TooFewNegativesError, select_contrastive  # noqa: E402
from .encoders import ImageTextEncoder, load_encoder  # noqa: E402
from .models import load_model  # noqa: E402
from .scoring import (  # noqa: E402
    ClipDissectScorer, CSPScorer, LayerLabels, SemanticLensScorer, UnitLabel, embed_labels, label_units,
    make_scorer,
)
from .store import AnalysisStore, StoreError, StoreLockedError, StoreMismatchError  # noqa: E402
from .units import TokenConcept, insert_sae  # noqa: E402

__all__ = [
    "AnalysisConfig", "AnalysisStore", "CSPFeatureVisualization", "CSPScorer", "CandidateSet", "Circuit",
    "ClipDissectScorer", "build_circuit",
    "ContrastiveSelection", "ImageTextEncoder", "LayerLabels", "SelectionConfig", "SemanticLensScorer",
    "StoreError", "StoreLockedError", "StoreMismatchError", "TokenConcept", "TooFewNegativesError", "UnitLabel", "embed_labels",
    "insert_sae", "label_units", "load_candidates", "load_encoder", "load_model", "make_scorer", "read_label_file",
    "rank_device", "run_analysis", "select_contrastive",
]
