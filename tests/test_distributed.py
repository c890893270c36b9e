"""The analysis pass under torchrun with 2 CPU processes (gloo) equals the single-process pass."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from analysis_job import run
from crp_csp import rank_device
from crp_csp.cli import main

HERE = Path(__file__).parent


def _datasets(handle):
    names = []
    handle.visit(lambda name: names.append(name) if isinstance(handle[name], h5py.Dataset) else None)
    return names


def assert_stores_equal(single: Path, sharded: Path) -> None:
    with h5py.File(single) as a, h5py.File(sharded) as b:
        assert _datasets(a) == _datasets(b)
        for name in _datasets(a):
            if name.endswith("references/activation/ids") or name.endswith("references/relevance/ids"):
                np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
            else:
                np.testing.assert_allclose(a[name][()], b[name][()], rtol=1e-5, atol=1e-6, err_msg=name)
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
    assert not Path(f"{sharded}.parts").exists()


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*arguments: str) -> str:
    """Run ``arguments`` on 2 ranks; their stderr."""
    result = subprocess.run(TORCHRUN + list(arguments), cwd=HERE, env=ENVIRONMENT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (read from /proc)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def test_two_processes_equal_one(tmp_path):
    single = run(tmp_path / "single.h5", 160)
    torchrun(str(HERE / "analysis_job.py"), str(tmp_path / "sharded.h5"), "160")
    assert_stores_equal(single.path, tmp_path / "sharded.h5")


def test_killed_ranks_resume_to_the_single_process_store(tmp_path):
    single = run(tmp_path / "single.h5", 256)
    sharded = tmp_path / "sharded.h5"
    launcher = subprocess.Popen(TORCHRUN + [str(HERE / "analysis_job.py"), str(sharded), "256"], cwd=HERE,
                                env=ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = Path(f"{sharded}.parts")
    deadline = time.time() + 300
    while time.time() < deadline and len(list(parts.glob("part_*.npz"))) < 3:
        time.sleep(0.05)
    # torchrun starts each rank in a session of its own: kill the ranks first, then torchrun, as a node failure would
    for pid in descendants(launcher.pid) + [launcher.pid]:
        os.kill(pid, signal.SIGKILL)
    launcher.wait()
    assert not sharded.exists(), "the run finished before it was killed; kill it sooner"
    done = sorted(int(path.stem.split("_")[1]) // 32 for path in parts.glob("part_*.npz"))
    assert 3 <= len(done) < 8  # 256 samples make 8 parts of 32; rank r has parts r, r + 2, ...
    log = torchrun(str(HERE / "analysis_job.py"), str(sharded), "256")
    for rank in (0, 1):
        left = 4 - sum(part % 2 == rank for part in done)
        if 0 < left < 4:
            assert f"resuming: {left} of 4 parts left" in log, log[-3000:]
    assert_stores_equal(single.path, sharded)


def test_cli_under_torchrun_equals_one_process(tmp_path):
    options = ["--samples", "96", "--chunk-size", "32", "--crop-count", "2", "--quiet"]
    assert main(["analyze", "--out", str(tmp_path / "single"), *options]) == 0
    torchrun("-m", "crp_csp.cli", "analyze", "--out", str(tmp_path / "sharded"), *options)
    assert_stores_equal(tmp_path / "single" / "analysis.h5", tmp_path / "sharded" / "analysis.h5")
    assert (tmp_path / "sharded" / "settings.json").read_text() == (tmp_path / "single" / "settings.json").read_text()


@pytest.mark.parametrize("environment, device, expected", [
    ({}, "cuda", "cuda"),
    ({"WORLD_SIZE": "1", "LOCAL_RANK": "0"}, "cuda", "cuda"),
    ({"WORLD_SIZE": "4", "LOCAL_RANK": "3"}, "cuda", "cuda:3"),
    ({"WORLD_SIZE": "4", "LOCAL_RANK": "3"}, "cuda:1", "cuda:1"),
    ({"WORLD_SIZE": "4", "LOCAL_RANK": "3"}, "cpu", "cpu"),
])
def test_rank_device(monkeypatch, environment, device, expected):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    assert rank_device(device) == expected
