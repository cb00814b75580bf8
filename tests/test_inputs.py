"""models/inputs.py: same-face grouping of training batches."""

from __future__ import annotations

import collections

import numpy as np

from models import inputs
from tests.method_helpers import synthetic_split


def test_group_by_face_emits_same_face_runs_and_drops_nothing():
    import tensorflow as tf

    keys = np.asarray([3, 5, 3, -1, 5, 7, 3, -1, 5, 3, 7, 8], np.int64)
    ds = inputs.group_by_face(tf.data.Dataset.from_tensor_slices(keys), lambda k: k, 2)
    out = [int(k) for k in ds]
    assert collections.Counter(out) == collections.Counter(keys.tolist())
    # five complete runs of 2 (3 3, 3 3, 5 5, -1 -1, 7 7) come first, each one key;
    # the leftovers (one 5, one 8) are flushed at the end of the finite stream
    pairs = [out[i:i + 2] for i in range(0, 10, 2)]
    assert all(a == b for a, b in pairs), out
    assert sorted(out[10:]) == [5, 8]


def _paired_fraction(samples, group_size):
    ds = inputs.dataset_from_samples(samples, 32, batch_size=8, training=True,
                                     group_size=group_size, repeat=True)
    paired = total = 0
    for batch in ds.take(12):
        seq = batch["sequence_id"].numpy()
        assert (seq >= 0).all()
        paired += sum(int((seq == s).sum() > 1) for s in seq)
        total += len(seq)
    return paired / total


def test_grouped_training_batches_hold_same_sequence_pairs():
    train, _ = synthetic_split(8, 1, size=32)     # 16 sequences of 7 expressions
    assert len({(s.subject, s.sequence) for s in train}) == 16
    assert _paired_fraction(train, 2) > 0.9
    assert _paired_fraction(train, 0) < 0.6       # ~1/3 by chance at batch 8


def test_group_key_subject_keeps_subjects_together_across_sequences():
    """``group_key="subject"`` (FERSNet's ``pair_within: subject``, for data
    whose sequences hold one expression each, as CK+'s) groups by subject id,
    not by sequence; an unknown key is a clear error."""
    import pytest
    import tensorflow as tf

    sid = np.asarray([1, 2, 1, 2, 1, 2], np.int64)
    seq = np.asarray([10, 20, 11, 21, 12, 22], np.int64)     # every sample its own sequence
    ds = tf.data.Dataset.from_tensor_slices({"subject_id": sid, "sequence_id": seq})
    by_subject = [int(e["subject_id"]) for e in
                  inputs.group_by_face(ds, inputs.group_key_fn("subject"), 2)]
    # two full runs of one subject each, then the two leftovers of the finite stream
    assert by_subject[0] == by_subject[1] and by_subject[2] == by_subject[3], by_subject
    assert sorted(by_subject[:4]) == [1, 1, 2, 2] and sorted(by_subject[4:]) == [1, 2]
    by_sequence = [int(e["sequence_id"]) for e in
                   inputs.group_by_face(ds, inputs.group_key_fn("sequence"), 2)]
    assert sorted(by_sequence) == sorted(seq.tolist())     # runs of one: nothing pairs, nothing lost
    with pytest.raises(ValueError, match="group_key"):
        inputs.group_key_fn("session")
