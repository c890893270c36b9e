"""The analysis store: HDF5 layout, fingerprints, single-writer lock."""
from .fingerprint import composite_fingerprint, dataset_fingerprint, model_fingerprint, state_dict_digest
from .lock import StoreLockedError, WriterLock
from .store import (
    SCHEMA_VERSION, AnalysisStore, StoreError, StoreMismatchError, atomic_h5, create_matrix,
    fingerprint_difference,
)

__all__ = [
    "SCHEMA_VERSION", "AnalysisStore", "StoreError", "StoreLockedError", "StoreMismatchError", "WriterLock",
    "atomic_h5", "composite_fingerprint", "create_matrix", "dataset_fingerprint", "fingerprint_difference",
    "model_fingerprint", "state_dict_digest",
]
