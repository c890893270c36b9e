"""``write_report``: one self-contained HTML page about the labelled units of an analysis."""
from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..scoring import LayerLabels
from ..store import StoreMismatchError, dataset_fingerprint, model_fingerprint
from . import html as H
from .content import LayerContent, layer_content, score_figure
from .images import dataset_images, figure_data_url, heatmap_image, png_data_url, thumbnail, unit_heatmaps

logger = logging.getLogger(__name__)

#: Example images (positives and negatives, each) shown per unit.
DEFAULT_EXAMPLES = 8
#: Analysis options shown in the report's header.
ANALYSIS_KEYS = ("pool_size", "max_target", "abs_norm", "relevance_target", "crop_count")
#: Units whose examples are read and attributed together.
UNITS_PER_BATCH = 4


def group_labels(labels) -> dict[str, list[LayerLabels]]:
    """``{layer: [LayerLabels, ...]}`` from that mapping or from a flat list of :class:`LayerLabels`."""
    if isinstance(labels, Mapping):
        grouped = {str(layer): list(items) for layer, items in labels.items()}
    else:
        grouped = {}
        for item in labels:
            grouped.setdefault(item.layer, []).append(item)
    for layer, items in grouped.items():
        if not items:
            raise ValueError(f"no labels given for layer {layer!r}")
        for item in items:
            if item.layer != layer:
                raise ValueError(f"labels of layer {item.layer!r} were given under layer {layer!r}")
    return grouped


def _check_inputs(store, model, dataset) -> None:
    """The model and dataset must be the analysed ones, or heatmaps and images would lie."""
    stored = store.fingerprint
    if model is not None and "model" in stored and model_fingerprint(model) != stored["model"]:
        raise StoreMismatchError(
            f"the model given to the report is not the one {store.path} was made with; pass the analysed "
            "model (same architecture and weights) or model=None to leave out the heatmaps")
    if dataset is not None and "dataset" in stored and dataset_fingerprint(dataset) != stored["dataset"]:
        raise StoreMismatchError(
            f"the dataset given to the report is not the one {store.path} was made with (length or samples "
            "differ); pass the analysed dataset")


def _meta(store, labels: dict[str, list[LayerLabels]], composite) -> list[tuple[str, str]]:
    fingerprint = store.fingerprint
    model = fingerprint.get("model", {})
    dataset = fingerprint.get("dataset", {})
    composite_info = fingerprint.get("composite", {})
    methods = sorted({item.method for items in labels.values() for item in items})
    config = store.config
    rows = [
        ("store", str(store.path)),
        ("model", f"{model.get('class', '?')} (weights {model.get('weights', '?')})"),
        ("dataset", f"{dataset.get('class', '?')}, {store.num_samples} samples analysed"),
        ("encoder", str(fingerprint.get("encoder", {}).get("spec", "?"))),
        ("composite", str(composite_info.get("class") or (type(composite).__name__ if composite else "none"))
         + (f" with {', '.join(composite_info.get('canonizers', []))}" if composite_info.get("canonizers") else "")),
        ("analysis", ", ".join(f"{key}={config[key]}" for key in ANALYSIS_KEYS if key in config)),
        ("methods", ", ".join(methods)),
        ("made", f"{datetime.datetime.now().isoformat(timespec='seconds')} by crp-csp {__version__} "
                 f"(store by {store.crp_csp_version})"),
    ]
    return rows


def _examples_of_units(content: LayerContent, rows, dataset, attribution, composite, *, examples: int,
                       preprocess_fn, encoder_input_fn, device) -> list[tuple[list[H.Example], list[H.Example]]]:
    """Positives (with heatmaps) and negatives of several units, with one batched attribution."""
    if dataset is None:
        return [([], []) for _ in rows]
    units = content.primary.by_unit()
    chosen = [units[row.unit] for row in rows]
    positive_ids = [unit.positives[:examples] for unit in chosen]
    negative_ids = [unit.negatives[:examples] for unit in chosen]
    flat_positives = [sample for ids in positive_ids for sample in ids]
    images = dataset_images(dataset, flat_positives + [sample for ids in negative_ids for sample in ids])
    shown = encoder_input_fn(images) if encoder_input_fn is not None else images
    heatmaps = [None] * len(flat_positives)
    if attribution is not None and flat_positives:
        owners = [row.unit for row, ids in zip(rows, positive_ids) for _ in ids]
        maps = unit_heatmaps(attribution, composite, images[:len(flat_positives)], content.layer, owners,
                             preprocess_fn=preprocess_fn, device=device)
        heatmaps = [png_data_url(heatmap_image(heatmap)) for heatmap in maps]
    thumbnails = [png_data_url(thumbnail(image)) for image in shown]
    results, position, negative_position = [], 0, len(flat_positives)
    for unit, pos_ids, neg_ids in zip(chosen, positive_ids, negative_ids):
        positives = [H.Example(int(sample), thumbnails[position + i], heatmaps[position + i], unit.positive_weights[i])
                     for i, sample in enumerate(pos_ids)]
        negatives = [H.Example(int(sample), thumbnails[negative_position + i], None, unit.negative_similarity[i])
                     for i, sample in enumerate(neg_ids)]
        position += len(pos_ids)
        negative_position += len(neg_ids)
        results.append((positives, negatives))
    return results


