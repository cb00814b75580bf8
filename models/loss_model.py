"""Keras pieces every method's training model is built from.

* :class:`LossModel` — a ``keras.Model`` wrapping a functional ``net``
  (``image -> dict``) whose ``fit`` consumes batches of model-input dicts
  (``models/preprocessing.py``) and whose loss reads the masks in the batch.
  Subclasses implement :meth:`LossModel.compute_batch_loss`.
* :class:`LabelSetMask` — remembers the union of the emotion label sets seen
  in training and restricts inference outputs to it (an emotion no training
  dataset labels never gets a gradient, so its score is meaningless).
* :func:`replica_scaled` — a loss for optimizers that sum replica gradients.
"""

from __future__ import annotations

from typing import Dict, Tuple

import keras
import tensorflow as tf

from components import contract


def replica_scaled(loss: tf.Tensor) -> tf.Tensor:
    """``loss / num_replicas``: optimizers sum gradients across replicas."""
    n = tf.distribute.get_strategy().num_replicas_in_sync
    return loss / tf.cast(n, loss.dtype) if n > 1 else loss


@keras.saving.register_keras_serializable(package="fermtl")
class LabelSetMask(keras.layers.Layer):
    """Restricts emotion outputs ``[B, n]`` to the labels seen in training.

    Holds a non-trainable 0/1 vector ``label_set`` (saved with the weights),
    grown by :meth:`update` with each training batch's ``emotion_mask``. In
    ``call``, outputs outside the set become ``fill`` (``-1e9`` for logits
    before a softmax, ``0`` for probabilities); while the set is still empty
    everything passes through.
    """

    def __init__(self, num_labels: int = contract.NUM_EMOTIONS, fill: float = -1e9, **kwargs):
        super().__init__(**kwargs)
        self.num_labels = int(num_labels)
        self.fill = float(fill)

    def build(self, input_shape):
        self.label_set = self.add_weight(
            name="label_set", shape=(self.num_labels,), initializer="zeros",
            trainable=False, aggregation="only_first_replica")

    def call(self, x):
        seen = keras.ops.convert_to_tensor(self.label_set) > 0
        keep = keras.ops.logical_or(seen, keras.ops.logical_not(keras.ops.any(seen)))
        return keras.ops.where(keep, x, keras.ops.cast(self.fill, x.dtype))

    def update(self, emotion_mask):
        """Add the label sets of a batch (``[B, n]`` masks) to ``label_set``."""
        seen = tf.reduce_max(tf.cast(emotion_mask, tf.float32), axis=0)
        ctx = tf.distribute.get_replica_context()
        if ctx is not None and ctx.num_replicas_in_sync > 1:
            seen = ctx.all_reduce(tf.distribute.ReduceOp.SUM, seen)
        self.label_set.assign(tf.maximum(tf.convert_to_tensor(self.label_set),
                                         tf.cast(seen > 0, self.label_set.dtype)))

    def get_config(self):
        return {**super().get_config(), "num_labels": self.num_labels, "fill": self.fill}


class LossModel(keras.Model):
    """Trains the functional ``net`` (``image -> dict of tensors``) on
    model-input dicts.

    ``fit``/``evaluate`` batches are the dicts of ``models/preprocessing.py``;
    ``call`` accepts such a dict or a bare image tensor and returns ``net``'s
    outputs. Subclasses implement :meth:`compute_batch_loss` returning a dict
    with ``"loss"`` (the task loss, regularisation losses are added here) and
    any of ``loss_terms`` to log. Save/restore with ``save_weights`` /
    ``load_weights``; save the *inference* model (a plain functional model) as
    ``.keras``.
    """

    #: Names logged by train/test steps; "loss" must be first.
    loss_terms: Tuple[str, ...] = ("loss",)

    def __init__(self, net: keras.Model, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.trackers = {k: keras.metrics.Mean(name=k) for k in self.loss_terms}
        self.built = True

    def call(self, inputs, training=False):
        if isinstance(inputs, dict):
            inputs = inputs["image"]
        return self.net(inputs, training=training)

    def load_weights(self, filepath, *args, **kwargs):
        """``keras.Model.load_weights`` that first builds the optimizer, so the
        optimizer state saved in a ``.weights.h5`` is restored too."""
        if self.optimizer is not None and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        return super().load_weights(filepath, *args, **kwargs)

    def compute_batch_loss(self, batch: Dict[str, tf.Tensor], outputs: Dict[str, tf.Tensor],
                           training: bool) -> Dict[str, tf.Tensor]:
        raise NotImplementedError

    @property
    def metrics(self):
        return list(self.trackers.values())

    def _log(self, terms: Dict[str, tf.Tensor]):
        for k, tracker in self.trackers.items():
            if k in terms:
                tracker.update_state(terms[k])
        return {k: t.result() for k, t in self.trackers.items()}

    def train_step(self, batch):
        with tf.GradientTape() as tape:
            outputs = self(batch["image"], training=True)
            terms = dict(self.compute_batch_loss(batch, outputs, training=True))
            if self.losses:
                terms["loss"] = terms["loss"] + tf.add_n(self.losses)
            loss = replica_scaled(terms["loss"])
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        self.optimizer.apply(grads, variables)
        return self._log(terms)

    def test_step(self, batch):
        outputs = self(batch["image"], training=False)
        terms = dict(self.compute_batch_loss(batch, outputs, training=False))
        if self.losses:
            terms["loss"] = terms["loss"] + tf.add_n(self.losses)
        return self._log(terms)

    def predict_step(self, batch):
        return self(batch["image"] if isinstance(batch, dict) else batch, training=False)
