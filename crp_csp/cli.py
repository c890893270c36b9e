"""``crp-csp``: the command line, a thin layer over the library.

::

    crp-csp analyze  --model demo --dataset demo --samples 2000 --layers features.conv4,fc --out run/
    crp-csp label    --out run/ --candidates demo --methods csp,semanticlens
    crp-csp evaluate --out run/
    crp-csp report   --out run/
    crp-csp circuit  --out run/ --root fc:3 --layers features.conv4 --width 5 --samples 10
    crp-csp demo                       # all of the above on the demo world, offline

``analyze`` saves the setup (model, dataset, layers, encoder, composite) in ``OUT/settings.json``;
the later commands read it, so they need only ``--out``. Every file goes under ``--out``: the
analysis store ``analysis.h5`` (labels are saved into it too), ``labels/<layer>.<method>.{json,csv}``,
``evaluation/<layer>.<method>.json``, ``report.html`` and ``circuits/<layer>_<unit>.{json,png}``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from . import __version__

logger = logging.getLogger("crp_csp.cli")

STORE_NAME = "analysis.h5"
SETTINGS_NAME = "settings.json"
REPORT_NAME = "report.html"
CIRCUITS_DIR = "circuits"
METHODS = ("csp", "semanticlens", "clip-dissect")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# What the analysis was made from; saved by ``analyze`` and read by the other commands.
SETUP_KEYS = ("model", "dataset", "samples", "image_size", "normalize", "composite", "canonizer", "layers", "encoder")
DEMO_SETUP = {"model": "demo", "dataset": "demo", "layers": "features.conv4,fc", "encoder": "demo"}
DEFAULTS = {"image_size": 224, "normalize": "auto", "composite": "epsilon_plus_flat", "canonizer": "auto"}
DEMO_RUN = {"samples": 1500, "heldout_samples": 600, "control_samples": 300, "concept_count": 20, "units": "all"}


class CLIError(Exception):
    """A problem with the command line, reported as ``crp-csp: error: ...`` (exit status 2)."""


@contextlib.contextmanager
def blame(option: str, fix: str = ""):
    """Re-raise a library error about the value of ``option`` as a :class:`CLIError` naming it."""
    try:
        yield
    except (ValueError, KeyError, FileNotFoundError, TypeError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        raise CLIError(f"{option}: {message}" + (f" ({fix})" if fix else "")) from error


# ---------------------------------------------------------------------------------------------
# building what the library needs from options


def read_settings(out: Path) -> dict:
    path = out / SETTINGS_NAME
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CLIError(f"{path} is not valid JSON ({error}); delete it and run `crp-csp analyze` again") from None


def resolve_setup(args, *, required: bool = True) -> dict:
    """The analysis setup: options given now, else those ``analyze`` saved in OUT, else defaults."""
    saved = read_settings(Path(args.out))
    setup = {}
    for key in SETUP_KEYS:
        given = getattr(args, key, None)
        setup[key] = given if given is not None else saved.get(key)
    if setup["model"] is None and setup["dataset"] is None:
        setup.update({key: value for key, value in DEMO_SETUP.items() if setup[key] is None})
    if setup["model"] == "demo":
        setup.update({key: value for key, value in DEMO_SETUP.items() if setup[key] is None})
    for key, value in DEFAULTS.items():
        setup[key] = value if setup[key] is None else setup[key]
    if required:
        for key, fix in (("model", "e.g. --model torchvision:resnet18/IMAGENET1K_V1"),
                         ("dataset", "demo, or an image folder laid out for torchvision's ImageFolder"),
                         ("layers", "comma-separated module names, e.g. --layers layer3,layer4"),
                         ("encoder", "e.g. --encoder open_clip:ViT-B-32/laion2b_s34b_b79k")):
            if not setup[key]:
                raise CLIError(f"--{key} is required ({fix}); give it to `crp-csp analyze`, later commands "
                               f"read it from {Path(args.out) / SETTINGS_NAME}")
    return setup


def build_dataset(setup: dict, split: str = "probe", samples: int | None = None):
    """The dataset of ``setup``: the demo world's ``split``, or an image folder (resize, center crop)."""
    spec, samples = setup["dataset"], samples if samples is not None else setup["samples"]
    if samples is not None and int(samples) < 1:
        raise CLIError(f"--samples (or --heldout-samples / --control-samples) must be >= 1, got {samples}")
    if spec == "demo":
        from .demo import DemoWorldDataset

        return DemoWorldDataset(split, size=samples)
    return image_folder(spec, setup["image_size"], samples)


