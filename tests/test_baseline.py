"""Single-task baseline (models/baseline.py) and the shared training loop
(models/training.py): learning on held-out synthetic subjects, save/load,
export, checkpoint resume, the cosine schedule, evaluate. CPU, small preset.

One baseline is trained per module (fixture ``trained``) and shared.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import contract
from models import augment, baseline, loss_model, preprocessing, training
from tests.method_helpers import chance, synthetic_split

SIZE = 48
EPOCHS = 8
BATCH = 16
# Shared with tests/test_sjmt.py (same lru_cache entry when run together).
SPLIT = dict(n_train=40, n_test=8, size=SIZE, domains=("lab", "wild"), samples_per_emotion=1)


@pytest.fixture(scope="module")
def split():
    train, test = synthetic_split(**SPLIT)
    return train, [s for s in test if s.domain == "lab"]


@pytest.fixture(scope="module")
def trained(split, tmp_path_factory):
    ckpt = str(tmp_path_factory.mktemp("baseline_ckpt"))
    result = training.train("baseline", split[0], preset="small", epochs=EPOCHS,
                            batch_size=BATCH, seed=0, checkpoint_dir=ckpt)
    return result + (ckpt,)


def _images(samples):
    return preprocessing.decode_image(tf.constant([s.image for s in samples]), SIZE)


# --------------------------------------------------------------------------- #
# unit tests (no training)
# --------------------------------------------------------------------------- #
def test_label_set_mask_restricts_inference_to_seen_labels():
    layer = loss_model.LabelSetMask(8, fill=-1e9)
    x = tf.ones([2, 8])
    np.testing.assert_array_equal(layer(x).numpy(), x.numpy())  # nothing seen yet
    layer.update(tf.constant([[1, 1, 0, 0, 0, 0, 0, 0], [0, 1, 1, 0, 0, 0, 0, 0]], tf.float32))
    out = layer(x).numpy()
    assert (out[:, :3] == 1).all() and (out[:, 3:] == -1e9).all()


def test_random_pad_crop_is_an_integer_shift():
    x = tf.reshape(tf.range(2 * 6 * 6, dtype=tf.float32), [2, 6, 6, 1]) + 1.0
    y = augment.random_pad_crop(x, 2).numpy()
    padded = np.pad(x.numpy(), [(0, 0), (2, 2), (2, 2), (0, 0)])
    for i in range(2):
        hits = [(dy, dx) for dy in range(5) for dx in range(5)
                if np.array_equal(padded[i, dy:dy + 6, dx:dx + 6], y[i])]
        assert hits


# --------------------------------------------------------------------------- #
# trained model
# --------------------------------------------------------------------------- #
def test_fit_learns_and_beats_chance_on_held_out_subjects(trained, split):
    method, model, cfg, history, _ = trained
    loss = history.history["loss"]
    assert loss[-1] < 0.8 * loss[0]
    result = training.evaluate(method, model, cfg, split[1])
    assert result["num_examples"] == len(split[1])
    assert result["accuracy"] > 2 * chance(), result
    # evaluate's bookkeeping
    conf = np.asarray(result["confusion_matrix"])
    assert conf.shape == (8, 8) and conf.sum() == len(split[1])
    assert result["per_class_recall"]["contempt"] is None
    assert np.isclose(result["accuracy"], np.trace(conf) / conf.sum())
    # The split was generated with the 7 basic emotions: that label set is what is
    # learned, and contempt stays masked out.
    seen = model.net.get_layer("label_set").label_set.numpy()
    np.testing.assert_array_equal(seen, [1, 1, 1, 1, 1, 1, 1, 0])


def test_save_load_identical_predictions(trained, split, tmp_path):
    method, model, cfg, _, _ = trained
    x = _images(split[1][:6])
    infer = method.inference_model(model, cfg)
    ref = {k: np.asarray(v) for k, v in infer(x).items()}
    np.testing.assert_allclose(ref["probabilities"].sum(-1), 1.0, atol=1e-5)
    path = str(tmp_path / "baseline.keras")
    infer.save(path)
    loaded = keras.models.load_model(path)
    got = loaded(x)
    for k in ref:
        np.testing.assert_array_equal(np.asarray(got[k]), ref[k])
    wpath = str(tmp_path / "baseline.weights.h5")
    model.save_weights(wpath)
    fresh = method.build(cfg)
    fresh.load_weights(wpath)
    np.testing.assert_array_equal(
        np.asarray(method.inference_model(fresh, cfg)(x)["probabilities"]), ref["probabilities"])


def test_exported_signature_answers_raw_images(trained, split, tmp_path):
    from models import export

    method, model, cfg, _, _ = trained
    samples = split[1][:4]
    out = export.load_and_predict(
        export.export_saved_model(method, model, cfg, str(tmp_path / "1")),
        [s.image for s in samples])
    ref = np.asarray(method.inference_model(model, cfg)(_images(samples))["probabilities"])
    np.testing.assert_allclose(out["probabilities"], ref, atol=1e-5)
    assert out["label"] == [contract.EMOTIONS[i] for i in ref.argmax(-1)]


def test_cosine_schedule_follows_the_formula_and_resumes(split, tmp_path):
    """``lr_schedule: cosine`` (Loshchilov & Hutter 2017, Eq. 5 with eta_min = 0):
    lr_t = lr_0 (1 + cos(pi t / T)) / 2 with T = epochs x steps of the planned fit
    (``cfg["schedule_steps"]``) and t the optimizer's step count, which the
    checkpoint restores: a resumed fit continues the curve, it does not restart it."""
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(float(self.model.optimizer.learning_rate.numpy()))

    samples, steps, epochs = split[0][:4 * BATCH], 4, 3
    kwargs = dict(preset="small", batch_size=BATCH, seed=0, callbacks=[Record()],
                  overrides={"lr_schedule": "cosine", "learning_rate": 0.01},
                  checkpoint_dir=str(tmp_path))
    training.train("baseline", samples, epochs=2, **kwargs)
    training.train("baseline", samples, epochs=epochs, **kwargs)     # resumes at epoch 2
    t = np.arange(epochs * steps)
    np.testing.assert_allclose(seen[:2 * steps], 0.005 * (1 + np.cos(np.pi * t[:8] / 8)),
                               rtol=1e-5)                            # first fit: T = 2 x 4
    np.testing.assert_allclose(seen[2 * steps:], 0.005 * (1 + np.cos(np.pi * t[8:] / 12)),
                               rtol=1e-5)                            # resumed: T = 3 x 4
    method = baseline.BaselineCNN()
    with pytest.raises(ValueError, match="lr_schedule"):
        method.build(method.config("small", lr_schedule="step"))
    with pytest.raises(ValueError, match="schedule_steps"):      # cosine of an unknown length
        method.build(method.config("small", lr_schedule="cosine"))


def test_checkpoint_resume_continues(trained, split, tmp_path):
    """Keras ``BackupAndRestore`` in the core: the backup records the epochs done
    and the optimizer state, a later call with more epochs runs only the rest."""
    method, model, cfg, _, ckpt = trained
    assert training.epochs_done(ckpt) == EPOCHS
    assert os.path.exists(os.path.join(ckpt, training.BACKUP_WEIGHTS))
    steps = len(split[0]) // BATCH
    assert int(model.optimizer.iterations.numpy()) == EPOCHS * steps
    # A second call resumes from epoch EPOCHS: one more epoch, optimizer state
    # kept. It reads the same samples from a GZIP TFRecord file (compression
    # detected from ".gz", dataset names scanned from the file).
    path = str(tmp_path / "train.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as w:
        for s in split[0]:
            w.write(s.serialize())
    _, resumed, rcfg, history = training.train("baseline", path, preset="small",
                                               epochs=EPOCHS + 1, batch_size=BATCH, seed=0,
                                               checkpoint_dir=ckpt)
    assert rcfg["datasets"] == cfg["datasets"] == ["synth_lab", "synth_wild"]
    assert len(history.history["loss"]) == 1
    assert int(resumed.optimizer.iterations.numpy()) == (EPOCHS + 1) * steps
    assert training.epochs_done(ckpt) == EPOCHS + 1
    # Asking for epochs already done trains nothing and returns the backup.
    _, again, _, history = training.train("baseline", split[0], preset="small",
                                          epochs=EPOCHS + 1, batch_size=BATCH,
                                          checkpoint_dir=ckpt)
    assert history.history == {}
    x = _images(split[1][:3])
    np.testing.assert_array_equal(
        np.asarray(method.inference_model(again, cfg)(x)["probabilities"]),
        np.asarray(method.inference_model(resumed, cfg)(x)["probabilities"]))

def test_select_best_returns_the_best_validation_epoch_across_a_resume(tmp_path):
    """``Plan.select_best`` (the ``kfold_val`` protocol's epoch selection): the
    fit returns the weights of the epoch with the best validation accuracy, not
    the last one, also when the fit was resumed after that epoch. The logits
    bias is forced so that epoch 1 predicts the validation class (accuracy 1)
    and epoch 3 another one (accuracy 0)."""
    emotions = ("happiness", "surprise")
    train, test = synthetic_split(n_train=4, n_test=2, size=SIZE, emotions=emotions)
    val = [s for s in test if s.emotion == contract.EMOTIONS.index("surprise")]
    forced = {0: contract.EMOTIONS.index("surprise"), 2: contract.EMOTIONS.index("happiness")}
    weights_at = {}

    class Force(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if self.epoch in forced:
                bias = np.zeros(contract.NUM_EMOTIONS, np.float32)
                bias[forced[self.epoch]] = 100.0
                self.model.net.get_layer("logits").bias.assign(bias)

        def on_epoch_end(self, epoch, logs=None):
            weights_at[epoch + 1] = [w.copy() for w in self.model.get_weights()]

    method = baseline.BaselineCNN()

    def fit(epochs):
        cfg = dict(method.config("small"), datasets=["synth_lab"])
        plan = training.Plan(epochs=epochs, batch_size=8, seed=0, callbacks=[Force()],
                             backup_dir=str(tmp_path / "backup"),
                             select_best=str(tmp_path / "selection"))
        return training.fit(method, cfg, training.examples_of(train, cfg),
                            training.examples_of(val, cfg), plan)

    fit(2)                                                   # stopped after epoch 2
    fitted = fit(3)                                          # resumed: epoch 3 only
    scores = fitted.history.history[training.SELECTION_METRIC]
    assert len(scores) == 1 and scores[0] == 0.0             # the last epoch: worst
    sel = fitted.selection
    assert sel["scores"]["1"] == 1.0 and sel["epoch"] == 1 and sel["accuracy"] == 1.0
    assert sorted(sel["scores"]) == ["1", "2", "3"]
    assert set(os.listdir(tmp_path / "selection")) == {training.SELECTION_FILE, sel["weights"]}
    for got, want in zip(fitted.model.get_weights(), weights_at[1]):
        np.testing.assert_array_equal(got, want)             # epoch 1's weights, not 3's
    assert training.evaluate(method, fitted.model, fitted.cfg,
                             training.examples_of(val, fitted.cfg))["accuracy"] == 1.0
    with pytest.raises(ValueError, match="needs eval_examples"):
        training.fit(method, dict(fitted.cfg), training.examples_of(train, fitted.cfg),
                     plan=training.Plan(epochs=1, select_best=str(tmp_path / "s2")))


def test_keras_val_accuracy_is_one_when_every_validation_face_is_right():
    """The ``val_accuracy`` Keras logs (progress bar, History, TensorBoard) on a
    validation set the model gets all right is 1, not ``k / (k + 1)``: Keras
    runs one extra, empty validation step when it does not know the step count."""
    emotions = ("happiness", "surprise")
    train, test = synthetic_split(n_train=2, n_test=2, size=SIZE, emotions=emotions)
    val = [s for s in test if s.emotion == contract.EMOTIONS.index("surprise")]
    surprise = contract.EMOTIONS.index("surprise")

    class Force(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            bias = np.zeros(contract.NUM_EMOTIONS, np.float32)
            bias[surprise] = 100.0
            self.model.net.get_layer("logits").bias.assign(bias)

    method = baseline.BaselineCNN()
    cfg = dict(method.config("small"), datasets=["synth_lab"])
    plan = training.Plan(epochs=1, batch_size=3, seed=0, callbacks=[Force()])
    fitted = training.fit(method, cfg, training.examples_of(train, cfg),
                          training.examples_of(val, cfg), plan)
    assert len(val) > 3                                     # more than one batch
    assert fitted.history.history["val_accuracy"] == [1.0]
