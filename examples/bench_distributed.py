"""Wall time of the analysis pass with 1 and 2 processes (torchrun, gloo on CPU / NCCL on GPU) on the
same demo data, and whether the two stores are equal. Prints one JSON object.

    python examples/bench_distributed.py [--samples 2000] [--nproc 2]

Run as a script it launches the runs itself; `--worker` is the entry point torchrun starts.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np


def worker(path: str, samples: int, batch_size: int) -> None:
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.composites import EpsilonPlusFlat

    from crp_csp import AnalysisConfig, load_encoder, rank_device, run_analysis
    from crp_csp.demo import DemoWorldDataset, load_demo_classifier

    device = rank_device("cuda" if os.environ.get("CRP_CSP_BENCH_CUDA") else "cpu")
    run_analysis(load_demo_classifier(device), DemoWorldDataset("probe", size=samples), load_encoder("demo", device),
                 ["features.conv3", "features.conv4", "fc"], path,
                 composite=EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()]),
                 config=AnalysisConfig(batch_size=batch_size, crop_count=10, device=device), progress=False)


def stores_equal(first: Path, second: Path) -> bool:
    with h5py.File(first) as a, h5py.File(second) as b:
        names = []
        a.visit(lambda name: names.append(name) if isinstance(a[name], h5py.Dataset) else None)
        for name in names:
            if name not in b or a[name].shape != b[name].shape:
                return False
            if not np.allclose(a[name][()], b[name][()], rtol=1e-5, atol=1e-6):
                return False
    return True


def launch(nproc: int, path: Path, samples: int, batch_size: int) -> float:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               __file__, "--worker", str(path), "--samples", str(samples), "--batch-size", str(batch_size)]
    start = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": str(max(1, os.cpu_count() // nproc))})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--worker", metavar="STORE")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.samples, args.batch_size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        one = launch(1, Path(tmp) / "one.h5", args.samples, args.batch_size)
        many = launch(args.nproc, Path(tmp) / "many.h5", args.samples, args.batch_size)
        equal = stores_equal(Path(tmp) / "one.h5", Path(tmp) / "many.h5")
    from crp_csp.analysis.distributed import default_backend

    backend = default_backend()  # what the ranks of the second run initialised
    print(json.dumps({"samples": args.samples, "cpus": os.cpu_count(), "backend": backend, "wall_s_1": round(one, 2),
                      f"wall_s_{args.nproc}": round(many, 2), "speedup": round(one / many, 3),
                      "stores_equal": equal}, indent=2))


if __name__ == "__main__":
    main()