def image_folder(path: str, image_size: int, samples: int | None = None, option: str = "--dataset"):
    """``torchvision.datasets.ImageFolder`` of [0, 1] images, resized and center-cropped to ``image_size``;
    with ``samples``, that many images spread evenly over the (class-sorted) folder."""
    import numpy as np
    from torch.utils.data import Subset
    from torchvision import datasets, transforms

    folder = Path(path)
    if not folder.is_dir():
        alternative = " (nor 'demo')" if option == "--dataset" else ""
        raise CLIError(f"{option}: {path!r} is not a folder of images{alternative} "
                       "(ImageFolder layout: one sub-folder per class)")
    transform = transforms.Compose([transforms.Resize(int(image_size)), transforms.CenterCrop(int(image_size)),
                                    transforms.ToTensor()])
    try:
        dataset = datasets.ImageFolder(str(folder), transform=transform)
    except (FileNotFoundError, RuntimeError) as error:
        raise CLIError(f"{option}: {error} (ImageFolder layout: {path}/<class>/<image>.jpg)") from None
    if samples is not None and int(samples) < len(dataset):
        indices = np.unique(np.linspace(0, len(dataset) - 1, int(samples)).round().astype(int)).tolist()
        dataset = Subset(dataset, indices)
    return dataset


def preprocess_for(setup: dict):
    """The model's input normalisation: ImageNet mean/std for torchvision models (``auto``), or none."""
    from torchvision.transforms import Normalize

    choice = setup["normalize"]
    if choice == "auto":
        choice = "imagenet" if str(setup["model"]).startswith("torchvision:") else "none"
    return Normalize(IMAGENET_MEAN, IMAGENET_STD) if choice == "imagenet" else None


def build_composite(setup: dict):
    """A zennit composite by registry name, with canonizers chosen for the model (``auto``)."""
    from zennit.composites import COMPOSITES
    from zennit.torchvision import ResNetCanonizer, SequentialMergeBatchNorm, VGGCanonizer

    name, canonizer = setup["composite"], setup["canonizer"]
    if name == "none":
        return None
    if name not in COMPOSITES:
        raise CLIError(f"--composite: unknown composite {name!r}; choose one of {', '.join(COMPOSITES)} or none")
    if canonizer == "auto":
        arch = str(setup["model"]).split("@")[0]
        canonizer = ("resnet" if arch.startswith("torchvision:resnet") or arch.startswith("torchvision:wide_resnet")
                     else "vgg" if arch.startswith("torchvision:vgg") else "merge-bn")
    canonizers = {"none": [], "merge-bn": [SequentialMergeBatchNorm()], "resnet": [ResNetCanonizer()],
                  "vgg": [VGGCanonizer()]}[canonizer]
    try:
        return COMPOSITES[name](canonizers=canonizers)
    except TypeError as error:
        raise CLIError(f"--composite: {name} cannot be built without arguments ({error}); choose another") from None


def build_model(setup: dict, device: str):
    from .models import load_model

    with blame("--model"):
        return load_model(setup["model"], device=device)


