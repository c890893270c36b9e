"""The one analysis pass: CRP relevances, unit statistics, reference pools and CLIP embeddings.

One forward/backward pass per batch under the user's zennit composite yields every mapped layer's
activations and relevances; the same batch goes through the image encoder. Results are written in
parts (one file per ``chunk_size`` samples, renamed into place when complete), so a killed run
resumes where it stopped. When all parts exist, the reference pools (ActMax / RelMax, top
``pool_size`` per unit) are merged from them, relevance crops of the references are embedded, and
the HDF5 store is written in one atomic step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept, Concept
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .. import __version__
from ..encoders import ImageTextEncoder
from ..store import (
    SCHEMA_VERSION, AnalysisStore, StoreMismatchError, WriterLock, atomic_h5, composite_fingerprint,
    create_matrix, dataset_fingerprint, fingerprint_difference, model_fingerprint,
)
from ..units.insertion import ReconstructionError
from ..units.tokens import TokenConcept, describe_concept, unit_layout
from .config import AnalysisConfig
from .crops import embed_reference_crops
from .distributed import ProcessGroup, current_process_group, rank_device
from .recording import find_layers, record_layers
from .statistics import ACTIVATION_STATS, RELEVANCE_STATS, activation_statistics, merge_top, relevance_statistics

logger = logging.getLogger(__name__)

MODES = ("activation", "relevance")


def _callable_name(fn) -> str | None:
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


def normalise_layer_map(model: nn.Module, layer_map: Mapping[str, Concept] | Sequence[str],
                        config: AnalysisConfig | None = None) -> dict[str, Concept]:
    """Accept ``{name: ChannelConcept()}`` as zennit-crp does (or :class:`~crp_csp.units.TokenConcept`
    for transformer tokens), or a list of names."""
    if isinstance(layer_map, str):
        layer_map = [layer_map]
    if not isinstance(layer_map, Mapping):
        layer_map = {name: ChannelConcept() for name in layer_map}
    if not layer_map:
        raise ValueError("layer_map is empty; name at least one layer, e.g. {'features.conv4': ChannelConcept()}")
    modules = find_layers(model, list(layer_map))
    for name, concept in layer_map.items():
        if not isinstance(concept, (ChannelConcept, TokenConcept)):
            raise TypeError(
                f"layer {name!r} maps to {type(concept).__name__}; crp-csp supports crp's ChannelConcept "
                "(conv channels, linear neurons, SAE latents) and crp_csp.units.TokenConcept (transformer tokens)"
            )
    tokens = [name for name, concept in layer_map.items() if isinstance(concept, TokenConcept)]
    if tokens and config is not None and config.crop_count:
        raise ValueError(
            f"relevance crops are not supported for token units ({', '.join(tokens)}); "
            "pass AnalysisConfig(crop_count=0)"
        )
    errors = [name for name, module in modules.items() if isinstance(module, ReconstructionError)]
    if errors and config is not None and config.crop_count:
        raise ValueError(f"SAE error terms ({', '.join(errors)}) have no relevance crops; pass AnalysisConfig(crop_count=0)")
    if tokens:
        logger.warning(
            "token units %s: no LRP rules for attention (zennit-crp has none; lxt 2.1 needs zennit >= 0.5), so "
            "their relevances are the composite's gradient, not conservative LRP; use activation-based references",
            tokens,
        )
    return dict(layer_map)


def _split_sample(sample) -> tuple[torch.Tensor, int]:
    if isinstance(sample, (tuple, list)):
        image, target = sample[0], sample[1] if len(sample) > 1 else -1
    else:
        image, target = sample, -1
    return torch.as_tensor(image), int(target) if not isinstance(target, torch.Tensor) else int(target.item())


def _check_first_sample(dataset: Dataset) -> tuple[int, ...]:
    if len(dataset) == 0:
        raise ValueError("the dataset is empty; the analysis needs at least one sample")
    image, _ = _split_sample(dataset[0])
    if image.ndim != 3:
        raise ValueError(
            f"dataset samples must be images [C, H, W] (a tensor, or (tensor, label)); got shape "
            f"{tuple(image.shape)}; add torchvision.transforms.ToTensor() to the dataset's transform"
        )
    return tuple(image.shape)


def _collate(batch):
    images, targets = zip(*(_split_sample(sample) for sample in batch))
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"samples of different shapes in one batch: {sorted(shapes)}; resize them to one size in "
            "the dataset's transform"
        )
    return torch.stack(images), torch.tensor(targets, dtype=torch.long)


class _PartWriter:
    """Checkpoint parts ``part_<start>.npz`` in ``<store>.parts/``, each renamed into place when whole."""

    def __init__(self, store_path: Path):
        self.folder = Path(f"{store_path}.parts")

    def meta_path(self) -> Path:
        return self.folder / "meta.json"

    def prepare(self, meta: dict, overwrite: bool) -> None:
        if self.folder.exists():
            stored = json.loads(self.meta_path().read_text()) if self.meta_path().exists() else None
            if stored != meta:
                if not overwrite:
                    differing = fingerprint_difference(stored or {}, meta)
                    raise StoreMismatchError(
                        f"{self.folder} holds an unfinished analysis with other settings "
                        f"(differs in: {', '.join(differing)}); pass overwrite=True to start over, "
                        "or choose another store path"
                    )
                shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not self.meta_path().exists():
            self._atomic_write(self.meta_path(), lambda f: f.write(json.dumps(meta).encode()))

    @staticmethod
    def _atomic_write(path: Path, write: Callable) -> None:
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def part_path(self, start: int) -> Path:
        return self.folder / f"part_{start:012d}.npz"

    def has(self, name: str) -> bool:
        return (self.folder / name).exists()

    def write_part(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        self._atomic_write(self.part_path(start), lambda f: np.savez(f, **arrays))

    def write_array(self, name: str, array: np.ndarray) -> None:
        self._atomic_write(self.folder / name, lambda f: np.save(f, array))

    def read_array(self, name: str) -> np.ndarray:
        return np.load(self.folder / name)

    def read_part(self, start: int) -> dict[str, np.ndarray]:
        try:
            with np.load(self.part_path(start)) as part:
                return {key: part[key] for key in part.files}
        except (OSError, ValueError) as error:
            raise StoreMismatchError(
                f"checkpoint {self.part_path(start)} is unreadable ({error}); delete it and run again"
            ) from None

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _part_starts(start: int, end: int, step: int) -> list[int]:
    return list(range(start, end, step))


def _record_batch(modified, recording, images, targets, config: AnalysisConfig):
    """One forward/backward pass of the composite-modified model; ``recording`` holds its layers."""
    device = torch.device(config.device)
    data = images.to(device=device, dtype=config.torch_dtype).requires_grad_(True)
    recording.activations.clear()
    recording.relevances.clear()
    try:
        output = modified(data)
    except RuntimeError as error:
        raise ValueError(
            f"the model failed on a batch of shape {tuple(data.shape)}: {error}. Check that the dataset's "
            "samples, after preprocess_fn, have the shape the model expects"
        ) from error
    if output.ndim != 2:
        raise ValueError(f"the model must output [batch, classes]; got shape {tuple(output.shape)}")
    prediction = output.argmax(1)
    if config.relevance_target == "label":
        if (targets < 0).any():
            raise ValueError(
                "relevance_target='label' needs dataset labels; this dataset gives none. "
                "Use AnalysisConfig(relevance_target='prediction')"
            )
        start = targets.to(device)
    else:
        start = prediction
    if start.max() >= output.shape[1]:
        raise ValueError(f"a label ({int(start.max())}) exceeds the model's {output.shape[1]} outputs")
    grad = torch.zeros_like(output)
    rows = torch.arange(len(output), device=device)
    grad[rows, start] = output[rows, start].detach()
    output.backward(grad)
    return output.detach(), prediction


def _check_finite(tensor: torch.Tensor, sample_ids, what: str) -> None:
    finite = torch.isfinite(tensor.reshape(len(tensor), -1)).all(1)
    if not finite.all():
        bad = [int(sample_ids[i]) for i in torch.nonzero(~finite).flatten()[:5]]
        raise ValueError(
            f"non-finite {what} (NaN or inf) for samples {bad}; check those samples and the model. "
            "Nothing of this batch was stored"
        )


def _batch_statistics(recording, layer_map: Mapping[str, Concept], config: AnalysisConfig,
                      sample_ids) -> dict[str, np.ndarray]:
    arrays = {}
    for name, concept in layer_map.items():
        activation, relevance = recording.activations[name], recording.relevances.get(name)
        if relevance is None:
            raise RuntimeError(f"layer {name!r} received no gradient; is it part of the path to the output?")
        _check_finite(activation, sample_ids, f"activation of layer {name!r}")
        _check_finite(relevance, sample_ids, f"relevance of layer {name!r}")
        # token units [B, T, C] become [B, C, tokens] with their own reduction; channels stay as they are
        activation, max_target = unit_layout(concept, activation, config.max_target)
        relevance, _ = unit_layout(concept, relevance, config.max_target)
        stats = {
            "activation": activation_statistics(activation, max_target, config.abs_norm),
            "relevance": relevance_statistics(relevance, max_target, config.abs_norm),
        }
        for kind, values in stats.items():
            for stat, tensor in values.items():
                arrays[f"{name}|{kind}|{stat}"] = tensor.cpu().numpy()
    return arrays


def _run_parts(model, composite, dataset, encoder, layer_map, config, writer, starts, sample_range,
               preprocess_fn, encoder_input_fn, progress) -> None:
    """Compute and write the parts beginning at ``starts`` that do not exist yet."""
    end = sample_range[1]
    step = config.samples_per_part
    missing = [s for s in starts if not writer.part_path(s).exists()]
    if not missing:
        return
    indices = [i for s in missing for i in range(s, min(s + step, end))]
    if len(missing) < len(starts):
        logger.info("resuming: %d of %d parts left", len(missing), len(starts))
    loader = DataLoader(Subset(dataset, indices), batch_size=config.batch_size, shuffle=False,
                        num_workers=config.num_workers, collate_fn=_collate)
    buffer: dict[str, list[np.ndarray]] = {}
    position = 0
    bar = tqdm(total=len(indices), desc="crp-csp analysis", unit="img", disable=not progress)
    # the composite (and its canonizers) is applied once for the whole pass, and always removed
    context = composite.context(model) if composite is not None else contextlib.nullcontext(model)
    with context as modified, record_layers(modified, list(layer_map)) as recording:
        for images, targets in loader:
            batch_ids = np.asarray(indices[position:position + len(images)])
            _check_finite(images, batch_ids, "input")
            model_input = preprocess_fn(images) if preprocess_fn is not None else images
            output, prediction = _record_batch(modified, recording, model_input, targets, config)
            _check_finite(output, batch_ids, "model output")
            arrays = _batch_statistics(recording, layer_map, config, batch_ids)
            encoder_images = encoder_input_fn(images) if encoder_input_fn is not None else images
            arrays["embedding"] = encoder.encode_images(encoder_images).float().cpu().numpy()
            arrays["target"] = targets.numpy()
            arrays["prediction"] = prediction.cpu().numpy()
            arrays["index"] = batch_ids
            for key, value in arrays.items():
                buffer.setdefault(key, []).append(value)
            position += len(images)
            bar.update(len(images))
            part_start = int(buffer["index"][0][0])
            if position == len(indices) or int(batch_ids[-1]) + 1 >= min(part_start + step, end):
                writer.write_part(part_start, {key: np.concatenate(value) for key, value in buffer.items()})
                buffer = {}
    bar.close()


def _merge_pools(writer, starts, layer_names, pool_size) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """Top ``pool_size`` samples per unit, streamed over the parts."""
    pools: dict[tuple[str, str], tuple] = {}
    for start in starts:
        part = writer.read_part(start)
        ids = torch.from_numpy(part["index"])
        for name in layer_names:
            for kind in MODES:
                values = torch.from_numpy(part[f"{name}|{kind}|value"])
                rf = torch.from_numpy(part[f"{name}|{kind}|rf"])
                if (name, kind) in pools:
                    old_values, old_ids, old_rf = pools[(name, kind)]
                    values = torch.cat([old_values, values])
                    rf = torch.cat([old_rf, rf])
                    part_ids = torch.cat([old_ids, ids.unsqueeze(1).expand(-1, values.shape[1])])
                else:
                    part_ids = ids.unsqueeze(1).expand(-1, values.shape[1])
                pools[(name, kind)] = merge_top(values, part_ids, pool_size, rf)
    return {key: {"values": v.numpy(), "ids": i.numpy(), "rf": r.numpy()} for key, (v, i, r) in pools.items()}


def _assemble(path: Path, writer, starts, layer_names, pools, crops, attrs: dict, num_samples: int) -> None:
    """Write the HDF5 store from the parts in one atomic step."""
    first = writer.read_part(starts[0])
    with atomic_h5(path, copy_existing=False) as handle:
        for key, value in attrs.items():
            handle.attrs[key] = value
        samples = handle.create_group("samples")
        datasets = {}
        for key, value in first.items():
            if "|" in key:
                name, kind, stat = key.split("|")
                group = handle.require_group(f"layers/{name}/{kind}")
                datasets[key] = create_matrix(group, stat, (num_samples,) + value.shape[1:], value.dtype)
            else:
                datasets[key] = create_matrix(samples, key, (num_samples,) + value.shape[1:], value.dtype)
        row = 0
        for start in starts:
            part = first if start == starts[0] else writer.read_part(start)
            count = len(part["index"])
            for key, value in part.items():
                datasets[key][row:row + count] = value
            row += count
        for (name, kind), pool in pools.items():
            group = handle.require_group(f"layers/{name}/references/{kind}")
            for key, value in pool.items():
                group.create_dataset(key, data=value)
        for (name, kind), embedding in crops.items():
            handle.require_group(f"layers/{name}/crops/{kind}").create_dataset("embedding", data=embedding)


def analysis_fingerprint(model, dataset, composite, layer_map, encoder, config, sample_range,
                         preprocess_fn, encoder_input_fn) -> dict:
    """What a store was made from; a store is reused only when this matches."""
    return {
        "model": model_fingerprint(model),
        "dataset": dataset_fingerprint(dataset),
        "sample_range": list(sample_range),
        "composite": composite_fingerprint(composite),
        "layers": {name: describe_concept(concept) for name, concept in layer_map.items()},
        "encoder": {"spec": encoder.spec, "weights": encoder.fingerprint()},
        "preprocess_fn": _callable_name(preprocess_fn),
        "encoder_input_fn": _callable_name(encoder_input_fn),
        "options": config.result_options(),
        "pool_size": config.pool_size,
        "crops": [config.crop_count, list(config.crop_modes)],
    }


def run_analysis(
    model: nn.Module,
    dataset: Dataset,
    encoder: ImageTextEncoder,
    layer_map: Mapping[str, Concept] | Sequence[str],
    path: str | os.PathLike,
    *,
    composite=None,
    attribution=None,
    config: AnalysisConfig | None = None,
    preprocess_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    encoder_input_fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
    sample_range: tuple[int, int] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    process_group: ProcessGroup | None = None,
) -> AnalysisStore:
    """Run the one analysis pass over ``dataset`` and return its :class:`AnalysisStore`.

    Parameters
    ----------
    model : the analysed network (its output is [batch, classes]).
    dataset : yields ``(image, label)`` or images, as zennit-crp datasets do; images as the encoder
        should see them (float [C, H, W] in [0, 1] unless ``encoder_input_fn`` maps them there).
    encoder : the CLIP-like image/text encoder (:func:`crp_csp.load_encoder`).
    layer_map : ``{layer_name: ChannelConcept()}`` as in zennit-crp, or a list of layer names; SAE latents
        (:func:`crp_csp.units.insert_sae`) are channels too, transformer tokens take
        :class:`crp_csp.units.TokenConcept` (and ``config.crop_count=0``).
    path : the HDF5 store to write; checkpoints go to ``<path>.parts/`` until it is complete.
    composite : the zennit composite that defines the relevance (None: plain gradient).
    attribution : a ``crp.attribution.CondAttribution`` over ``model`` for the relevance crops
        (made on demand when None).
    config : :class:`AnalysisConfig`.
    preprocess_fn : applied to a batch before the model, as in ``FeatureVisualization``.
    encoder_input_fn : maps a batch of dataset images to [0, 1] images for the encoder.
    sample_range : ``(start, end)`` dataset indices to analyse (default: all).
    overwrite : replace a store or checkpoint made with other settings instead of raising.
    progress : show progress bars.
    process_group : the ranks to shard over; by default the running torch.distributed group (torchrun
        initialises one), else a single process. Ranks share the parts folder, so several nodes need
        a shared file system.
    """
    config = config or AnalysisConfig()
    path = Path(path)
    layer_map = normalise_layer_map(model, layer_map, config)
    layer_names = list(layer_map)
    _check_first_sample(dataset)
    sample_range = tuple(sample_range or (0, len(dataset)))
    if not 0 <= sample_range[0] < sample_range[1] <= len(dataset):
        raise ValueError(f"sample_range {sample_range} must lie within [0, {len(dataset)}] and be non-empty")
    group = process_group or current_process_group()
    config = _on_rank_device(config, encoder, group)
    model = model.to(config.device).eval()
    fingerprint = json.loads(json.dumps(analysis_fingerprint(
        model, dataset, composite, layer_map, encoder, config, sample_range, preprocess_fn, encoder_input_fn,
    ), sort_keys=True, default=str))

    writer = _PartWriter(path)
    with contextlib.ExitStack() as stack:
        status: object = "run"
        if group.is_main:
            try:
                stack.enter_context(WriterLock(path))
                status = _prepare(path, writer, fingerprint, config, overwrite)
            except Exception as error:  # every rank raises the main rank's error
                status = error
        status = group.broadcast_object(status)
        if isinstance(status, Exception):
            raise status
        if status == "reuse":
            logger.info("%s is complete for these settings; reusing it", path)
            return AnalysisStore(path)

        starts = _part_starts(*sample_range, config.samples_per_part)
        parameters_grad = [p.requires_grad for p in model.parameters()]
        model.requires_grad_(False)
        try:
            _run_parts(model, composite, dataset, encoder, layer_map, config, writer, group.mine(starts),
                       sample_range, preprocess_fn, encoder_input_fn, progress and group.is_main)
            group.barrier()
            pools = _merge_rank_pools(group.all_gather_object(
                _merge_pools(writer, group.mine(starts), layer_names, config.pool_size)), config.pool_size)
            crop_jobs = [(name, kind) for name in layer_names for kind in config.crop_modes] if config.crop_count else []
            for name, kind in group.mine(crop_jobs):
                file = f"crops|{name}|{kind}.npy"
                if not writer.has(file):
                    attribution = attribution or CondAttribution(model, device=torch.device(config.device))
                    pool = pools[(name, kind)]
                    writer.write_array(file, embed_reference_crops(
                        attribution, composite, dataset, encoder, name, pool["ids"][:config.crop_count],
                        pool["rf"][:config.crop_count], config, preprocess_fn=preprocess_fn,
                        encoder_input_fn=encoder_input_fn, progress=progress and group.is_main,
                        description=f"crops {name} ({kind})",
                    ))
            group.barrier()
        finally:
            for parameter, flag in zip(model.parameters(), parameters_grad):
                parameter.requires_grad_(flag)
        if group.is_main:
            crops = {job: writer.read_array(f"crops|{job[0]}|{job[1]}.npy") for job in crop_jobs}
            attrs = {
                "schema_version": SCHEMA_VERSION,
                "crp_csp_version": __version__,
                "fingerprint": json.dumps(fingerprint, sort_keys=True),
                "config": config.to_json(),
                "layers": json.dumps(layer_names),
                "num_samples": sample_range[1] - sample_range[0],
            }
            _assemble(path, writer, starts, layer_names, pools, crops, attrs, sample_range[1] - sample_range[0])
            writer.remove()
        group.barrier()
    return AnalysisStore(path)


def _on_rank_device(config: AnalysisConfig, encoder: ImageTextEncoder, group: ProcessGroup) -> AnalysisConfig:
    """Under several ranks a plain ``cuda`` device means each rank's own GPU; the encoder must be there too.

    A misplaced encoder on any rank fails every rank, so that none waits for it at a collective.
    """
    if group.world_size == 1:
        return config
    device = rank_device(config.device)
    weights = next(encoder._weights_module().parameters(), None)
    problem = None
    if weights is not None and weights.device.type == "cuda" and weights.device != torch.device(device):
        problem = (f"rank {group.rank} analyses on {device} but its encoder's weights are on {weights.device}; "
                   "under torchrun load the encoder (and the model) on the rank's own GPU: "
                   "load_encoder(spec, device=crp_csp.rank_device('cuda'))")
    problems = [message for message in group.all_gather_object(problem) if message]
    if problems:
        raise ValueError(problems[0])
    return dataclasses.replace(config, device=device)


def _prepare(path: Path, writer: _PartWriter, fingerprint: dict, config: AnalysisConfig, overwrite: bool) -> str:
    """``reuse`` when a complete store with this fingerprint exists, else get the parts folder ready."""
    if path.exists():
        store = AnalysisStore(path)
        if store.fingerprint == fingerprint:
            return "reuse"
        if not overwrite:
            differing = fingerprint_difference(store.fingerprint, fingerprint)
            raise StoreMismatchError(
                f"{path} was made with other settings (differs in: {', '.join(differing)}); pass "
                "overwrite=True (CLI: --overwrite) to replace it, or choose another store path"
            )
    writer.prepare({"fingerprint": fingerprint, "samples_per_part": config.samples_per_part}, overwrite)
    return "run"


def _merge_rank_pools(rank_pools: list[dict], pool_size: int) -> dict:
    """Merge the pools of several ranks into the global top ``pool_size`` per unit."""
    if len(rank_pools) == 1:
        return rank_pools[0]
    merged = {}
    for key in rank_pools[0]:
        parts = [pools[key] for pools in rank_pools if key in pools]
        values, ids, rf = (torch.from_numpy(np.concatenate([p[field] for p in parts])) for field in ("values", "ids", "rf"))
        values, ids, rf = merge_top(values, ids, pool_size, rf)
        merged[key] = {"values": values.numpy(), "ids": ids.numpy(), "rf": rf.numpy()}
    return merged
