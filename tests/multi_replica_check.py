"""Train one method for a few steps under a 2-replica ``MirroredStrategy`` on CPU.

Run in a fresh process (the logical-CPU split must precede any other
TensorFlow call), by ``tests/test_multi_replica.py``::

    python -m tests.multi_replica_check METHOD

Prints one JSON line: ``{"method", "replicas", "losses", "moved", "variables"}``
where ``moved`` counts the trainable variables whose value changed.
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(name: str) -> dict:
    from models import training    # imports TF but does not start its devices

    os.environ.setdefault(training.CPU_REPLICAS_ENV, "2")
    strategy = training.distribution_strategy()       # first TF call of the process
    import keras
    import numpy as np

    from tests.method_helpers import synthetic_split

    train, _ = synthetic_split(4, 1, size=64, domains=("lab", "wild"))

    class Snapshot(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.before = [np.array(v) for v in self.model.trainable_variables]

    snap = Snapshot()
    _, model, _, hist = training.train(name, train, preset="small", epochs=1, steps_per_epoch=3,
                                       batch_size=8, seed=0, callbacks=[snap])
    after = [np.array(v) for v in model.trainable_variables]
    moved = sum(not np.array_equal(a, b) for a, b in zip(snap.before, after))
    losses = {k: float(v[-1]) for k, v in hist.history.items() if "loss" in k}
    return {"method": name, "replicas": strategy.num_replicas_in_sync, "losses": losses,
            "moved": moved, "variables": len(after)}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1])), flush=True)
