"""Faithfulness evaluation of unit labels: CoSy, simulation correlation, AUPRC, ground truth, final layer."""
from .activations import unit_activations
from .evaluate import METRICS, LabelEvaluation, LabelEvaluator, evaluate_labels
from .final_layer import final_layer_accuracy
from .ground_truth import (
    best_explaining_attribute, concept_overlap, demo_attributes, is_confounded_attribute, names_incidental_attribute,
    presence_auc, presence_matrix, same_concept,
)
from .metrics import auprc, cosy, simulation_correlation
from .sources import ConceptImageSource, DemoRendererSource, DiffusersSource, RetrievalSource, UnknownConceptError

__all__ = [
    "METRICS", "ConceptImageSource", "DemoRendererSource", "DiffusersSource", "LabelEvaluation", "LabelEvaluator",
    "RetrievalSource", "UnknownConceptError", "auprc", "best_explaining_attribute", "concept_overlap", "cosy",
    "demo_attributes", "evaluate_labels", "final_layer_accuracy", "is_confounded_attribute",
    "names_incidental_attribute", "presence_auc", "presence_matrix", "same_concept", "simulation_correlation",
    "unit_activations",
]
