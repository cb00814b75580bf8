"""FES augmentation ("FERSNet w/ FES-DA", the paper's Sec. IV-D, Table VI):
render every other expression of the label set for each labelled training
face, then fine-tune the recognition stream on real + synthesized faces
(docs/methods.md, FERSNet)."""

from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from components import contract
from models import inputs
from models.fersnet.augmentation import augment_batch
from models.fersnet.model import FERSNetModel, synthesize
from models.fersnet.networks import NUM_CLASSES
from models.preprocessing import decode_image

log = logging.getLogger(__name__)


def decode_faces(samples: Sequence[contract.FaceSample], size: int) -> np.ndarray:
    """The samples' images decoded to float ``[N, size, size, 1]`` in [0, 1]
    (as the model input; 256 at a time)."""
    out = []
    for i in range(0, len(samples), 256):
        chunk = tf.constant([s.image for s in samples[i:i + 256]])
        out.append(decode_image(chunk, size).numpy())
    return np.concatenate(out) if out else np.zeros((0, size, size, 1), np.float32)


def present_emotions(emotion, group) -> Dict[Any, set]:
    """``group -> {emotions with at least one labelled sample}`` (groups are
    dataset names or ``dataset_id`` values)."""
    present: Dict[Any, set] = {}
    for e, g in zip(np.asarray(emotion).tolist(), list(group)):
        if e >= 0:
            present.setdefault(g, set()).add(int(e))
    return present


def fes_jobs(emotion, emotion_mask, group, present: Dict[Any, set],
             emotions: Optional[Sequence[Union[int, str]]] = None) -> List[Tuple[int, int]]:
    """``(row, target)`` pairs of FES augmentation: for each labelled row every
    target of its label set (``emotion_mask``) other than its own emotion, among
    ``emotions`` (indices or names) or, by default, the emotions ``present`` in
    the row's group."""
    fixed = None
    if emotions is not None:
        fixed = {int(e) if isinstance(e, (int, np.integer)) else contract.canonical_emotion(e)
                 for e in emotions}
    jobs: List[Tuple[int, int]] = []
    for i, (e, m, g) in enumerate(zip(np.asarray(emotion).tolist(), np.asarray(emotion_mask),
                                      list(group))):
        if e < 0:
            continue
        wanted = fixed if fixed is not None else present.get(g, set())
        jobs += [(i, int(t)) for t in np.flatnonzero(m) if int(t) != e and int(t) in wanted]
    return jobs


def synthesize_balanced_arrays(model: FERSNetModel, data: tf.data.Dataset,
                               emotions: Optional[Sequence[Union[int, str]]] = None,
                               batch_size: int = 64) -> Dict[str, np.ndarray]:
    """FES augmentation on a *finite* dataset of model-input batches (what the
    TFX Trainer reads): the same rule as :func:`synthesize_balanced`, with
    ``dataset_id`` as the dataset. Two passes (the first finds the emotions
    present per dataset). Returns model-input arrays of the synthesized faces:
    ``image`` (uint8 ``[N,S,S,1]``, to save memory), ``emotion``,
    ``emotion_mask``, ``dataset_id``, ``subject_id``."""
    def group_of(batch):
        if "dataset_id" in batch:
            return np.asarray(batch["dataset_id"]).reshape(-1)
        return np.zeros(np.asarray(batch["emotion"]).reshape(-1).shape, np.int64)

    emo, grp = [], []
    for batch in data:
        emo.append(np.asarray(batch["emotion"]).reshape(-1))
        grp.append(group_of(batch))
    present = present_emotions(np.concatenate(emo), np.concatenate(grp).tolist()) if emo else {}
    keys = ("emotion", "emotion_mask", "dataset_id", "subject_id")
    out: Dict[str, List[np.ndarray]] = {k: [] for k in ("image",) + keys}
    for batch in data:
        e = np.asarray(batch["emotion"]).reshape(-1)
        mask = np.asarray(batch["emotion_mask"])
        jobs = fes_jobs(e, mask, group_of(batch).tolist(), present, emotions)
        if not jobs:
            continue
        rows = np.asarray([j[0] for j in jobs])
        targets = np.asarray([j[1] for j in jobs], np.int64)
        fakes = synthesize(model, np.asarray(batch["image"])[rows], targets, batch_size)
        out["image"].append(np.rint(np.clip(fakes, 0, 1) * 255.0).astype(np.uint8))
        out["emotion"].append(targets)
        out["emotion_mask"].append(mask[rows].astype(np.float32))
        for k in ("dataset_id", "subject_id"):
            v = batch.get(k)
            out[k].append(np.asarray(v).reshape(-1)[rows].astype(np.int64) if v is not None
                          else -np.ones(len(rows), np.int64))
    if not out["image"]:
        s = int(model.cfg["image_size"])
        return {"image": np.zeros((0, s, s, 1), np.uint8), "emotion": np.zeros(0, np.int64),
                "emotion_mask": np.zeros((0, NUM_CLASSES), np.float32),
                "dataset_id": np.zeros(0, np.int64), "subject_id": np.zeros(0, np.int64)}
    return {k: np.concatenate(v) for k, v in out.items()}


