"""A small, seeded analysis setup shared by tests, runnable as a subprocess (for kill/resume tests).

Usage: ``python tests/analysis_job.py STORE_PATH SAMPLES`` runs the pass and exits.
"""
from __future__ import annotations

import logging
import sys

import open_clip
import torch
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat

from crp_csp.analysis import AnalysisConfig, run_analysis
from crp_csp.demo import DemoClassifier, DemoWorldDataset, build_demo_clip, demo_tokenizer
from crp_csp.encoders import OpenClipEncoder

LAYERS = ["features.conv3", "features.conv4", "fc"]


def make_model(seed: int = 0) -> DemoClassifier:
    torch.manual_seed(seed)
    model = DemoClassifier()
    # non-trivial BatchNorm statistics, so that canonizers have something to merge
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    return model.eval()


def make_encoder(seed: int = 1) -> OpenClipEncoder:
    torch.manual_seed(seed)
    return OpenClipEncoder(build_demo_clip().eval(), demo_tokenizer(), open_clip.OPENAI_DATASET_MEAN,
                           open_clip.OPENAI_DATASET_STD, 64, "demo-random-seed1")


def make_composite() -> EpsilonPlusFlat:
    return EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])


def small_config(**changes) -> AnalysisConfig:
    options = dict(batch_size=16, chunk_size=32, pool_size=50, crop_count=2, crop_modes=("relevance",))
    options.update(changes)
    return AnalysisConfig(**options)


def run(path, samples: int, **config):
    return run_analysis(make_model(), DemoWorldDataset("probe", size=samples), make_encoder(), LAYERS, path,
                        composite=make_composite(), config=small_config(**config), progress=False)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")  # tests read the "resuming" lines
    run(sys.argv[1], int(sys.argv[2]))
