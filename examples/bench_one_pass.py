"""Benchmark the one analysis pass against zennit-crp's FeatureVisualization plus a separate encoder pass.

All timings are measured in one run on the same data: demo images written once as PNG files to an
image folder and read from there (as users' data is), the demo classifier's last two conv layers,
the demo encoder. Prints one JSON object.

    python examples/bench_one_pass.py [--samples 2000] [--batch-size 64] [--memory]

- one_pass_s: crp_csp.run_analysis (references, statistics, embeddings; no crops)
- crops_s:    the follow-up embedding of relevance crops (30 per unit, RelMax and ActMax)
- two_pass_s: crp FeatureVisualization.run, then an encoder pass over the folder with its own loading
- bare_s:     a plain loop over the folder: forward/backward under the composite + encoder forward
- --memory:   peak RSS of the one pass on 1,000 and 8,000 demo samples (in subprocesses)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from crp.attribution import CondAttribution
from crp.concepts import ChannelConcept
from crp.visualization import FeatureVisualization
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder
from torchvision.transforms import ToTensor
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonPlusFlat

from crp_csp import AnalysisConfig, load_encoder, run_analysis
from crp_csp.analysis.crops import embed_reference_crops
from crp_csp.demo import CLASS_NAMES, DemoWorldDataset, load_demo_classifier

LAYERS = ["features.conv3", "features.conv4"]


def write_folder(root: Path, samples: int) -> None:
    dataset = DemoWorldDataset("probe", size=samples)
    # ImageFolder sorts class folders by name: a numeric prefix keeps the demo's class indices
    names = [f"{i:02d}_{name.replace(' ', '_')}" for i, name in enumerate(CLASS_NAMES)]
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for index in range(samples):
        label = names[dataset[index][1]]
        Image.fromarray(dataset.image_uint8(index)).save(root / label / f"{index:06d}.png")


def composite():
    return EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])


def time_bare(model, encoder, dataset, batch_size) -> float:
    start = time.perf_counter()
    model.requires_grad_(False)
    with composite().context(model) as modified:
        for images, labels in DataLoader(dataset, batch_size=batch_size):
            data = images.requires_grad_(True)
            output = modified(data)
            grad = torch.zeros_like(output)
            grad[torch.arange(len(output)), labels] = output[torch.arange(len(output)), labels].detach()
            output.backward(grad)
            encoder.encode_images(images)
    return time.perf_counter() - start


def time_two_pass(model, encoder, folder, batch_size, workdir) -> float:
    start = time.perf_counter()
    dataset = ImageFolder(str(folder), transform=ToTensor())
    fv = FeatureVisualization(CondAttribution(model), dataset, {name: ChannelConcept() for name in LAYERS},
                              path=str(workdir / "crp"))
    with contextlib.redirect_stdout(sys.stderr):  # crp prints progress to stdout; keep stdout for the JSON
        fv.run(composite(), 0, len(dataset), batch_size=batch_size, checkpoint=10_000)
    embeddings = []
    for images, _ in DataLoader(ImageFolder(str(folder), transform=ToTensor()), batch_size=batch_size):
        embeddings.append(encoder.encode_images(images))
    torch.cat(embeddings)
    return time.perf_counter() - start


def one_pass(folder, batch_size, path, crop_count=0):
    model, encoder = load_demo_classifier(), load_encoder("demo")
    dataset = ImageFolder(str(folder), transform=ToTensor())
    config = AnalysisConfig(batch_size=batch_size, crop_count=crop_count, chunk_size=1024)
    start = time.perf_counter()
    store = run_analysis(model, dataset, encoder, LAYERS, path, composite=composite(), config=config, progress=False)
    return time.perf_counter() - start, store, model, encoder, dataset


def time_crops(store, model, encoder, dataset, batch_size, count=30) -> float:
    config = AnalysisConfig(batch_size=batch_size, crop_count=count)
    attribution = CondAttribution(model)
    start = time.perf_counter()
    for layer in LAYERS:
        for mode in ("activation", "relevance"):
            pool = store.references(layer, mode)
            embed_reference_crops(attribution, composite(), dataset, encoder, layer, pool["ids"][:count],
                                  pool["rf"][:count], config, progress=False)
    return time.perf_counter() - start


def peak_rss_mb(samples: int, workdir: Path) -> float:
    code = (
        "import sys; sys.argv=['x'];"
        "from crp_csp import AnalysisConfig, load_encoder, run_analysis;"
        "from crp_csp.demo import DemoWorldDataset, load_demo_classifier;"
        "from zennit.composites import EpsilonPlusFlat; from zennit.canonizers import SequentialMergeBatchNorm;"
        f"run_analysis(load_demo_classifier(), DemoWorldDataset('probe', size={samples}), load_encoder('demo'),"
        f"['features.conv3','features.conv4'], r'{workdir}/mem{samples}.h5',"
        "composite=EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]),"
        "config=AnalysisConfig(batch_size=64, crop_count=0), progress=False);"
        # VmHWM is this process's own peak; ru_maxrss would carry the parent's peak across fork/exec
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return round(int(out.stdout.strip().splitlines()[-1]) / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--memory", action="store_true", help="also measure peak RSS at 1,000 and 8,000 samples")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        folder = workdir / "images"
        write_folder(folder, args.samples)
        model, encoder = load_demo_classifier(), load_encoder("demo")
        dataset = ImageFolder(str(folder), transform=ToTensor())
        time_bare(model, encoder, torch.utils.data.Subset(dataset, range(128)), args.batch_size)  # warm-up
        bare = time_bare(model, encoder, dataset, args.batch_size)
        one, store, model, encoder, dataset = one_pass(folder, args.batch_size, workdir / "store.h5")
        two = time_two_pass(load_demo_classifier(), encoder, folder, args.batch_size, workdir)
        crops = time_crops(store, model, encoder, dataset, args.batch_size)
        report = {
            "samples": args.samples, "batch_size": args.batch_size, "layers": LAYERS,
            "threads": torch.get_num_threads(),
            "one_pass_s": round(one, 2), "two_pass_s": round(two, 2), "bare_s": round(bare, 2),
            "crops_s": round(crops, 2), "speedup": round(two / one, 3), "overhead": round(one / bare, 3),
            "targets": {"speedup": ">= 1.15", "overhead": "<= 1.15"},
        }
        if args.memory:
            report["peak_rss_mb"] = {"1000": peak_rss_mb(1000, workdir), "8000": peak_rss_mb(8000, workdir)}
        report["bench_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
