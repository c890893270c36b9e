"""Options of the analysis pass, as one plain dataclass that is stored with every result."""
from __future__ import annotations

import dataclasses
import json

import torch

RELEVANCE_TARGETS = ("label", "prediction")
MAX_TARGETS = ("sum", "max")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}

# zennit-crp keeps 40 reference samples per unit; CSP wants a pool of 100 to choose from.
DEFAULT_POOL_SIZE = 100
CRP_SAMPLE_SIZE = 40


@dataclasses.dataclass(frozen=True)
class AnalysisConfig:
    """Options of :func:`crp_csp.run_analysis`.

    Parameters
    ----------
    pool_size : reference samples kept per unit for ActMax and RelMax (zennit-crp keeps 40).
    max_target, abs_norm : how a unit's value on a sample is reduced, as zennit-crp does it:
        ``sum`` or ``max`` over space, optionally divided by the sum of absolute values over units.
    relevance_target : start the relevance at the dataset ``label`` (as zennit-crp does) or at the
        model's ``prediction``.
    batch_size, num_workers, device, dtype : how the pass runs.
    chunk_size : samples per checkpoint; a killed pass loses at most one chunk of work.
    crop_count : reference samples per unit and mode whose relevance crops are embedded (0: none).
    crop_modes : which reference pools get crops: ``activation`` (ActMax), ``relevance`` (RelMax).
    crop_vis_th, crop_th, crop_alpha, crop_kernel_size : zennit-crp's ``vis_opaque_img`` options
        for the crops (kernel size None: 19 px per 224 px of image side, odd).
    """

    pool_size: int = DEFAULT_POOL_SIZE
    max_target: str = "sum"
    abs_norm: bool = True
    relevance_target: str = "label"
    batch_size: int = 32
    num_workers: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    chunk_size: int = 512
    crop_count: int = 30
    crop_modes: tuple[str, ...] = ("activation", "relevance")
    crop_vis_th: float = 0.2
    crop_th: float = 0.1
    crop_alpha: float = 0.3
    crop_kernel_size: int | None = None

    def __post_init__(self) -> None:
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if self.max_target not in MAX_TARGETS:
            raise ValueError(f"max_target must be one of {MAX_TARGETS}, got {self.max_target!r}")
        if self.relevance_target not in RELEVANCE_TARGETS:
            raise ValueError(f"relevance_target must be one of {RELEVANCE_TARGETS}, got {self.relevance_target!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.batch_size < 1 or self.chunk_size < 1:
            raise ValueError("batch_size and chunk_size must be >= 1")
        if self.crop_count < 0 or self.crop_count > self.pool_size:
            raise ValueError(f"crop_count must lie in [0, pool_size={self.pool_size}], got {self.crop_count}")
        unknown = set(self.crop_modes) - {"activation", "relevance"}
        if unknown:
            raise ValueError(f"crop_modes may hold 'activation' and 'relevance', got {sorted(unknown)}")
        object.__setattr__(self, "crop_modes", tuple(self.crop_modes))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def samples_per_part(self) -> int:
        """The chunk size rounded up to whole batches, so parts and batches line up."""
        return -(-self.chunk_size // self.batch_size) * self.batch_size

    def result_options(self) -> dict:
        """The options that change stored results (part of the store's fingerprint)."""
        keys = ("max_target", "abs_norm", "relevance_target", "dtype", "crop_vis_th", "crop_th",
                "crop_alpha", "crop_kernel_size")
        return {key: getattr(self, key) for key in keys}

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)
