"""Circuits: the lower-layer units that carry a unit's (or a class output's) relevance, with their labels.

A circuit is found by conditional attribution (zennit-crp's ``CondAttribution``), as zennit-crp's
``AttributionGraph`` does for one sample, but over several samples at once and with CSP labels:

1. Condition on the root, e.g. ``{"y": [t]}`` for class output ``t``, and record every layer of the
   circuit: ``R_d(x | root)`` is the relevance of unit ``d`` (summed over its positions) for the root.
2. For each node ``p`` at one layer, condition on the root *and* on ``p`` and record the next layer:
   ``R_d(x | root, p)``, the part of ``p``'s relevance that flows through ``d``.
3. The edge ``p -> d`` carries the share ``R_d(x | root, p) / R_p(x | root)`` per sample; its weight
   is the mean of these shares over the samples. The ``width`` children of ``p`` with the largest
   mean share become nodes of the next layer (a unit reached from several parents is one node).

The channel masks partition the relevance exactly, so that the children's relevances of all units of
a layer add up to that layer's relevance for the root. Within one edge the shares of *all* children
sum to one, less what the rules give to biases and stabilisers: with ``EpsilonPlusFlat`` and merged
BatchNorm, the ``ZPlus`` rule of a convolution keeps a positive (merged) bias in its denominator, and
the ``Epsilon`` rule of a linear layer loses its bias share ``b / z``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

#: Name zennit-crp gives the model output in conditions.
OUTPUT = "y"
#: Default label method (name or prefix of the labels saved in the store).
DEFAULT_METHOD = "csp"
#: Parent relevances at or below this fraction of the largest one do not count in a mean share.
MIN_PARENT_FRACTION = 1e-6


def node_key(layer: str, unit: int) -> str:
    """``"layer:unit"``, the name of a node in a circuit's JSON."""
    return f"{layer}:{int(unit)}"


def parse_node(text: str) -> tuple[str, int]:
    """``"fc:3"`` -> ``("fc", 3)`` (the layer name may contain dots, not colons)."""
    layer, sep, unit = str(text).rpartition(":")
    if not sep or not layer or not unit.strip().lstrip("-").isdigit():
        raise ValueError(f"expected LAYER:UNIT such as fc:3 or features.conv4:12, got {text!r}")
    return layer, int(unit)


@dataclasses.dataclass
class CircuitNode:
    """A unit of the circuit: ``share`` is its relevance for the root over the root's relevance (mean over
    the samples); ``label``, ``score`` and ``labels`` are its CSP labels (empty where none were given)."""

    layer: str
    unit: int
    depth: int
    share: float
    relevance: float
    label: str | None = None
    score: float | None = None
    labels: list[str] = dataclasses.field(default_factory=list)
    scores: list[float] = dataclasses.field(default_factory=list)

    @property
    def key(self) -> str:
        return node_key(self.layer, self.unit)


@dataclasses.dataclass
class CircuitEdge:
    """``parent -> child``: ``share`` is the mean over samples of ``R_child(x | root, parent) / R_parent(x | root)``,
    ``share_std`` its spread, ``relevance`` the mean of ``R_child(x | root, parent)``."""

    parent: str
    child: str
    share: float
    share_std: float
    relevance: float


