"""Benchmark the labelling methods on the demo world: which labels are faithful to the units?

Methods {SemanticLens, CLIP-Dissect, CSP gamma 0.5, CSP gamma 1} x positives {ActMax, RelMax} x
negatives {by activation, by relevance} label the units of ``features.conv3``, ``features.conv4``
and ``fc`` of the demo classifier from one analysis store of the (confounded) probe split, with the
demo vocabulary as candidates. Every top-1 label is evaluated on the held-out split, where the
planted confounders (circle -> grass, striped -> red) are broken:

- ``gt_match``: the label names the unit's ground-truth concept (the demo concept whose presence the
  unit's activation separates best on held-out data, highest ROC AUC); ``gt_overlap`` gives partial
  credit (Jaccard index of the attribute values named: "circle" vs "plain circle" is 0.5);
- ``cosy_auc`` / ``cosy_mad``: CoSy with rendered images of the label against control-split images;
- ``simcorr``: Pearson r of activation and the demo CLIP's image-text similarity of the label;
- ``simcorr_gt``: the same with the label's ground-truth presence;
- ``auprc``: average precision of the activation for the label's ground-truth presence, and
  ``auprc_chance`` its chance level (the label's frequency: broad labels have a higher floor);
- ``gt_match_confounded``: ``gt_match`` over the units whose ground truth holds a confounded class
  attribute (circle, striped), where a label read off confounded examples goes wrong (grass, red);
  ``confounder_error``: the share of those units whose label names the incidental attribute instead.

SemanticLens and CLIP-Dissect use no negatives, so they get one row per positives setting
(negatives ``-``). CLIP-Dissect ranks its top images by the selection's eligibility statistic
(activation max or relevance sum), so its ActMax / RelMax rows rank by activation / relevance.

Run: ``python examples/bench_labels.py`` (analysis store cached at ``runs/bench_labels.h5``).
Prints one JSON object, then a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

import numpy as np
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat

from crp_csp.analysis import AnalysisConfig, run_analysis
from crp_csp.candidates import load_candidates
from crp_csp.contrastive import SelectionConfig, TooFewNegativesError, select_contrastive
from crp_csp.demo import CLASS_NAMES, DemoWorldDataset
from crp_csp.evaluation import (
    DemoRendererSource, LabelEvaluator, final_layer_accuracy, is_confounded_attribute, names_incidental_attribute,
)
from crp_csp.scoring import ClipDissectScorer, CSPScorer, SemanticLensScorer, label_units

LAYERS = ("features.conv3", "features.conv4", "fc")
POSITIVES = {"ActMax": "activation", "RelMax": "relevance"}
NEGATIVES = {"by activation": "activation", "by relevance": "relevance"}
COLUMNS = ("gt_match", "gt_overlap", "cosy_auc", "cosy_mad", "simcorr", "simcorr_gt", "auprc", "auprc_chance",
           "gt_match_confounded", "confounder_error")

logger = logging.getLogger("bench_labels")


def methods(extra: bool):
    """(name, scorer factory, uses negatives)."""
    listed = [("SemanticLens", SemanticLensScorer, False), ("CLIP-Dissect", ClipDissectScorer, False),
              ("CSP g=0.5", lambda: CSPScorer(gamma=0.5), True), ("CSP g=1", lambda: CSPScorer(gamma=1.0), True)]
    if extra:
        listed += [("CSP g=0 (no contrast)", lambda: CSPScorer(gamma=0.0), False),
                   ("SemanticLens (CSP text)", lambda: SemanticLensScorer(empty_template=False), False)]
    return listed


def default_store(samples: int, layers: list[str], crops: bool, random_weights: bool = False,
                  sae: bool = False) -> str:
    """``runs/bench_labels.h5`` for the default analysis; other settings get their own file (a store
    is reused only for the settings it was made with)."""
    parts = [] if samples == 6000 else [str(samples)]
    parts += [] if layers == list(LAYERS) else ["-".join(layers)]
    parts += ["crops"] if crops else []
    parts += ["random"] if random_weights else []
    parts += ["sae"] if sae else []
    return "runs/bench_labels" + "".join(f"_{p}" for p in parts) + ".h5"


def load_models(random_weights: bool, sae: bool = False):
    if random_weights:  # a smoke test of the pipeline: the numbers mean nothing
        import open_clip

        from crp_csp.demo import DemoClassifier, build_demo_clip, demo_tokenizer
        from crp_csp.encoders import OpenClipEncoder

        torch.manual_seed(0)
        model = DemoClassifier().eval()
        encoder = OpenClipEncoder(build_demo_clip().eval(), demo_tokenizer(), open_clip.OPENAI_DATASET_MEAN,
                                  open_clip.OPENAI_DATASET_STD, 64, "demo-random")
        return model, encoder
    from crp_csp.demo import load_demo_classifier
    from crp_csp.encoders import load_encoder

    return load_demo_classifier(sae=sae), load_encoder("demo")


def _mean(rows, key, where=None):
    values = [r[key] for r in rows if r.get(key) is not None and (where is None or where(r))]
    return (float(np.mean(values)) if values else None), len(values)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=6000, help="probe-split images analysed (default 6000)")
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), help="layers to label and evaluate")
    parser.add_argument("--store", help="analysis store, reused when present (default runs/bench_labels.h5; "
                                        "other samples, layers or --crops get their own default file)")
    parser.add_argument("--heldout", type=int, default=2000, help="held-out images for simcorr, AUPRC, ground truth")
    parser.add_argument("--control", type=int, default=1000, help="control-split images for CoSy")
    parser.add_argument("--concept-count", type=int, default=50, help="rendered images per label for CoSy")
    parser.add_argument("--scored-count", type=int, default=30, help="positives per unit (CSP's N)")
    parser.add_argument("--threshold", default="mean",
                        help="negatives' eligibility: 'mean' or a quantile in (0, 1) of the unit's statistic")
    parser.add_argument("--crops", action="store_true", help="also embed relevance crops and add crop-view CSP rows")
    parser.add_argument("--ablations", action="store_true",
                        help="add CSP gamma=0 and SemanticLens with CSP's text embedding (isolate the contrast)")
    parser.add_argument("--units-json", help="write every unit's evaluation to this file")
    parser.add_argument("--random-weights", action="store_true", help="untrained models (a smoke test)")
    parser.add_argument("--sae", action="store_true",
                        help="insert the demo SAE and label its latents next to the channels")
    args = parser.parse_args(argv)
    if args.sae:
        from crp_csp.demo.models import DEMO_SAE_LATENTS

        args.layers = list(dict.fromkeys([*args.layers, DEMO_SAE_LATENTS]))
    analysed = list(LAYERS) if set(args.layers) <= set(LAYERS) else list(dict.fromkeys([*LAYERS, *args.layers]))
    args.store = args.store or default_store(args.samples, analysed, args.crops, args.random_weights, args.sae)
    threshold = args.threshold if args.threshold == "mean" else float(args.threshold)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)

    started = time.perf_counter()
    timings: dict[str, float] = {}
    model, encoder = load_models(args.random_weights, args.sae)
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    probe = DemoWorldDataset("probe", size=args.samples)
    config = AnalysisConfig(batch_size=64, crop_count=args.scored_count if args.crops else 0)
    store = run_analysis(model, probe, encoder, analysed, args.store, composite=composite, config=config,
                         progress=False)
    timings["analysis_s"] = time.perf_counter() - started
    candidates = load_candidates(["demo"])
    heldout = DemoWorldDataset("heldout", size=args.heldout)
    control_set = DemoWorldDataset("control", size=args.control)
    control = torch.stack([control_set[i][0] for i in range(len(control_set))])

    results, units_out, skipped = [], {}, []
    label_time = evaluation_time = 0.0
    heldout_embeddings = None
    for layer in args.layers:
        logger.info("layer %s", layer)
        evaluator = LabelEvaluator(model, layer, heldout, encoder=encoder, concept_source=DemoRendererSource(),
                                   control_images=control, composite=composite, concept_count=args.concept_count,
                                   heldout_embeddings=heldout_embeddings)
        heldout_embeddings = evaluator.heldout_data()[1]
        views = ("image", "crop") if args.crops else ("image",)
        selections = {}
        for view in views:
            for pos_name, positives in POSITIVES.items():
                for neg_name, eligibility in NEGATIVES.items():
                    try:
                        selections[(view, pos_name, neg_name)] = select_contrastive(store, layer, SelectionConfig(
                            positives=positives, eligibility=eligibility, scored_count=args.scored_count,
                            view=view, threshold=threshold))
                    except TooFewNegativesError as error:  # e.g. a quantile of a zero-inflated relevance
                        selections[(view, pos_name, neg_name)] = error
        for view in views:
            for method, make, uses_negatives in methods(args.ablations):
                if view == "crop" and not method.startswith("CSP"):
                    continue
                for pos_name in POSITIVES:
                    for neg_name in (NEGATIVES if uses_negatives else ["-"]):
                        # without negatives the selection only supplies positives (and, for CLIP-Dissect,
                        # the statistic that ranks its top images): take the one of the positives' kind
                        key_neg = neg_name if uses_negatives else ("by activation" if pos_name == "ActMax"
                                                                   else "by relevance")
                        row = {"layer": layer, "method": method + (" [crops]" if view == "crop" else ""),
                               "positives": pos_name, "negatives": neg_name}
                        selection = selections[(view, pos_name, key_neg)]
                        if isinstance(selection, TooFewNegativesError):
                            skipped.append({**row, "reason": str(selection)})
                            continue
                        tick = time.perf_counter()
                        labels = label_units(store, layer, candidates, encoder=encoder, scorer=make(),
                                             selection=selection)
                        label_time += time.perf_counter() - tick
                        tick = time.perf_counter()
                        evaluation = evaluator.evaluate(labels)
                        evaluation_time += time.perf_counter() - tick
                        rows = evaluation.units
                        row["units"] = len(rows)
                        for key in ("gt_match", "gt_overlap", "cosy_auc", "cosy_mad", "simcorr", "auprc",
                                    "auprc_chance"):
                            row[key] = _mean(rows, key)[0]
                        row["simcorr_gt"] = _mean(rows, "simcorr_presence")[0]
                        confounded = [r for r in rows if is_confounded_attribute(r["gt_attribute"])]
                        row["gt_match_confounded"], row["confounded_units"] = _mean(confounded, "gt_match")
                        row["confounder_error"] = (float(np.mean([names_incidental_attribute(
                            r["label"], r["gt_attribute"]) for r in confounded])) if confounded else None)
                        if layer == "fc":
                            row.update({f"final_{k}": v for k, v in final_layer_accuracy(labels, CLASS_NAMES).items()
                                        if k != "units"})
                        results.append(row)
                        units_out[f"{layer}|{row['method']}|{pos_name}|{neg_name}"] = rows
        truth = evaluator.ground_truth()
        units_out[f"{layer}|ground_truth"] = [{"unit": u, "gt_attribute": a, "gt_auc": float(v)}
                                              for u, (a, v) in enumerate(zip(*truth))]
    timings.update(labelling_s=label_time, evaluation_s=evaluation_time, total_s=time.perf_counter() - started)

    ground_truth = {}
    for layer in args.layers:
        gt = units_out[f"{layer}|ground_truth"]
        counts: dict[str, int] = {}
        for unit in gt:
            counts[unit["gt_attribute"]] = counts.get(unit["gt_attribute"], 0) + 1
        ground_truth[layer] = {"mean_gt_auc": float(np.mean([u["gt_auc"] for u in gt])),
                               "confounded_units": sum(is_confounded_attribute(u["gt_attribute"]) for u in gt),
                               "concepts": dict(sorted(counts.items(), key=lambda kv: -kv[1]))}
    report = {
        "command": " ".join(["python examples/bench_labels.py", *(argv if argv is not None else sys.argv[1:])]),
        "settings": {"samples": args.samples, "layers": args.layers, "store": str(args.store),
                     "heldout": args.heldout, "control": args.control, "concept_count": args.concept_count,
                     "scored_count": args.scored_count, "candidates": len(candidates), "reduction": "max",
                     "threshold": threshold, "random_weights": args.random_weights, "sae": args.sae,
                     "torch_threads": torch.get_num_threads()},
        "notes": [
            "SemanticLens and CLIP-Dissect use no negatives: one row per positives setting (negatives '-').",
            "CLIP-Dissect ranks its top images by activation max (ActMax row) or relevance sum (RelMax row).",
            "Ground truth: the demo concept of highest presence AUC on the held-out split (confounders broken).",
        ],
        "runtime_s": {k: round(v, 1) for k, v in timings.items()},
        "ground_truth": ground_truth,
        "results": results,
        "skipped": skipped,
    }
    print(json.dumps(report, indent=1))
    print()
    print(markdown_table(results))
    for row in skipped:
        print(f"\nskipped {row['layer']} {row['method']} {row['positives']} {row['negatives']}: {row['reason']}")
    if args.units_json:
        with open(args.units_json, "w", encoding="utf-8") as handle:
            json.dump(units_out, handle, indent=1)
    return report


def _cell(value, digits=3):
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(results: list[dict]) -> str:
    header = ["layer", "method", "positives", "negatives", *COLUMNS, "n conf.", "top1 / top5"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results:
        final = (f"{row['final_top1']:.2f} / {row['final_top5']:.2f}" if "final_top1" in row else "")
        cells = [row["layer"], row["method"], row["positives"], row["negatives"],
                 *(_cell(row[c]) for c in COLUMNS), str(row["confounded_units"]), final]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
