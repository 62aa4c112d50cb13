"""Decoding and augmentation of one image, as tf.data map functions (graph mode, stateless randomness).

Every random choice is drawn from a stateless op seeded with the example's position in the stream,
so an example's augmentation depends on (seed, position) only: not on thread scheduling, and not on
whether the stream was resumed. That is why this does not use Keras' preprocessing layers (their
random generators carry state across calls); the operations are the same ones Keras uses
(ImageProjectiveTransformV3 for rotation and zoom, adjust_contrast for contrast).

Images come out float32 [S, S, 3], RGB in [0, 255]; the models normalise inside.
"""

from __future__ import annotations

import math

import ml_collections

from flowers_jax.data._tf import tf


def decode(image: tf.Tensor, dct_method: str, crop: tuple[tf.Tensor, ...] | None = None) -> tf.Tensor:
    """Encoded image -> uint8 [h, w, 3], decoding only `crop` = (y, x, h, w) of a JPEG when given."""

    def jpeg() -> tf.Tensor:
        if crop is None:
            return tf.io.decode_jpeg(image, channels=3, dct_method=dct_method)
        return tf.image.decode_and_crop_jpeg(image, tf.stack(crop), channels=3, dct_method=dct_method)

    def other() -> tf.Tensor:  # PNG, GIF, BMP (TFDS stores numpy images as PNG)
        decoded = tf.image.decode_image(image, channels=3, expand_animations=False)
        return decoded if crop is None else tf.image.crop_to_bounding_box(decoded, *crop)

    decoded = tf.cond(tf.io.is_jpeg(image), jpeg, other)
    decoded.set_shape([None, None, 3])
    return decoded


def image_shape(image: tf.Tensor) -> tf.Tensor:
    """[height, width, channels] without decoding the pixels of a JPEG."""
    return tf.cond(
        tf.io.is_jpeg(image),
        lambda: tf.io.extract_jpeg_shape(image),
        lambda: tf.shape(tf.image.decode_image(image, channels=3, expand_animations=False)),
    )


def _resize(image: tf.Tensor, size: int) -> tf.Tensor:
    """uint8/float [h, w, 3] -> float32 [size, size, 3]; untouched (only cast) when already that size."""
    shape = tf.shape(image)
    return tf.cond(
        tf.logical_and(shape[0] == size, shape[1] == size),
        lambda: tf.cast(image, tf.float32),
        # Antialiasing matters when shrinking (a 512 px record to 224); it is a no-op when enlarging.
        lambda: tf.image.resize(image, [size, size], method="bilinear", antialias=True),
    )


def centre_crop_window(shape: tf.Tensor) -> tuple[tf.Tensor, ...]:
    """(y, x, h, w) of the largest centred square of an image of `shape`."""
    side = tf.minimum(shape[0], shape[1])
    return ((shape[0] - side) // 2, (shape[1] - side) // 2, side, side)


def decode_eval(image: tf.Tensor, *, size: int, dct_method: str = "INTEGER_ACCURATE") -> tf.Tensor:
    """Encoded image -> float32 [size, size, 3]: centre square, resized only if its size differs.

    A record already at `size` x `size` comes out with exactly the decoded pixel values.
    """
    crop = centre_crop_window(image_shape(image))
    return _resize(decode(image, dct_method, crop), size)


def decode_train(
    image: tf.Tensor,
    seed: tf.Tensor,
    *,
    size: int,
    aug: ml_collections.ConfigDict,
    dct_method: str = "INTEGER_ACCURATE",
) -> tf.Tensor:
    """Encoded image -> augmented float32 [size, size, 3] in [0, 255]; `seed` is an int64 [2] stateless seed."""
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    shape = image_shape(image)
    if aug.random_resized_crop:
        begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
            shape,
            bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seeds[0],
            min_object_covered=0.0,
            aspect_ratio_range=tuple(aug.crop_ratio),
            area_range=tuple(aug.crop_scale),
            max_attempts=10,
            use_image_if_no_bounding_boxes=True,
        )
        crop = (begin[0], begin[1], crop_size[0], crop_size[1])
    else:
        crop = centre_crop_window(shape)
    x = _resize(decode(image, dct_method, crop), size)
    if aug.flip:
        x = tf.image.stateless_random_flip_left_right(x, seeds[1])
    if aug.rotation or aug.zoom:
        x = _rotate_and_zoom(x, seeds[2], rotation=aug.rotation, zoom=aug.zoom, fill_mode=aug.fill_mode)
    if aug.contrast:
        x = tf.image.stateless_random_contrast(x, 1.0 - aug.contrast, 1.0 + aug.contrast, seeds[3])
    return tf.clip_by_value(x, 0.0, 255.0)


def _rotate_and_zoom(x: tf.Tensor, seed: tf.Tensor, *, rotation: float, zoom: float, fill_mode: str) -> tf.Tensor:
    """Keras' RandomRotation(rotation) and RandomZoom(zoom) in one resampling of float32 [S, S, 3].

    angle ~ U(-rotation, rotation) * 2 pi; scale ~ U(1 - zoom, 1 + zoom), > 1 zooming out, as in Keras.
    """
    u = tf.random.stateless_uniform([2], seed, minval=-1.0, maxval=1.0)
    angle, scale = u[0] * rotation * 2.0 * math.pi, 1.0 + u[1] * zoom
    size = tf.cast(tf.shape(x)[0], tf.float32)
    c = (size - 1.0) / 2.0
    # The op maps each output pixel (x, y) to the input point (a0 x + a1 y + a2, b0 x + b1 y + b2):
    # here input = centre + scale * R(angle) (output - centre).
    cos, sin = scale * tf.cos(angle), scale * tf.sin(angle)
    transform = tf.stack([cos, -sin, c - cos * c + sin * c, sin, cos, c - sin * c - cos * c, 0.0, 0.0])
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=x[None],
        transforms=transform[None],
        output_shape=tf.shape(x)[:2],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode=fill_mode.upper(),
    )
    return out[0]
