"""The HDF5 analysis store: one self-describing file per analysis.

Layout (``SCHEMA_VERSION`` 1)::

    /                                   attrs: schema_version, crp_csp_version, fingerprint (JSON),
                                               config (JSON), layers (JSON list), num_samples
    /samples/index        [N]           dataset index of each row
    /samples/embedding    [N, D]        the encoder's image embedding (L2-normalised)
    /samples/target       [N]           dataset label (-1 when the dataset has none)
    /samples/prediction   [N]           the model's arg-max output
    /layers/<layer>/activation/{value,rf,max,mean}   [N, C]   per-sample unit statistics
    /layers/<layer>/relevance/{value,rf,sum}         [N, C]
    /layers/<layer>/references/{activation,relevance}/{ids,values,rf}   [P, C]  ActMax / RelMax pools
    /layers/<layer>/crops/{activation,relevance}/embedding   [K, C, D]  relevance-crop embeddings
    /<other groups>                     later stages (text embeddings, labels), written atomically

``value`` and ``rf`` follow zennit-crp (``max_target``, ``abs_norm``); ``references`` hold sample
*indices* ranked as crp ranks them, the first 40 equal to ``FeatureVisualization``'s.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path
from typing import Iterator

import h5py
import numpy as np

from .. import __version__
from .lock import WriterLock

SCHEMA_VERSION = 1
CHUNK_ROWS = 1024


class StoreError(RuntimeError):
    """A store is missing, incomplete, corrupted or of another schema."""


class StoreMismatchError(StoreError):
    """A store exists for another model, dataset, composite, layer set, encoder or config."""


def fingerprint_difference(stored: dict, wanted: dict) -> list[str]:
    """Dotted keys whose values differ between two fingerprints."""
    keys = []
    for key in sorted(set(stored) | set(wanted)):
        a, b = stored.get(key), wanted.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys.extend(f"{key}.{sub}" for sub in fingerprint_difference(a, b))
        elif a != b:
            keys.append(key)
    return keys


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike, copy_existing: bool = True) -> Iterator[h5py.File]:
    """Write an HDF5 file all-or-nothing: work on a temporary copy, then rename it into place.

    A process killed inside the block leaves the original file untouched.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if copy_existing and path.exists():
        shutil.copyfile(path, temporary)
    try:
        with h5py.File(temporary, "a" if copy_existing else "w") as handle:
            yield handle
        with open(temporary, "rb") as raw:
            os.fsync(raw.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


def create_matrix(group: h5py.Group, name: str, shape: tuple, dtype) -> h5py.Dataset:
    """A chunked dataset whose chunks hold whole rows (samples), for streaming writes."""
    chunks = (max(1, min(shape[0], CHUNK_ROWS)),) + tuple(shape[1:]) if shape[0] else None
    return group.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)


