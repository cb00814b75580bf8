"""Augmentation helpers used by the methods' ``augment`` (on model-input batches)."""

from __future__ import annotations

import tensorflow as tf


def random_pad_crop(images: tf.Tensor, padding: int, flip: bool = False) -> tf.Tensor:
    """Per-sample random translation: zero-pad ``padding`` pixels on each side
    and crop back to the input size at a random integer offset (He et al.
    2016, Sec. 4.2: "4 pixels are padded on each side, and a 32x32 crop is
    randomly sampled"); ``flip`` adds random horizontal flips.
    ``images``: ``[B, H, W, C]`` float."""
    static_shape = images.shape
    if padding:
        shape = tf.shape(images)
        b, h, w = shape[0], shape[1], shape[2]
        padded = tf.pad(images, [[0, 0], [padding, padding], [padding, padding], [0, 0]])
        oy = tf.random.uniform([b, 1], 0, 2 * padding + 1, tf.int32)
        ox = tf.random.uniform([b, 1], 0, 2 * padding + 1, tf.int32)
        rows = oy + tf.range(h)[None, :]  # [B, H] rows of the padded image
        cols = ox + tf.range(w)[None, :]  # [B, W]
        images = tf.gather(padded, rows, axis=1, batch_dims=1)
        images = tf.gather(images, cols, axis=2, batch_dims=1)
        images.set_shape(static_shape)
    if flip:
        coin = tf.random.uniform([tf.shape(images)[0], 1, 1, 1]) < 0.5
        images = tf.where(coin, tf.reverse(images, axis=[2]), images)
    return images
