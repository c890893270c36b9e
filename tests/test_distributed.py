"""The analysis pass under torchrun with 2 CPU processes (gloo) equals the single-process pass."""
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

from analysis_job import run

HERE = Path(__file__).parent


def _datasets(handle):
    names = []
    handle.visit(lambda name: names.append(name) if isinstance(handle[name], h5py.Dataset) else None)
    return names


def test_two_processes_equal_one(tmp_path):
    single = run(tmp_path / "single.h5", 160)
    sharded = tmp_path / "sharded.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(HERE / "analysis_job.py"), str(sharded), "160"]
    result = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    with h5py.File(single.path) as a, h5py.File(sharded) as b:
        assert _datasets(a) == _datasets(b)
        for name in _datasets(a):
            if name.endswith("references/activation/ids") or name.endswith("references/relevance/ids"):
                np.testing.assert_array_equal(a[name][()], b[name][()], err_msg=name)
            else:
                np.testing.assert_allclose(a[name][()], b[name][()], rtol=1e-5, atol=1e-6, err_msg=name)
        assert a.attrs["fingerprint"] == b.attrs["fingerprint"]
    assert not Path(f"{sharded}.parts").exists()