@dataclasses.dataclass
class Circuit:
    """The result of :func:`build_circuit`: nodes (root first, by depth), edges, sample ids and configuration."""

    root: str
    nodes: list[CircuitNode]
    edges: list[CircuitEdge]
    samples: list[int]
    config: dict

    def node(self, key: str) -> CircuitNode:
        for node in self.nodes:
            if node.key == key:
                return node
        raise KeyError(f"{key!r} is not a node of the circuit of {self.root}")

    def children(self, key: str) -> list[CircuitEdge]:
        """The edges out of node ``key``, largest share first."""
        return sorted((edge for edge in self.edges if edge.parent == key), key=lambda edge: -edge.share)

    def to_dict(self) -> dict:
        return {"root": self.root, "config": self.config, "samples": self.samples,
                "nodes": [{"key": node.key, **dataclasses.asdict(node)} for node in self.nodes],
                "edges": [dataclasses.asdict(edge) for edge in self.edges]}

    def to_json(self, path: str | os.PathLike | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> "Circuit":
        fields = {field.name for field in dataclasses.fields(CircuitNode)}
        nodes = [CircuitNode(**{key: value for key, value in node.items() if key in fields}) for node in data["nodes"]]
        return cls(data["root"], nodes, [CircuitEdge(**edge) for edge in data["edges"]], list(data["samples"]),
                   dict(data["config"]))

    def summary(self, children: int = 3) -> str:
        """One line per node: its label and its strongest children with their shares."""
        lines = []
        for node in self.nodes:
            edges = self.children(node.key)[:children]
            text = ", ".join(f"{edge.child} ({self.node(edge.child).label or '?'}) {edge.share:.2f}" for edge in edges)
            lines.append(f"{node.key} [{node.label or '?'}]" + (f" <- {text}" if text else ""))
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike | None = None, **options):
        """A layered picture of the circuit (see :func:`crp_csp.circuits.plot_circuit`); returns the figure."""
        from .plot import plot_circuit

        return plot_circuit(self, path, **options)


# ---------------------------------------------------------------------------------------------
# labels


def saved_labels(store, layers: Sequence[str], method: str = DEFAULT_METHOD) -> dict:
    """``{layer: LayerLabels}`` saved in ``store`` under a method named ``method`` or starting with it."""
    from ..scoring import LayerLabels

    with store.open() as handle:
        saved = {name: list(handle["labels"][name]) for name in handle["labels"]} if "labels" in handle else {}
    names = sorted(name for name in saved if name == method or name.startswith(method))
    result = {}
    for layer in layers:
        for name in ([method] if method in names else []) + names:
            if layer in saved[name]:
                result[layer] = LayerLabels.load(store, layer, name)
                break
    return result


def _label_node(node: CircuitNode, labels: Mapping, class_names: Sequence[str] | None) -> None:
    layer_labels = labels.get(node.layer)
    unit = layer_labels.by_unit().get(node.unit) if layer_labels is not None else None
    if unit is not None:
        node.labels, node.scores = list(unit.labels), [float(score) for score in unit.scores]
        node.label, node.score = node.labels[0], node.scores[0]
    elif node.depth == 0 and class_names is not None and 0 <= node.unit < len(class_names):
        node.label, node.labels = str(class_names[node.unit]), [str(class_names[node.unit])]


# ---------------------------------------------------------------------------------------------
# attribution


def _unit_relevance(relevance: torch.Tensor) -> torch.Tensor:
    """[B, C, ...] -> [B, C]: a unit's relevance summed over its positions."""
    return relevance.flatten(2).sum(2) if relevance.dim() > 2 else relevance


def _is_output_layer(model, layer: str, data: torch.Tensor) -> bool:
    """Whether ``layer``'s output is the model's output (then a condition on it starts at the logits)."""
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise KeyError(f"layer {layer!r} is not a module of the model")
    seen = {}
    handle = module.register_forward_hook(lambda _module, _input, output: seen.setdefault("output", output))
    try:
        with torch.no_grad():
            output = model(data[:1])
    finally:
        handle.remove()
    return seen.get("output") is output