class AnalysisStore:
    """Read access to a finished analysis store, plus atomic writes of later stages.

    Parameters
    ----------
    path : the ``.h5`` file written by :func:`crp_csp.run_analysis`.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"no analysis store at {self.path}; create one with crp_csp.run_analysis")
        try:
            with h5py.File(self.path, "r") as handle:
                attrs = dict(handle.attrs)
        except OSError as error:
            raise StoreError(
                f"{self.path} is not a readable HDF5 store ({error}); delete it and run the analysis again"
            ) from None
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {attrs.get('schema_version')!r}, this crp-csp reads "
                f"{SCHEMA_VERSION}; rerun the analysis with this version"
            )
        self.fingerprint: dict = json.loads(attrs["fingerprint"])
        self.config: dict = json.loads(attrs["config"])
        self.layers: list[str] = json.loads(attrs["layers"])
        self.num_samples = int(attrs["num_samples"])
        self.crp_csp_version = str(attrs["crp_csp_version"])

    def __repr__(self) -> str:
        return f"AnalysisStore({str(self.path)!r}, layers={self.layers}, samples={self.num_samples})"

    @contextlib.contextmanager
    def open(self) -> Iterator[h5py.File]:
        """The HDF5 file, read-only, for streaming reads of large datasets."""
        with h5py.File(self.path, "r") as handle:
            yield handle

    def _check_layer(self, layer: str) -> None:
        if layer not in self.layers:
            raise KeyError(f"layer {layer!r} is not in {self.path}; it holds {', '.join(self.layers)}")

    def read(self, name: str, rows=None) -> np.ndarray:
        """Any dataset by its path in the file; ``rows`` selects along the first axis."""
        with self.open() as handle:
            if name not in handle:
                raise KeyError(f"{name!r} is not in {self.path}")
            dataset = handle[name]
            return dataset[()] if rows is None else dataset[rows]

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Rows of a dataset in any order, with repeats (h5py itself wants sorted, unique indices)."""
        rows = np.asarray(rows)
        unique, inverse = np.unique(rows, return_inverse=True)
        return self.read(name, unique)[inverse]

    def has(self, name: str) -> bool:
        with self.open() as handle:
            return name in handle

    @property
    def sample_index(self) -> np.ndarray:
        return self.read("samples/index")

    def embeddings(self, rows=None) -> np.ndarray:
        """Image embeddings of the samples, [N, D] (rows in store order)."""
        return self.read("samples/embedding", rows)

    def targets(self) -> np.ndarray:
        return self.read("samples/target")

    def predictions(self) -> np.ndarray:
        return self.read("samples/prediction")

    def statistic(self, layer: str, kind: str = "activation", stat: str = "max", rows=None) -> np.ndarray:
        """Per-sample unit statistic [N, C] of ``layer``: ``kind`` activation/relevance, ``stat`` a name
        of the layout (``value``, ``rf``, ``max``, ``mean`` / ``value``, ``rf``, ``sum``)."""
        self._check_layer(layer)
        return self.read(f"layers/{layer}/{kind}/{stat}", rows)

    def references(self, layer: str, mode: str = "activation") -> dict[str, np.ndarray]:
        """The ActMax (``activation``) or RelMax (``relevance``) pool: ``ids``, ``values``, ``rf``, each [P, C]."""
        self._check_layer(layer)
        return {key: self.read(f"layers/{layer}/references/{mode}/{key}") for key in ("ids", "values", "rf")}

    def crop_embeddings(self, layer: str, mode: str = "activation") -> np.ndarray:
        """Embeddings of relevance crops of the first K references per unit, [K, C, D]."""
        self._check_layer(layer)
        name = f"layers/{layer}/crops/{mode}/embedding"
        if not self.has(name):
            raise KeyError(f"{self.path} holds no {mode} crops for {layer}; run the analysis with crop_count > 0")
        return self.read(name)

    def rows_of(self, sample_ids: np.ndarray) -> np.ndarray:
        """Store rows of dataset indices (the inverse of ``sample_index``)."""
        index = self.sample_index
        order = np.argsort(index)
        position = np.searchsorted(index, sample_ids, sorter=order)
        rows = order[np.clip(position, 0, len(index) - 1)]
        if not np.array_equal(index[rows], np.asarray(sample_ids)):
            raise KeyError("some sample ids are not in the store")
        return rows

    def write_group(self, name: str, arrays: dict[str, np.ndarray], attrs: dict | None = None) -> None:
        """Replace group ``name`` with ``arrays`` and ``attrs``, atomically and under the writer lock."""
        with WriterLock(self.path), atomic_h5(self.path) as handle:
            if name in handle:
                del handle[name]
            group = handle.create_group(name)
            for key, value in arrays.items():
                group.create_dataset(key, data=value)
            for key, value in (attrs or {}).items():
                group.attrs[key] = value

    def read_group(self, name: str) -> tuple[dict[str, np.ndarray], dict]:
        with self.open() as handle:
            if name not in handle:
                raise KeyError(f"{name!r} is not in {self.path}")
            group = handle[name]
            return {key: group[key][()] for key in group if isinstance(group[key], h5py.Dataset)}, dict(group.attrs)