def split_list(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def open_store(out: Path):
    from .store import AnalysisStore

    path = out / STORE_NAME
    if not path.exists():
        raise CLIError(f"no analysis in {out} ({path} is missing); run `crp-csp analyze --out {out}` first")
    return AnalysisStore(path)


def store_labels(store) -> dict[str, list[str]]:
    """``{method name: [layers]}`` of the labels saved in ``store``."""
    with store.open() as handle:
        if "labels" not in handle:
            return {}
        return {name: list(handle["labels"][name]) for name in handle["labels"]}


def chosen_layers(args, store) -> list[str]:
    layers = split_list(getattr(args, "layers", None)) or list(store.layers)
    unknown = [layer for layer in layers if layer not in store.layers]
    if unknown:
        raise CLIError(f"--layers: {', '.join(unknown)} not in the analysis; it holds {', '.join(store.layers)}")
    return layers


def progress_of(args) -> bool:
    return not args.quiet


def check_device(device: str) -> None:
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as error:
        raise CLIError(f"--device: {error} (e.g. cpu, cuda, cuda:1, mps)") from None
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise CLIError(f"--device: {device} is not available on this machine (torch sees no CUDA device); "
                       "use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise CLIError(f"--device: {device} does not exist; this machine has {torch.cuda.device_count()} "
                       "CUDA device(s)")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise CLIError(f"--device: {device} is not available on this machine; use --device cpu")


# ---------------------------------------------------------------------------------------------
# commands


def cmd_analyze(args) -> int:
    from .analysis import AnalysisConfig, current_process_group, rank_device, run_analysis
    from .encoders import load_encoder

    out = Path(args.out)
    setup = resolve_setup(args)
    group = current_process_group()  # under torchrun: join the ranks before anything lands on a GPU
    device = rank_device(args.device)
    with blame("--pool-size / --crop-count / --batch-size / --chunk-size"):
        config = AnalysisConfig(pool_size=args.pool_size, crop_count=min(args.crop_count, args.pool_size),
                                batch_size=args.batch_size, chunk_size=args.chunk_size, device=device,
                                relevance_target=args.relevance_target, num_workers=args.num_workers)
    with blame("--dataset"):
        dataset = build_dataset(setup)
    model = build_model(setup, device)
    with blame("--encoder"):
        encoder = load_encoder(setup["encoder"], device=device)
    composite = build_composite(setup)
    layers = split_list(setup["layers"])
    out.mkdir(parents=True, exist_ok=True)
    with blame("--layers"):
        store = run_analysis(model, dataset, encoder, layers, out / STORE_NAME, composite=composite, config=config,
                             preprocess_fn=preprocess_for(setup), overwrite=args.overwrite,
                             progress=progress_of(args), process_group=group)
    if group.is_main:
        (out / SETTINGS_NAME).write_text(json.dumps({**setup, "crp_csp_version": __version__}, indent=1),
                                         encoding="utf-8")
        print(f"analysis: {store.path} ({store.num_samples} samples, layers {', '.join(store.layers)})")
    if group.world_size > 1:
        import torch.distributed

        torch.distributed.destroy_process_group()  # the CLI joined the group, so it leaves it
    return 0


def cmd_label(args) -> int:
    from .candidates import load_candidates
    from .contrastive import SelectionConfig, select_contrastive
    from .encoders import load_encoder
    from .scoring import encoder_for, label_units, make_scorer

    out = Path(args.out)
    store = open_store(out)
    setup = resolve_setup(args, required=False)
    layers = chosen_layers(args, store)
    methods = split_list(args.methods)
    unknown = [method for method in methods if method not in METHODS]
    if unknown or not methods:
        raise CLIError(f"--methods: unknown method(s) {', '.join(unknown) or '(none given)'}; choose from "
                       f"{', '.join(METHODS)}")
    with blame("--gamma"):
        scorers = [make_scorer(method, gamma=args.gamma) if method == "csp" else make_scorer(method)
                   for method in methods]
    specs = split_list(args.candidates) or (["demo"] if setup["dataset"] == "demo" else ["english"])
    with blame("--candidates", "use demo, english, classes:demo or the path of a file with one label per line"):
        base = load_candidates(specs)
    with blame("--positives / --view / --scored-count"):
        selection_config = SelectionConfig(positives=args.positives, eligibility=args.positives, view=args.view,
                                           scored_count=args.scored_count)
    with blame("--encoder"):
        encoder = encoder_for(store, load_encoder(args.encoder, device=args.device) if args.encoder else None)
    backend = dataset = None
    if args.vlm:
        from .candidates.generated import load_vlm

        with blame("--vlm"):
            backend = load_vlm(args.vlm, device=args.device, api_key_env=args.api_key_env)
        with blame("--dataset"):
            dataset = build_dataset(resolve_setup(args))
    folder = out / "labels"
    folder.mkdir(parents=True, exist_ok=True)
    for layer in layers:
        fix = "crops need `crp-csp analyze --crop-count 30 --overwrite`" if args.view == "crop" else ""
        with blame("--scored-count / --positives / --view", fix):
            selection = select_contrastive(store, layer, selection_config)
        candidates = base
        if backend is not None:
            from .candidates.generated import layer_vlm_candidates

            generated = layer_vlm_candidates(store, dataset, layer, selection, backend, args.vlm_mode,
                                             progress=progress_of(args))
            candidates = base.merge(generated)
            print(f"{layer}: {len(generated)} candidate labels from {args.vlm} ({args.vlm_mode})")
        for scorer in scorers:
            labels = label_units(store, layer, candidates, encoder=encoder, scorer=scorer, selection=selection,
                                 top_k=args.top_k)
            labels.save(store)
            stem = folder / f"{layer}.{labels.method}"
            labels.to_json(stem.with_suffix(stem.suffix + ".json"))
            labels.to_csv(stem.with_suffix(stem.suffix + ".csv"))
            preview = ", ".join(f"{unit.unit}: {unit.label}" for unit in labels.units[:4])
            print(f"{layer} [{labels.method}] {len(labels.units)} units against {len(candidates)} candidates; "
                  f"{preview}{' ...' if len(labels.units) > 4 else ''}")
    print(f"labels: saved in {store.path} and {folder}/")
    return 0


def load_layer_labels(store, layers, methods=None) -> dict[str, list]:
    """``{layer: [LayerLabels]}`` saved in ``store`` for ``layers`` (and ``methods``, names or prefixes)."""
    from .scoring import LayerLabels

    saved = store_labels(store)
    result = {}
    for layer in layers:
        for name, labelled in saved.items():
            if layer in labelled and (not methods or any(name == m or name.startswith(m) for m in methods)):
                result.setdefault(layer, []).append(LayerLabels.load(store, layer, name))
    return result


def cmd_evaluate(args) -> int:
    try:
        from .evaluation import DemoRendererSource, LabelEvaluator, RetrievalSource, final_layer_accuracy
    except ImportError as error:
        raise CLIError(f"the evaluation module cannot be imported ({error})") from None
    from .scoring import encoder_for

    out = Path(args.out)
    store = open_store(out)
    setup = resolve_setup(args)
    layers = chosen_layers(args, store)
    labels = load_layer_labels(store, layers, split_list(args.methods))
    if not labels:
        raise CLIError(f"no labels in {store.path} for these layers/methods; run `crp-csp label --out {out}` first")
    encoder = encoder_for(store)
    model = build_model(setup, args.device)
    composite = build_composite(setup)
    preprocess = preprocess_for(setup)
    with blame("--dataset"):
        dataset = build_dataset(setup)
    if setup["dataset"] == "demo":
        heldout = build_dataset(setup, "heldout", args.heldout_samples)
        control = build_dataset(setup, "control", args.control_samples)
        sources = [DemoRendererSource(), RetrievalSource(store, dataset, encoder)]
    else:
        if not args.heldout:
            raise CLIError("--heldout is required for an image-folder dataset: a folder of held-out images "
                           "(ImageFolder layout), not the analysed ones")
        heldout = image_folder(args.heldout, setup["image_size"], args.heldout_samples, "--heldout")
        control = image_folder(args.control or args.heldout, setup["image_size"], args.control_samples,
                               "--control" if args.control else "--heldout")
        sources = [RetrievalSource(store, dataset, encoder)]
    folder = out / "evaluation"
    folder.mkdir(parents=True, exist_ok=True)
    class_names = getattr(dataset, "classes", None)
    heldout_embeddings = None  # encoded once, shared by the layers
    for layer, items in labels.items():
        evaluator = LabelEvaluator(model, layer, heldout, encoder=encoder, concept_source=sources,
                                   control_images=control, preprocess_fn=preprocess, device=args.device,
                                   composite=composite, concept_count=args.concept_count,
                                   batch_size=args.batch_size, heldout_embeddings=heldout_embeddings)
        heldout_embeddings = evaluator.heldout_data()[1]
        for item in items:
            start = time.time()
            evaluation = evaluator.evaluate(item)
            data = evaluation.to_dict()
            if class_names is not None and len(item.units) == len(class_names) and layer == store.layers[-1]:
                data["final_layer"] = final_layer_accuracy(item, list(class_names))
            path = folder / f"{layer}.{item.method}.json"
            path.write_text(json.dumps(data, indent=1), encoding="utf-8")
            summary = evaluation.summary()
            shown = ", ".join(f"{key} {summary[key]:.3f}" for key in ("cosy_auc", "simcorr", "auprc", "gt_match")
                              if summary.get(key) is not None)
            extra = (f"; final layer top-1 {data['final_layer']['top1']:.2f}" if "final_layer" in data else "")
            print(f"{layer} [{item.method}] {shown or 'no metric defined'}{extra} ({time.time() - start:.0f} s)")
    print(f"evaluation: {folder}/")
    return 0


def load_evaluations(out: Path) -> dict[tuple[str, str], dict]:
    """``{(layer, method): evaluation dict}`` from ``OUT/evaluation/*.json``."""
    result = {}
    for path in sorted((out / "evaluation").glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            logger.warning("skipping %s: not valid JSON", path)
            continue
        if isinstance(data, dict) and "layer" in data and "method" in data:
            if "final_layer" in data:
                data["summary"] = {**data.get("summary", {}),
                                   **{f"final_{key}": value for key, value in data["final_layer"].items()}}
            result[(data["layer"], data["method"])] = data
    return result


def load_circuits(out: Path) -> list:
    """The circuits written by ``crp-csp circuit`` (``OUT/circuits/*.json``)."""
    from .circuits import Circuit

    result = []
    for path in sorted((out / CIRCUITS_DIR).glob("*.json")):
        try:
            result.append(Circuit.from_dict(json.loads(path.read_text(encoding="utf-8"))))
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("skipping %s: not a circuit", path)
    return result


def cmd_report(args) -> int:
    from .report import write_report

    out = Path(args.out)
    store = open_store(out)
    setup = resolve_setup(args)
    layers = chosen_layers(args, store)
    labels = load_layer_labels(store, layers, split_list(args.methods))
    if not labels:
        raise CLIError(f"no labels in {store.path} for these layers/methods; run `crp-csp label --out {out}` first")
    model = composite = None
    if not args.no_heatmaps:
        model = build_model(setup, args.device)
        composite = build_composite(setup)
    with blame("--dataset"):
        dataset = build_dataset(setup)
    try:
        units = None if args.units in ("all", None) else int(args.units)
    except ValueError:
        raise CLIError(f"--units: expected a number or 'all', got {args.units!r}") from None
    path = Path(args.report) if args.report else out / REPORT_NAME
    from .store import StoreMismatchError

    try:
        write_report(store, labels, path, model=model, dataset=dataset, composite=composite,
                     evaluations=load_evaluations(out), units_per_layer=units, preprocess_fn=preprocess_for(setup),
                     examples=args.examples, device=args.device, progress=progress_of(args),
                     circuits=load_circuits(out))
    except StoreMismatchError as error:
        raise CLIError(f"{error}; on the command line give the --model, --dataset and --samples of the analysis "
                       f"(`crp-csp analyze` saves them in {out / SETTINGS_NAME}), or --no-heatmaps for no model"
                       ) from None
    print(f"report: {path.resolve()} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")
    return 0


def cmd_circuit(args) -> int:
    from .circuits import build_circuit, parse_node, saved_labels

    out = Path(args.out)
    store = open_store(out)
    setup = resolve_setup(args)
    with blame("--root", "e.g. --root fc:3 or --root features.conv4:12"):
        root = parse_node(args.root)
    layers = split_list(args.layers)
    if not layers:
        raise CLIError("--layers: give the lower layers from the root down, e.g. features.conv4,features.conv3")
    model = build_model(setup, args.device)
    with blame("--dataset"):
        dataset = build_dataset(setup)
    sample_ids = [int(item) for item in split_list(args.sample_ids)] if args.sample_ids else None
    labels = saved_labels(store, [root[0], *layers], args.method)
    missing = [layer for layer in layers if layer not in labels]
    if missing:
        logger.warning("no %s labels saved for %s; run `crp-csp label --layers %s` to label those nodes",
                       args.method, ", ".join(missing), ",".join(missing))
    with blame("--root / --layers / --samples"):
        circuit = build_circuit(model, build_composite(setup), dataset, store, root=root, layers=layers,
                                width=args.width, samples=args.circuit_samples, sample_ids=sample_ids, labels=labels,
                                preprocess_fn=preprocess_for(setup), device=args.device, batch_size=args.batch_size)
    folder = out / CIRCUITS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / circuit.root.replace(":", "_")
    circuit.to_json(stem.with_suffix(".json"))
    circuit.plot(stem.with_suffix(".png"))
    print(circuit.summary())
    print(f"circuit: {stem}.json and {stem}.png ({len(circuit.nodes)} nodes, {len(circuit.samples)} samples)")
    return 0


def cmd_demo(args) -> int:
    """Everything on the demo world: analyze, label, evaluate (when available), report."""
    out = str(args.out)
    common = ["--out", out, "--device", args.device] + (["--quiet"] if args.quiet else [])
    steps = [
        ["analyze", "--model", "demo", "--dataset", "demo", "--samples", str(args.samples),
         "--layers", "features.conv4,fc", "--encoder", "demo",
         "--batch-size", str(args.batch_size)] + (["--overwrite"] if args.overwrite else []),
        ["label", "--candidates", "demo", "--methods", "csp,semanticlens"],
        ["evaluate", "--heldout-samples", str(DEMO_RUN["heldout_samples"]),
         "--control-samples", str(DEMO_RUN["control_samples"]), "--concept-count", str(DEMO_RUN["concept_count"])],
        ["report", "--units", str(DEMO_RUN["units"])],
    ]
    try:
        import crp_csp.evaluation  # noqa: F401
    except ImportError:
        print("crp-csp demo: crp_csp.evaluation is not available; skipping the evaluation", file=sys.stderr)
        steps = [step for step in steps if step[0] != "evaluate"]
    parser = build_parser()
    start = time.time()
    for step in steps:
        print(f"== crp-csp {step[0]} ({time.time() - start:.0f} s)", flush=True)
        step_args = parser.parse_args(step[:1] + common + step[1:])
        step_args.func(step_args)
    print(f"demo finished in {time.time() - start:.0f} s; open {Path(out, REPORT_NAME).resolve()}")
    return 0


# ---------------------------------------------------------------------------------------------
# parser


def _common(parser: argparse.ArgumentParser, out_default: str = "crp-csp-out") -> None:
    group = parser.add_argument_group("common options")
    group.add_argument("--out", default=out_default, metavar="DIR",
                       help=f"output folder: {STORE_NAME}, {SETTINGS_NAME}, labels/, evaluation/, {REPORT_NAME} "
                            "(default: %(default)s)")
    group.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1 (default: %(default)s)")
    group.add_argument("--batch-size", type=int, default=32, metavar="N",
                       help="images per batch (default: %(default)s)")
    group.add_argument("--quiet", action="store_true", help="no progress bars, warnings only")
    group.add_argument("--debug", action="store_true", help="show tracebacks of errors")


def _setup_options(parser: argparse.ArgumentParser, later: bool) -> None:
    note = " (default: as saved by `analyze` in OUT)" if later else ""
    group = parser.add_argument_group("what is analysed" + (" (defaults: as saved by `analyze`)" if later else ""))
    group.add_argument("--model", help="the analysed network: demo; torchvision:NAME[/WEIGHTS] (e.g. "
                                       "torchvision:resnet18/IMAGENET1K_V1); package.module:factory; any of them with "
                                       "@/path/checkpoint.pt (default: demo)" + note)
    group.add_argument("--dataset", help="demo (the demo world's probe split) or an image folder in ImageFolder "
                                         "layout (resized and center-cropped to --image-size, values in [0, 1])" + note)
    group.add_argument("--samples", type=int, metavar="N", help="images to analyse: the first N of the demo split, "
                                                                 "or N spread evenly over the folder (default: all)")
    group.add_argument("--image-size", type=int, metavar="PX", help="side of the images of a folder dataset "
                                                                    f"(default: {DEFAULTS['image_size']})")
    group.add_argument("--normalize", choices=("auto", "imagenet", "none"),
                       help="model input normalisation (the preprocess_fn); auto: ImageNet mean/std for torchvision "
                            "models, none otherwise (default: auto)")
    group.add_argument("--composite", help="zennit composite by name: epsilon_plus_flat, epsilon_plus, "
                                           "epsilon_alpha2_beta1, epsilon_alpha2_beta1_flat, guided_backprop, "
                                           "excitation_backprop, deconvnet, or none (plain gradient) "
                                           "(default: epsilon_plus_flat)")
    group.add_argument("--canonizer", choices=("auto", "none", "merge-bn", "resnet", "vgg"),
                       help="zennit canonizers; auto: resnet for torchvision ResNets, vgg for VGGs, merge-bn "
                            "(SequentialMergeBatchNorm) otherwise (default: auto)")
    group.add_argument("--encoder", help="the CLIP-like encoder: demo; open_clip:MODEL/TAG (e.g. "
                                         "open_clip:ViT-B-32/laion2b_s34b_b79k); open_clip:MODEL//path/ckpt.pt; "
                                         "hf:ORG/NAME or hf:/local/dir (default: demo for the demo model)" + note)


def _labelled_selection(group, verb: str) -> None:
    group.add_argument("--layers", help="comma-separated layers (default: all labelled layers)")
    group.add_argument("--methods", help=f"methods to {verb}, names or prefixes (default: all labelled)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crp-csp",
        description="Label the units of vision networks with Contrastive Semantic Projection (CSP), in the "
                    "same pass that computes CRP relevance. Typical run: analyze, label, evaluate, report "
                    "(or `crp-csp demo`).",
        epilog="Run `crp-csp COMMAND --help` for the options of a command.",
    )
    parser.add_argument("--version", action="version", version=f"crp-csp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    analyze = commands.add_parser(
        "analyze", help="the one pass: CRP relevance, reference samples, unit statistics, encoder embeddings",
        description="Run the one analysis pass over the dataset and write OUT/analysis.h5. A killed run "
                    "resumes when started again with the same options.")
    _setup_options(analyze, later=False)
    group = analyze.add_argument_group("analysis")
    group.add_argument("--layers", help="comma-separated module names to analyse, e.g. layer3,layer4 or "
                                        "features.conv4,fc (default for the demo model: features.conv4,fc)")
    group.add_argument("--pool-size", type=int, default=100, metavar="N",
                       help="reference samples kept per unit (ActMax and RelMax) (default: %(default)s)")
    group.add_argument("--crop-count", type=int, default=0, metavar="N",
                       help="references per unit and mode whose relevance crops are embedded, for `label --view "
                            "crop` (the reference implementation scores 30); costs one attribution per crop, so "
                            "0, none, is the default")
    group.add_argument("--chunk-size", type=int, default=512, metavar="N",
                       help="samples per checkpoint (default: %(default)s)")
    group.add_argument("--relevance-target", choices=("label", "prediction"), default="label",
                       help="start the relevance at the dataset label (as zennit-crp) or the prediction "
                            "(default: %(default)s)")
    group.add_argument("--num-workers", type=int, default=0, metavar="N", help="DataLoader workers (default: 0)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace a store in OUT made with other settings (otherwise that is an error)")
    _common(analyze)
    analyze.set_defaults(func=cmd_analyze)

    label = commands.add_parser(
        "label", help="label the analysed units against candidate labels (CSP, SemanticLens, CLIP-Dissect)",
        description="Choose contrastive negatives, score candidate labels with each method, and save the labels "
                    "into the store and OUT/labels/<layer>.<method>.{json,csv}.")
    group = label.add_argument_group("labelling")
    group.add_argument("--layers", help="comma-separated layers (default: all analysed layers)")
    group.add_argument("--candidates", help="comma-separated candidate sets: demo, english (16.8k frequent words), "
                                            "classes:demo, or paths of text files with one label per line "
                                            "(default: demo for the demo dataset, english otherwise)")
    group.add_argument("--methods", default="csp,semanticlens",
                       help=f"comma-separated scorers from {', '.join(METHODS)} (default: %(default)s)")
    group.add_argument("--gamma", type=float, default=1.0, help="CSP's gamma in [0, 1] (default: %(default)s)")
    group.add_argument("--top-k", type=int, default=5, metavar="K", help="labels kept per unit (default: %(default)s)")
    group.add_argument("--scored-count", type=int, default=30, metavar="N",
                       help="positives (and matched negatives) per unit (default: %(default)s)")
    group.add_argument("--positives", choices=("activation", "relevance"), default="activation",
                       help="rank positives, and choose negatives, by activation (ActMax) or relevance (RelMax) "
                            "(default: %(default)s)")
    group.add_argument("--view", choices=("image", "crop"), default="image",
                       help="embed positives as whole images or relevance crops (needs analyze --crop-count) "
                            "(default: %(default)s)")
    group.add_argument("--encoder", help="the encoder (default: the one the analysis used, loaded by its spec)")
    group = label.add_argument_group("generated candidates (optional)")
    group.add_argument("--vlm", metavar="SPEC", help="also ask a vision-language model for candidates: "
                                                     "local:PATH_OR_HUB_ID (transformers) or endpoint:MODEL@URL "
                                                     "(OpenAI-compatible, e.g. endpoint:qwen2.5-vl@http://localhost"
                                                     ":8000/v1); answers are cached in the store")
    group.add_argument("--vlm-mode", choices=("pos-only", "pos-neg"), default="pos-only",
                       help="show the VLM the positives, or the positives and their negatives (default: %(default)s)")
    group.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                       help="environment variable with the endpoint's API key (default: %(default)s)")
    _setup_options_minimal(label)
    _common(label)
    label.set_defaults(func=cmd_label)

    evaluate = commands.add_parser(
        "evaluate", help="faithfulness of the labels: CoSy AUC/MAD, simulation correlation, AUPRC, ground truth",
        description="Evaluate every unit's top-1 label on held-out data and write OUT/evaluation/*.json. "
                    "Demo world: held-out and control splits, concept images drawn by its renderer. Image "
                    "folders: --heldout FOLDER, concept images retrieved from the analysed dataset.")
    group = evaluate.add_argument_group("evaluation")
    _labelled_selection(group, "evaluate")
    group.add_argument("--heldout", metavar="FOLDER", help="held-out images (ImageFolder layout; required "
                                                           "unless the dataset is demo)")
    group.add_argument("--control", metavar="FOLDER", help="CoSy control images (default: the held-out folder)")
    group.add_argument("--heldout-samples", type=int, default=1000, metavar="N",
                       help="held-out images used (default: %(default)s)")
    group.add_argument("--control-samples", type=int, default=500, metavar="N",
                       help="control images used (default: %(default)s)")
    group.add_argument("--concept-count", type=int, default=50, metavar="N",
                       help="concept images per label (default: %(default)s)")
    _setup_options(evaluate, later=True)
    _common(evaluate)
    evaluate.set_defaults(func=cmd_evaluate)

    report = commands.add_parser(
        "report", help="write a self-contained HTML report (OUT/report.html)",
        description="Write one HTML file (images embedded, no server needed): per layer a sortable, "
                    "filterable overview of the units, and per unit its positives with CRP heatmaps, its "
                    "contrastive negatives, its label rankings and faithfulness.")
    group = report.add_argument_group("report")
    _labelled_selection(group, "show")
    group.add_argument("--units", default="64", metavar="N|all",
                       help="units per layer shown in detail; the overview always lists all (default: %(default)s)")
    group.add_argument("--examples", type=int, default=8, metavar="N",
                       help="positives and negatives shown per unit (default: %(default)s)")
    group.add_argument("--no-heatmaps", action="store_true", help="skip the CRP heatmaps (no model needed)")
    group.add_argument("--report", metavar="FILE", help=f"where to write it (default: OUT/{REPORT_NAME})")
    _setup_options(report, later=True)
    _common(report)
    report.set_defaults(func=cmd_report)

    circuit = commands.add_parser(
        "circuit", help="the circuit of a unit or class output: the lower-layer units carrying its relevance",
        description="Condition CRP on a unit (or class output) and on each of its children in turn, keep the "
                    "--width units of each lower layer that carry most of the relevance, and write "
                    f"OUT/{CIRCUITS_DIR}/<layer>_<unit>.json and .png with the nodes' saved labels.")
    group = circuit.add_argument_group("circuit")
    group.add_argument("--root", required=True, metavar="LAYER:UNIT",
                       help="the unit or class output, e.g. fc:3 (class 3) or features.conv4:12")
    group.add_argument("--layers", required=True,
                       help="lower layers from the root down, comma-separated, e.g. features.conv4,features.conv3")
    group.add_argument("--width", type=int, default=5, metavar="K",
                       help="children kept per node; 0 keeps all (default: %(default)s)")
    group.add_argument("--samples", dest="circuit_samples", type=int, default=10, metavar="N",
                       help="the root's first N RelMax references with positive relevance, aggregated; the "
                            "analysed model, dataset and composite are read from OUT (default: %(default)s)")
    group.add_argument("--sample-ids", metavar="IDS",
                       help="comma-separated dataset indices instead (one: the circuit of that sample)")
    group.add_argument("--method", default="csp",
                       help="labels shown: a method saved by `label`, name or prefix (default: %(default)s)")
    _common(circuit)
    circuit.set_defaults(func=cmd_circuit)

    demo = commands.add_parser(
        "demo", help="the whole pipeline on the demo world, offline, in a few minutes",
        description="Analyse the demo classifier on the demo world's probe split, label features.conv4 and fc "
                    "with CSP and SemanticLens against the demo concepts, evaluate the labels and write the report.")
    demo.add_argument("--samples", type=int, default=DEMO_RUN["samples"], metavar="N",
                      help="probe images analysed (default: %(default)s)")
    demo.add_argument("--overwrite", action="store_true", help="replace an earlier demo run made with other settings")
    _common(demo, out_default="crp-csp-demo")
    demo.set_defaults(func=cmd_demo)
    return parser


def _setup_options_minimal(parser: argparse.ArgumentParser) -> None:
    """``label`` reads the setup from OUT; only --dataset (for VLM images) may be overridden."""
    parser.add_argument("--dataset", help="the analysed dataset, for the VLM's images (default: as saved by "
                                          "`analyze`)")


def _configure_logging(quiet: bool) -> None:
    package = logging.getLogger("crp_csp")
    if not any(getattr(handler, "_crp_csp_cli", False) for handler in package.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("crp-csp: %(message)s"))
        handler._crp_csp_cli = True  # type: ignore[attr-defined]
        package.addHandler(handler)
    package.setLevel(logging.WARNING if quiet else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``crp-csp``; returns the exit status (0 ok, 2 a usage or input error)."""
    from .store import StoreError, StoreLockedError

    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet)
    try:
        check_device(args.device)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("crp-csp: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (CLIError, StoreError, StoreLockedError, ValueError, KeyError, OSError, ImportError,
            RuntimeError) as error:
        if args.debug:
            raise
        message = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
        print(f"crp-csp: error: {message}", file=sys.stderr)
        if not isinstance(error, CLIError):
            print("crp-csp: (run again with --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
