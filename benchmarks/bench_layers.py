"""Cost of the tensor-trace-norm regulariser on two ResNet-34 task networks.

Builds two identical ResNet-34 networks (one per task), stacks every conv
kernel across the two tasks (one group per conv layer, 36 groups) and times a
training step with and without ``TraceNormRegularizer`` (LAF, randomized SVD
by default).  Steps are interleaved (plain, regularised, plain, ...) after
``--warmup`` untimed steps of each; the medians and their ratio are printed.

    make bench-layers          # = .venv/bin/python benchmarks/bench_layers.py
    .venv/bin/python benchmarks/bench_layers.py --batch 16 --size 96 --steps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from models.layers import TraceNormRegularizer  # noqa: E402


def resnet34(input_shape, num_classes, name):
    """Compact ResNet-34 (He et al. 2016, Table 1: basic blocks [3, 4, 6, 3])."""
    layers = keras.layers

    def conv_bn(x, filters, size, stride, relu=True):
        x = layers.Conv2D(filters, size, strides=stride, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    inp = keras.Input(input_shape)
    x = conv_bn(inp, 64, 7, 2)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    for stage, (filters, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3))):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                shortcut = conv_bn(x, filters, 1, stride, relu=False)
            y = conv_bn(x, filters, 3, stride)
            y = conv_bn(y, filters, 3, 1, relu=False)
            x = layers.ReLU()(layers.Add()([shortcut, y]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inp, layers.Dense(num_classes)(x), name=name)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each kind")
    parser.add_argument("--kind", default="laf", choices=["laf", "tucker", "tt"])
    parser.add_argument("--svd", default="randomized", choices=["exact", "randomized", "gram"])
    parser.add_argument("--strength", type=float, default=1e-3)
    args = parser.parse_args(argv)

    keras.utils.set_random_seed(0)
    shape = (args.size, args.size, args.channels)
    nets = [resnet34(shape, 8, "task_a"), resnet34(shape, 8, "task_b")]
    convs = [[l for l in net.layers if isinstance(l, keras.layers.Conv2D)] for net in nets]
    groups = [list(pair) for pair in zip(*convs)]
    params = sum(int(np.prod(g[0].kernel.shape)) for g in groups)
    reg = TraceNormRegularizer(args.strength, kind=args.kind, svd=args.svd)
    variables = nets[0].trainable_variables + nets[1].trainable_variables
    opt = keras.optimizers.SGD(0.01, momentum=0.9)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def make_step(with_reg):
        @tf.function
        def step(x, y1, y2):
            with tf.GradientTape() as tape:
                loss = ce(y1, nets[0](x, training=True)) + ce(y2, nets[1](x, training=True))
                if with_reg:
                    loss = loss + reg(groups)
            opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
            return loss
        return step

    plain_step, reg_step = make_step(False), make_step(True)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(size=(args.batch,) + shape).astype("float32"))
    y1 = tf.constant(rng.integers(0, 8, size=args.batch))
    y2 = tf.constant(rng.integers(0, 8, size=args.batch))

    times = {"plain": [], "trace_norm": []}
    for i in range(args.warmup + args.steps):
        for name, fn in (("plain", plain_step), ("trace_norm", reg_step)):
            t0 = time.perf_counter()
            fn(x, y1, y2).numpy()
            if i >= args.warmup:
                times[name].append(time.perf_counter() - t0)

    plain = statistics.median(times["plain"])
    tn = statistics.median(times["trace_norm"])
    penalty_only = tf.function(lambda: reg(groups))
    penalty_only()
    t0 = time.perf_counter()
    for _ in range(3):
        penalty_only().numpy()
    print(f"two ResNet-34 task nets, input {shape}, batch {args.batch}, "
          f"{len(groups)} conv groups ({params / 1e6:.1f}M params per task), "
          f"trace norm kind={args.kind} svd={args.svd}, {args.steps} timed steps "
          f"(median) after {args.warmup} warm-up")
    print(f"plain step      : {plain * 1e3:8.1f} ms")
    print(f"trace-norm step : {tn * 1e3:8.1f} ms")
    print(f"penalty forward : {(time.perf_counter() - t0) / 3 * 1e3:8.1f} ms")
    print(f"ratio trace-norm / plain = {tn / plain:.3f}  (goal <= 1.3)")
    return tn / plain


if __name__ == "__main__":
    main()