def _circuit_sections(circuits, layer: str, units: set[int]) -> list[str]:
    """HTML of the circuits whose root is one of ``units`` of ``layer``."""
    shown = []
    for circuit in circuits or []:
        root = circuit.nodes[0]
        if root.layer == layer and root.unit in units:
            shown.append(H.circuit_section(circuit, figure_data_url(circuit.plot())))
    return shown


def write_report(
    store,
    labels: Mapping[str, Sequence[LayerLabels]] | Sequence[LayerLabels],
    path: str | os.PathLike,
    *,
    model: torch.nn.Module | None = None,
    dataset=None,
    composite=None,
    evaluations: Mapping[tuple[str, str], object] | None = None,
    units_per_layer: int | None = None,
    preprocess_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    encoder_input_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    examples: int = DEFAULT_EXAMPLES,
    device: str = "cpu",
    title: str = "crp-csp unit labels",
    progress: bool = True,
    circuits: Sequence | None = None,
) -> Path:
    """Write a self-contained HTML report (inline CSS/JS, images as base64 PNG) to ``path``.

    Parameters
    ----------
    store : the :class:`~crp_csp.store.AnalysisStore` the labels were made from.
    labels : ``{layer: [LayerLabels, ...]}`` (one per method), or a flat list of them. Per layer, a
        CSP result is the primary method and a SemanticLens result its comparison.
    path : the ``.html`` file to write (written atomically).
    model, composite, preprocess_fn : the analysed model, the zennit composite and the model's
        preprocessing, for CRP heatmaps of the positives (model None: no heatmaps).
    dataset : the analysed dataset, for the example images (None: no images).
    evaluations : ``{(layer, method): LabelEvaluation or its to_dict()}``; faithfulness columns show
        a dash where there is none.
    units_per_layer : units per layer shown in detail (examples, heatmaps, rankings), in unit order;
        None shows all. The overview table always lists every unit.
    encoder_input_fn : maps dataset images to [0, 1] images for display, as in the analysis.
    examples : positives and negatives shown per unit.
    device : where the heatmaps are computed.
    progress : show a progress bar.
    circuits : :class:`~crp_csp.circuits.Circuit` objects (e.g. from :func:`~crp_csp.circuits.build_circuit`);
        each one whose root is a unit shown in detail is drawn after its layer's section.

    Returns
    -------
    Path
        ``path``.
    """
    from crp.attribution import CondAttribution

    grouped = group_labels(labels)
    _check_inputs(store, model, dataset)
    path = Path(path)
    attribution = None
    requires_grad = []
    if model is not None and dataset is not None:
        model = model.to(device).eval()
        requires_grad = [parameter.requires_grad for parameter in model.parameters()]
        attribution = CondAttribution(model, device=torch.device(device))
    sections = []
    try:
        for layer, items in grouped.items():
            content = layer_content(store, layer, items, evaluations)
            plot = figure_data_url(score_figure(content))
            limit = len(content.rows) if units_per_layer is None else max(0, int(units_per_layer))
            chosen = content.rows[:limit]
            units_html = []
            with tqdm(total=len(chosen), desc=f"report {layer}", unit="unit", disable=not progress) as bar:
                for start in range(0, len(chosen), UNITS_PER_BATCH):
                    batch = chosen[start:start + UNITS_PER_BATCH]
                    found = _examples_of_units(
                        content, batch, dataset, attribution, composite, examples=examples,
                        preprocess_fn=preprocess_fn, encoder_input_fn=encoder_input_fn, device=device)
                    for row, (positives, negatives) in zip(batch, found):
                        units_html.append(H.unit_section(content, row, positives, negatives))
                    bar.update(len(batch))
            sections.append(H.layer_section(content, plot, "".join(units_html), {row.unit for row in chosen}))
            sections.extend(_circuit_sections(circuits, layer, {row.unit for row in chosen}))
    finally:
        for parameter, flag in zip(model.parameters() if requires_grad else [], requires_grad):
            parameter.requires_grad_(flag)
    text = H.page(title, _meta(store, grouped, composite), list(grouped), sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    logger.debug("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