def fes_training_dataset(data: tf.data.Dataset, fes: Dict[str, np.ndarray], batch_size: int,
                         augment=None, seed: int = 0) -> Tuple[tf.data.Dataset, int]:
    """``(dataset, steps_per_epoch)``: real batches of ``data`` and the
    synthesized ``fes`` arrays mixed in proportion to their sizes, shuffled,
    re-batched (keys ``image``, ``emotion``, ``emotion_mask``, ``dataset_id``,
    ``subject_id``), ``augment`` applied; one epoch covers both once."""
    keys = ("emotion", "emotion_mask", "dataset_id", "subject_id")

    def select(batch):
        n = tf.shape(batch["emotion"])[0]
        out = {"image": tf.cast(batch["image"], tf.float32),
               "emotion": tf.reshape(tf.cast(batch["emotion"], tf.int64), [-1]),
               "emotion_mask": tf.cast(batch["emotion_mask"], tf.float32)}
        for k in ("dataset_id", "subject_id"):
            out[k] = (tf.reshape(tf.cast(batch[k], tf.int64), [-1]) if k in batch
                      else -tf.ones([n], tf.int64))
        return out

    real = data.map(select).unbatch()
    n_real = int(real.reduce(np.int64(0), lambda c, _: c + 1))
    n_fes = len(fes["emotion"])
    synth = tf.data.Dataset.from_tensor_slices({"image": fes["image"],
                                               **{k: fes[k] for k in keys}})
    synth = synth.map(lambda d: {**d, "image": tf.cast(d["image"], tf.float32) / 255.0})
    parts = [real.shuffle(4096, seed=seed).repeat()]
    weights = [float(n_real)]
    if n_fes:
        parts.append(synth.shuffle(min(n_fes, 16384), seed=seed).repeat())
        weights.append(float(n_fes))
    mixed = tf.data.Dataset.sample_from_datasets(parts, weights=[w / sum(weights)
                                                                 for w in weights], seed=seed)
    ds = mixed.batch(batch_size, drop_remainder=True)
    if augment is not None:
        ds = ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE), max((n_real + n_fes) // batch_size, 1)


def synthesize_balanced(model: FERSNetModel, samples: Iterable[contract.FaceSample],
                        emotions: Optional[Sequence[Union[int, str]]] = None,
                        batch_size: int = 64) -> List[contract.FaceSample]:
    """FES data augmentation: every other expression for each labelled face.

    For each sample with an emotion, one face is synthesized for every target
    expression of its label set (``emotion_mask``) other than its own,
    restricted to ``emotions`` (default: the expressions present among the
    labelled ``samples`` of the same dataset).  Real + synthesized data then
    hold exactly one image per face in every class (balanced).  New samples:
    ``dataset`` ``<dataset>_fes``, ``uid`` ``<uid>_fes_<emotion>``, same
    ``subject``/``domain``/``split``/label set, no AU or landmark labels;
    images are PNG at ``image_size``.
    """
    samples = [s for s in samples if s.emotion >= 0]
    if not samples:
        return []
    groups = [s.dataset for s in samples]
    jobs = fes_jobs(np.asarray([s.emotion for s in samples]),
                    np.stack([s.emotion_mask for s in samples]), groups,
                    present_emotions([s.emotion for s in samples], groups), emotions)
    if not jobs:
        return []
    size = int(model.cfg["image_size"])
    images = decode_faces(samples, size)
    idx = np.asarray([j[0] for j in jobs])
    tgt = np.asarray([j[1] for j in jobs], np.int64)
    fakes = synthesize(model, images[idx], tgt, batch_size)
    out = []
    for (i, t), img in zip(jobs, fakes):
        s = samples[i]
        out.append(contract.FaceSample(
            image=contract.encode_png(np.rint(np.clip(img[..., 0], 0, 1) * 255.0)),
            dataset=f"{s.dataset}_fes", uid=f"{s.uid}_fes_{contract.EMOTIONS[t]}",
            emotion=t, emotion_mask=s.emotion_mask, subject=s.subject, domain=s.domain,
            split=s.split, sequence=s.sequence))
    return out


def fine_tune_with_fes(model: FERSNetModel, cfg: Dict[str, Any], data,
                       epochs: Optional[int] = None, batch_size: Optional[int] = None,
                       datasets: Sequence[str] = (), validation_data=None, callbacks=(),
                       seed: int = 0, verbose=0):
    """FES augmentation then fine-tuning of the recognition stream.

    ``data``: the labelled training faces, as contract ``FaceSample`` objects
    (synthesized with :func:`synthesize_balanced`) or a *finite*
    ``tf.data.Dataset`` of model-input batches, e.g. the TFX Trainer's
    Transform output (:func:`synthesize_balanced_arrays`). Then trains the
    recognition stream (``rec_*`` blocks and classifier; ConvFLU transfers,
    synthesis stream, decoder and discriminator frozen) with ``L_cls`` on
    real + synthesized faces for ``epochs`` (default ``cfg["fes_epochs"]``)
    at ``cfg["fes_learning_rate"]``. Returns ``(history, fes)``: the
    synthesized ``FaceSample`` list or arrays; the model is left in the
    ``"joint"`` stage.
    """
    epochs = int(epochs if epochs is not None else cfg["fes_epochs"])
    batch_size = int(batch_size or cfg["batch_size"])
    aug = (lambda b: augment_batch(b, cfg)) if cfg.get("augment", True) else None
    steps = None
    if isinstance(data, tf.data.Dataset):
        fes = synthesize_balanced_arrays(model, data)
        ds, steps = fes_training_dataset(data, fes, batch_size, augment=aug, seed=seed)
        log.info("fersnet: FES fine-tuning on real + %d synthesized faces", len(fes["emotion"]))
    else:
        samples = list(data)
        fes = synthesize_balanced(model, samples)
        ds = inputs.dataset_from_samples(samples + fes, int(cfg["image_size"]), batch_size,
                                         datasets, training=True, seed=seed, augment=aug)
        log.info("fersnet: FES fine-tuning on %d real + %d synthesized faces", len(samples),
                 len(fes))
    model.set_stage("recognition")
    try:
        hist = model.fit(ds, epochs=epochs, steps_per_epoch=steps,
                         validation_data=validation_data, callbacks=list(callbacks),
                         verbose=verbose)
    finally:
        model.set_stage("joint")
    return hist, fes