class _Conditioner:
    """Runs ``CondAttribution`` for one root over the circuit's samples, in batches."""

    def __init__(self, attribution, composite, data: torch.Tensor, root: tuple[str, int], root_is_output: bool,
                 batch_size: int):
        self.attribution, self.composite, self.data = attribution, composite, data
        self.root, self.root_is_output, self.batch_size = root, root_is_output, batch_size

    def root_condition(self) -> dict:
        layer, unit = self.root
        return {OUTPUT: [unit]} if self.root_is_output else {layer: [unit]}

    def __call__(self, parents: Sequence[tuple[str, int] | None], record: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{layer: [P, S, C]}``: unit relevances at the ``record`` layers, conditioned on the root and on
        each parent (None: the root alone)."""
        samples = len(self.data)
        conditions = []
        for parent in parents:
            condition = self.root_condition()
            if parent is not None:
                condition[parent[0]] = [parent[1]]
            conditions.extend([dict(condition) for _ in range(samples)])
        start_layer = None if self.root_is_output else self.root[0]
        parts = {layer: [] for layer in record}
        for begin in range(0, len(conditions), self.batch_size):
            chunk = conditions[begin:begin + self.batch_size]
            rows = torch.arange(begin, begin + len(chunk)) % samples
            data = self.data[rows].clone().requires_grad_(True)
            result = self.attribution(data, chunk, self.composite, record_layer=list(record),
                                      start_layer=start_layer, exclude_parallel=False)
            for layer in record:
                parts[layer].append(_unit_relevance(result.relevances[layer].detach()).double().cpu())
        return {layer: torch.cat(parts[layer]).reshape(len(parents), samples, -1) for layer in record}


def _mean_share(child: torch.Tensor, parent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over samples of ``child [S, C] / parent [S]``, leaving out samples whose parent
    relevance is (almost) zero."""
    keep = parent.abs() > MIN_PARENT_FRACTION * parent.abs().max().clamp_min(1e-30)
    if not bool(keep.any()):
        zeros = torch.zeros(child.shape[1], dtype=child.dtype)
        return zeros, zeros
    shares = child[keep] / parent[keep, None]
    return shares.mean(0), (shares.std(0, unbiased=False) if len(shares) > 1 else torch.zeros(child.shape[1]))


def root_samples(store, root: tuple[str, int], samples: int) -> list[int]:
    """The first ``samples`` of the root's RelMax references in ``store`` that have positive relevance."""
    layer, unit = root
    if layer not in store.layers:
        raise KeyError(f"the root layer {layer!r} is not in the analysis ({', '.join(store.layers)}); pass "
                       "sample_ids=...")
    references = store.references(layer, "relevance")
    ids, values = references["ids"][:, unit], references["values"][:, unit]
    chosen = [int(sample) for sample, value in zip(ids, values) if value > 0][:samples]
    if not chosen:
        raise ValueError(f"{node_key(layer, unit)} has no reference sample with positive relevance in {store.path}")
    return chosen


def build_circuit(
    model: torch.nn.Module,
    composite,
    dataset,
    store=None,
    *,
    root: tuple[str, int] | str,
    layers: Sequence[str],
    width: int | None = 5,
    samples: int = 10,
    sample_ids: Sequence[int] | None = None,
    labels: Mapping | None = None,
    label_method: str = DEFAULT_METHOD,
    preprocess_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    device: str = "cpu",
    batch_size: int = 64,
) -> Circuit:
    """The circuit of ``root``: per layer of ``layers``, the ``width`` units that carry most of each node's relevance.

    Parameters
    ----------
    model, composite : the analysed model and its zennit composite (with its canonizers).
    dataset : the analysed dataset (items ``(image, target)``).
    store : the :class:`~crp_csp.store.AnalysisStore`; gives the root's RelMax reference samples and,
        unless ``labels`` is given, the saved labels of method ``label_method``. May be None with
        ``sample_ids`` and ``labels``.
    root : ``(layer, unit)`` or ``"layer:unit"``: a unit, or a class output (the model's last layer, or
        ``"y"``), whose relevance starts at its logit. A unit of an inner layer starts from its activation.
    layers : the lower layers, from the root down (a leading root layer is ignored).
    width : children kept per node (None or 0: all units of the layer).
    samples : how many of the root's RelMax references are used (those with positive relevance).
    sample_ids : dataset indices to use instead (one id: the circuit of that sample).
    labels : ``{layer: LayerLabels}`` for the nodes' labels (default: the store's, by ``label_method``).
    preprocess_fn : the model's input preprocessing, as in the analysis.
    device, batch_size : where and in how large batches the attributions run.

    Returns
    -------
    Circuit
    """
    from crp.attribution import CondAttribution

    root = parse_node(root) if isinstance(root, str) else (str(root[0]), int(root[1]))
    layers = [str(layer) for layer in layers]
    if layers and layers[0] == root[0]:
        layers = layers[1:]
    modules = dict(model.named_modules())
    unknown = [layer for layer in [root[0], *layers] if layer not in modules and layer != OUTPUT]
    if unknown:
        raise KeyError(f"{', '.join(unknown)} not a module of the model (e.g. {', '.join(list(modules)[1:4])})")
    if not layers:
        raise ValueError("layers: give at least one layer below the root, e.g. ['features.conv4']")
    given = sample_ids is not None
    if sample_ids is None:
        if store is None:
            raise ValueError("give a store (for the root's reference samples) or sample_ids")
        sample_ids = root_samples(store, root, int(samples))
    sample_ids = [int(sample) for sample in sample_ids]
    if labels is None:
        labels = saved_labels(store, [root[0], *layers], label_method) if store is not None else {}
    images = torch.stack([torch.as_tensor(dataset[sample][0]) for sample in sample_ids])
    data = (preprocess_fn(images) if preprocess_fn is not None else images).to(device)
    model = model.to(device).eval()
    requires_grad = [parameter.requires_grad for parameter in model.parameters()]
    try:
        root_is_output = root[0] == OUTPUT or _is_output_layer(model, root[0], data)
        run = _Conditioner(CondAttribution(model, device=torch.device(device)), composite, data, root,
                           root_is_output, int(batch_size))
        recorded = layers if root[0] == OUTPUT else [root[0], *layers]
        unconditioned = {layer: value[0] for layer, value in run([None], recorded).items()}  # R_d(x | root), [S, C]
        if root[0] == OUTPUT:
            with torch.no_grad():
                root_relevance = model(data)[:, root[1]].double().cpu()
        else:
            root_relevance = unconditioned[root[0]][:, root[1]]
        relevance_of = {node_key(*root): root_relevance}
        nodes = [CircuitNode(root[0], root[1], 0, 1.0, float(root_relevance.mean()))]
        edges, frontier = [], [root]
        for depth, layer in enumerate(layers, start=1):
            found = run([None if parent == root else parent for parent in frontier], [layer])[layer]
            chosen = []
            for parent, child in zip(frontier, found):
                mean, std = _mean_share(child, relevance_of[node_key(*parent)])
                keep = len(mean) if not width else min(int(width), len(mean))
                for unit in torch.argsort(mean, descending=True)[:keep].tolist():
                    edges.append(CircuitEdge(node_key(*parent), node_key(layer, unit), float(mean[unit]),
                                             float(std[unit]), float(child[:, unit].mean())))
                    if (layer, unit) not in chosen:
                        chosen.append((layer, unit))
            for layer_, unit in chosen:
                relevance = unconditioned[layer_][:, unit]
                relevance_of[node_key(layer_, unit)] = relevance
                share, _ = _mean_share(relevance[:, None], root_relevance)
                nodes.append(CircuitNode(layer_, unit, depth, float(share[0]), float(relevance.mean())))
            frontier = chosen
    finally:
        for parameter, flag in zip(model.parameters(), requires_grad):
            parameter.requires_grad_(flag)
    class_names = getattr(dataset, "classes", None)
    for node in nodes:
        _label_node(node, labels, class_names)
    config = {"root": node_key(*root), "layers": layers, "width": width, "samples": len(sample_ids),
              "sample_source": "given" if given else "relevance references",
              "root_start": "logit" if root_is_output else "activation", "mask": "channel (all positions)",
              "composite": type(composite).__name__ if composite is not None else None,
              "canonizers": [type(c).__name__ for c in getattr(composite, "canonizers", []) or []],
              "labels": {layer: item.method for layer, item in labels.items()},
              "share": "mean over samples of R_child(x|root,parent) / R_parent(x|root)"}
    logger.debug("circuit of %s: %d nodes, %d edges", config["root"], len(nodes), len(edges))
    return Circuit(node_key(*root), nodes, edges, sample_ids, config)
