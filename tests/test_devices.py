"""GPU choice for concurrent jobs: each process holds a different GPU's lock; a dead process frees it."""
import subprocess
import sys

import pytest

from expertmerge.devices import claim_free, resolve_device

HOLD = """
import sys, time
from pathlib import Path
from expertmerge.devices import claim_free
print(claim_free(sys.argv[2].split(","), Path(sys.argv[1])), flush=True)
time.sleep(60)
"""


def test_concurrent_jobs_get_different_gpus_and_a_killed_one_frees_its_gpu(tmp_path):
    names = "GPU-a,GPU-b"
    first = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), names], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "0"
        assert claim_free(names.split(","), tmp_path, wait=False) == 1  # GPU-a is held by the other process
        with pytest.raises(RuntimeError, match="all of 1 GPUs are taken"):
            claim_free(["GPU-a"], tmp_path, wait=False)
    finally:
        first.kill()
        first.wait()
    assert claim_free(["GPU-a"], tmp_path, wait=False) == 0  # freed by the OS when its holder died


def test_explicit_devices_pass_through_and_auto_falls_back_to_cpu():
    assert resolve_device("cuda:3") == "cuda:3"
    assert resolve_device("auto") == "cpu"  # no GPU on the test machines
