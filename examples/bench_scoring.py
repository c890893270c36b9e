"""Scoring benchmark on the demo world, plus the speed of scoring a large layer. Prints one JSON object.

    python examples/bench_scoring.py [--samples 6000] [--store runs/bench_labels.h5]

- final_layer_top1: per method, the share of the 16 output units labelled with their class name
  when the candidates are the class names (CLIP-Dissect's final-layer protocol).
- confounded_units: units of features.conv3 / features.conv4 whose best ground-truth explanation
  (highest AUC of concept presence vs activation on held-out images, where the planted confounders
  are broken) holds a confounded class attribute (circle, striped);
  confounded_correct: per method, how many of them get a top-1 label that names that attribute;
  confounded_incidental: how many get a label naming the incidental attribute (grass, red) instead.
- score_s / matmul_s: CSP-scoring all units of a 512-unit layer (30 positives each) against 20,000
  candidate labels (top-5 included), against a bare torch matmul of the same shapes, same run.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat

from crp_csp import (
    AnalysisConfig, ClipDissectScorer, CSPScorer, SelectionConfig, SemanticLensScorer, label_units, load_candidates,
    load_encoder, run_analysis,
)
from crp_csp.contrastive import ContrastiveSelection
from crp_csp.demo import CLASS_NAMES, DemoWorldDataset, load_demo_classifier
from crp_csp.evaluation import best_explaining_attribute, unit_activations
from crp_csp.evaluation.ground_truth import demo_attributes, is_confounded_attribute, names_incidental_attribute
from crp_csp.demo.world import CONFOUNDERS

LAYERS = ["features.conv3", "features.conv4", "fc"]


def scorers():
    return {"semanticlens": SemanticLensScorer(), "clip-dissect": ClipDissectScorer(),
            "csp-g0.5": CSPScorer(gamma=0.5), "csp-g1": CSPScorer(gamma=1.0)}


def names_attribute(label: str, truth: str) -> bool:
    """The label names the confounded class attribute that the ground truth holds."""
    try:
        named, true = demo_attributes(label), demo_attributes(truth)
    except ValueError:
        return False
    return any(true.get(c.class_family) == c.class_value and named.get(c.class_family) == c.class_value
               for c in CONFOUNDERS)


def timing(units: int = 512, labels: int = 20_000, dim: int = 512, positives: int = 30, repeats: int = 5):
    generator = torch.Generator().manual_seed(0)
    unit_norm = lambda *shape: torch.nn.functional.normalize(torch.randn(*shape, generator=generator), dim=-1)
    selection = ContrastiveSelection(
        layer="synthetic", config=SelectionConfig(scored_count=positives),
        positive_ids=np.zeros((positives, units), dtype=np.int64),
        positive_weights=torch.rand(positives, units, generator=generator).numpy(),
        positive_embeddings=unit_norm(positives, units, dim).numpy(),
        negative_ids=np.zeros((positives, units), dtype=np.int64),
        negative_similarity=torch.rand(positives, units, generator=generator).numpy(),
        negative_embeddings=unit_norm(positives, units, dim).numpy(),
    )
    text = unit_norm(labels, dim)
    left = unit_norm(units, dim)
    scorer = CSPScorer(gamma=1.0)
    scorer.score(selection, text)  # warm-up
    score_times, matmul_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.topk(scorer.score(selection, text), 5, dim=1)
        score_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        left @ text.T
        matmul_times.append(time.perf_counter() - start)
    return float(np.median(score_times)), float(np.median(matmul_times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--heldout", type=int, default=2000)
    parser.add_argument("--store", default="runs/bench_labels.h5")
    args = parser.parse_args()
    start = time.perf_counter()
    model, encoder = load_demo_classifier(), load_encoder("demo")
    composite = EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])
    store = run_analysis(model, DemoWorldDataset("probe", size=args.samples), encoder, LAYERS, args.store,
                         composite=composite, config=AnalysisConfig(batch_size=64, crop_count=0), progress=False)

    final_layer = {}
    for name, scorer in scorers().items():
        labels = label_units(store, "fc", list(CLASS_NAMES), encoder=encoder, scorer=scorer)
        final_layer[name] = round(float(np.mean([a == b for a, b in zip(labels.top1(), CLASS_NAMES)])), 4)

    heldout = DemoWorldDataset("heldout", size=args.heldout)
    images = torch.stack([heldout[i][0] for i in range(len(heldout))])
    candidates = load_candidates(["demo"])
    confounded_units, correct, incidental, examples = {}, {}, {}, {}
    for layer in LAYERS[:2]:
        acts = unit_activations(model, layer, images, composite=composite)
        truth, _ = best_explaining_attribute(acts, heldout)
        units = [u for u, concept in enumerate(truth) if is_confounded_attribute(concept)]
        confounded_units[layer] = len(units)
        for name, scorer in scorers().items():
            top1 = label_units(store, layer, candidates, encoder=encoder, scorer=scorer).top1()
            correct.setdefault(name, {})[layer] = sum(names_attribute(top1[u], truth[u]) for u in units)
            incidental.setdefault(name, {})[layer] = sum(names_incidental_attribute(top1[u], truth[u]) for u in units)
            examples.setdefault(layer, {})[name] = [f"unit {u}: truth {truth[u]!r}, label {top1[u]!r}"
                                                    for u in units[:4]]
    score_s, matmul_s = timing()
    report = {
        "samples": args.samples, "heldout": args.heldout, "candidates": len(candidates),
        "final_layer_top1": final_layer,
        "confounded_units": confounded_units,
        "confounded_correct": correct,
        "confounded_incidental": incidental,
        "examples": examples,
        "score_s": round(score_s, 4), "matmul_s": round(matmul_s, 4), "score_over_matmul": round(score_s / matmul_s, 3),
        "timing_shapes": {"units": 512, "labels": 20000, "dim": 512, "positives": 30},
        "total_s": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
