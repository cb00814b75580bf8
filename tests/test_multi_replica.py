"""Every method trains under ``MirroredStrategy`` with 2 replicas (2 logical CPU
devices, ``FERMTL_CPU_REPLICAS=2``): the multi-replica code paths -- losses
scaled per replica on the gradient tape, cross-replica updates of non-trainable
state (centres, memory banks, label sets) -- run without a GPU. Each method runs
in its own process (``tests/multi_replica_check.py``) because the CPU split has
to happen before TensorFlow starts. (FERSNet failed here before its losses were
scaled on the tape: "No gradients provided for any variable".)
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from models import registry, training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# Outside the default run (make test-all runs them), measured on 2 cores:
# tracenorm's ResNet-34 pair ~45 s to trace twice, fersnet 47 s, multidataset
# 20 s, ddmtl 18 s, sjmt 13 s. baseline keeps the two-replica path in CI.
SLOW = {"tracenorm", "fersnet", "multidataset", "ddmtl", "sjmt"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in registry.method_names()])
def test_method_trains_with_two_replicas(name):
    env = dict(os.environ, PYTHONPATH=ROOT, **{training.CPU_REPLICAS_ENV: "2"})
    proc = subprocess.run([sys.executable, "-m", "tests.multi_replica_check", name], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert out["losses"] and all(math.isfinite(v) for v in out["losses"].values()), out
    # every part of the model gets gradients (a loss scaled off the tape gives none)
    assert out["moved"] >= 0.9 * out["variables"], out
