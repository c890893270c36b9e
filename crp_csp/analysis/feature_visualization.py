"""A drop-in for ``crp.visualization.FeatureVisualization`` whose ``run`` is the crp-csp one pass.

An existing zennit-crp script changes by one line::

    fv = CSPFeatureVisualization(attribution, dataset, layer_map, preprocess_fn=..., path="fv",
                                 encoder=load_encoder("demo"))
    fv.run(composite, 0, len(dataset))
    fv.get_max_reference([3], "features.conv4", "relevance", (0, 8), composite=composite)
    fv.store  # the AnalysisStore with statistics, embeddings and crops

``run`` writes crp's result files (ActMax/RelMax reference files, with the whole pool rather than
40; ActStats/RelStats per-class files) from the store, so ``get_max_reference``,
``get_stats_reference`` and the rest of crp keep working; ``compute_stats`` is re-implemented
because crp 0.6.0's fails on numpy 2.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from crp.helper import load_statistics
from crp.maximization import Maximization
from crp.statistics import Statistics
from crp.visualization import FeatureVisualization

from ..encoders import ImageTextEncoder, load_encoder
from ..store import AnalysisStore
from .config import CRP_SAMPLE_SIZE, AnalysisConfig
from .runner import run_analysis

MODES = {"activation": "ActMax", "relevance": "RelMax"}


class CSPFeatureVisualization(FeatureVisualization):
    """``FeatureVisualization`` plus an image encoder; ``run`` also writes an :class:`AnalysisStore`.

    Extra parameters (keywords): ``encoder`` (an :class:`ImageTextEncoder` or spec string),
    ``store_path`` (default ``<path>/analysis.h5``), ``config`` (:class:`AnalysisConfig`; its
    ``max_target``/``abs_norm`` are taken from this object's), ``encoder_input_fn``.
    """

    def __init__(self, attribution, dataset, layer_map, preprocess_fn=None, max_target="sum", abs_norm=True,
                 path="FeatureVisualization", device=None, cache=None, *,
                 encoder: ImageTextEncoder | str = "demo", store_path=None, config: AnalysisConfig | None = None,
                 encoder_input_fn=None):
        super().__init__(attribution, dataset, layer_map, preprocess_fn=preprocess_fn, max_target=max_target,
                         abs_norm=abs_norm, path=path, device=device, cache=cache)
        self.encoder = load_encoder(encoder) if isinstance(encoder, str) else encoder
        self.path = Path(path)
        self.store_path = Path(store_path) if store_path else self.path / "analysis.h5"
        base = config or AnalysisConfig()
        self.config = AnalysisConfig(**{**base.__dict__, "max_target": max_target, "abs_norm": abs_norm,
                                        "device": str(self.device)})
        self.encoder_input_fn = encoder_input_fn
        self.store: AnalysisStore | None = None

    def run(self, composite, data_start=0, data_end=None, batch_size=32, checkpoint=500, on_device=None,
            overwrite=False):
        """The one pass over ``[data_start, data_end)``; returns the crp result files written."""
        data_end = len(self.dataset) if data_end is None else data_end
        config = AnalysisConfig(**{**self.config.__dict__, "batch_size": batch_size,
                                   "chunk_size": max(batch_size, checkpoint * batch_size)})
        self.store = run_analysis(
            self.attribution.model, self.dataset, self.encoder, self.layer_map, self.store_path,
            composite=composite, attribution=self.attribution, config=config, preprocess_fn=self.preprocess_fn,
            encoder_input_fn=self.encoder_input_fn, sample_range=(data_start, data_end), overwrite=overwrite,
        )
        return write_crp_results(self.store, self.RelMax, self.ActMax, self.RelStats, self.ActStats)

    def compute_stats(self, concept_id, layer_name: str, mode="relevance", top_N=5, mean_N=10, norm=False):
        """zennit-crp's ``compute_stats``; crp 0.6.0's own fails on numpy 2 (``np.int`` in
        ``load_stat_targets``). Returns the ``top_N`` classes with the highest mean value of the
        concept over their ``mean_N`` top samples."""
        if mode not in ("relevance", "activation"):
            raise ValueError("`mode` must be `relevance` or `activation`")
        path = self.RelStats.PATH if mode == "relevance" else self.ActStats.PATH
        targets = np.load(path / "targets.npy").astype(int)
        means = torch.tensor([float(load_statistics(path, layer_name, t)[1][:mean_N, concept_id].mean())
                              for t in targets])
        order = torch.argsort(means, descending=True)[:top_N]
        values = means[order]
        return targets[order.numpy()], values / values[0] if norm else values


def write_crp_results(store: AnalysisStore, rel_max: Maximization, act_max: Maximization,
                      rel_stats: Statistics, act_stats: Statistics) -> dict[str, list[str]]:
    """Write zennit-crp's reference and statistics files from ``store``."""
    saved = {"r_max": [], "a_max": [], "r_stats": [], "a_stats": []}
    targets = store.targets()
    index = store.sample_index
    for layer in store.layers:
        for mode, maximization, statistics, key in (
            ("activation", act_max, act_stats, "a"), ("relevance", rel_max, rel_stats, "r"),
        ):
            pool = store.references(layer, mode)
            prefix = maximization.PATH / f"{layer}_"
            np.save(f"{prefix}data.npy", pool["ids"])
            np.save(f"{prefix}rel.npy", pool["values"])
            np.save(f"{prefix}rf.npy", pool["rf"])
            saved[f"{key}_max"].append(str(prefix))
            values = store.statistic(layer, mode, "value")
            rf = store.statistic(layer, mode, "rf")
            folder = statistics.PATH / layer
            folder.mkdir(parents=True, exist_ok=True)
            for target in np.unique(targets):
                rows = np.nonzero(targets == target)[0]
                order = np.argsort(-values[rows], axis=0, kind="stable")[:CRP_SAMPLE_SIZE]
                chosen = rows[order]
                np.save(folder / f"{target}_data.npy", index[chosen])
                np.save(folder / f"{target}_rel.npy", np.take_along_axis(values, chosen, 0))
                np.save(folder / f"{target}_rf.npy", np.take_along_axis(rf, chosen, 0))
                saved[f"{key}_stats"].append(str(folder / f"{target}_"))
            np.save(statistics.PATH / "targets.npy", np.unique(targets))
    return saved
