"""Units beyond conv channels: SAE latents inserted into the model, and token-wise transformer units."""
from .insertion import ReconstructionError, SAEInsertion, SparseCoding, error_name, insert_sae, latents_name
from .sae import (
    SAE_KINDS, SAEConfig, activation_rows, build_sae, fit_sae, import_overcomplete, layer_rows, load_sae, sae_quality,
    save_sae,
)
from .tokens import AGGREGATIONS, TokenConcept, describe_concept, unit_layout

__all__ = [
    "AGGREGATIONS", "ReconstructionError", "SAEConfig", "SAEInsertion", "SAE_KINDS", "SparseCoding", "TokenConcept", "activation_rows",
    "build_sae", "describe_concept", "error_name", "fit_sae", "import_overcomplete", "insert_sae", "latents_name",
    "layer_rows", "load_sae", "sae_quality", "save_sae", "unit_layout",
]
