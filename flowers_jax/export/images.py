"""Real photographs for parity checks, preprocessed the way the web demo does.

Every runtime is compared on the same pixels, so the only rule is that they be real
photos (random noise hides errors that real image statistics expose) and integer-valued
like a browser's pixels. JPEGs are decoded with the accurate integer DCT, as browsers
and PIL do (TF's default DCT is a faster approximation; docs/design.md, §decode).
"""

from __future__ import annotations

import pathlib

import numpy as np

# scikit-image's bundled colour photographs (no download; `skimage.data` ships them).
SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry", "retina", "hubble_deep_field")


def centre_crop_resize(image: np.ndarray, size: int) -> np.ndarray:
    """[H, W, 3] uint8/float RGB -> [size, size, 3] float32, integer-valued in [0, 255].

    The largest centred square, resized with bilinear filtering (antialiased when
    shrinking), then rounded: what the web page does to a camera frame, up to the
    browser's own resampling filter.
    """
    import tensorflow as tf

    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = np.asarray(image[top : top + side, left : left + side], np.float32)
    out = tf.image.resize(square[None], (size, size), method="bilinear", antialias=True)[0]
    return np.clip(np.round(out.numpy()), 0, 255).astype(np.float32)


def decode_jpeg(path: str | pathlib.Path) -> np.ndarray:
    """A JPEG file -> [H, W, 3] uint8 RGB, decoded with the accurate integer DCT."""
    import tensorflow as tf

    data = tf.io.read_file(str(path))
    return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy()


def photos_from_dir(directory: str | pathlib.Path, *, count: int, size: int) -> np.ndarray:
    """The first `count` JPEGs of `directory` (sorted by name) -> [count, size, size, 3] float32."""
    files = sorted(p for p in pathlib.Path(directory).iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
    if len(files) < count:
        raise ValueError(f"{directory}: {len(files)} JPEG files, need {count} for the parity check")
    return np.stack([centre_crop_resize(decode_jpeg(f), size) for f in files[:count]])


def skimage_photos(*, count: int, size: int) -> np.ndarray:
    """`count` real photos from scikit-image's data: whole images, corner crops and mirror images.

    Returns:
      [count, size, size, 3] float32 RGB, integer-valued in [0, 255].
    """
    try:
        from skimage import data
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "parity images default to scikit-image's sample photos: pip install scikit-image, "
            "or pass a folder of JPEGs (--parity-images DIR)"
        ) from e
    photos = [getattr(data, name)() for name in SKIMAGE_PHOTOS]
    photos = [p[..., :3] for p in photos if p.ndim == 3]
    views = []
    for p in photos:
        h, w = p.shape[:2]
        s = min(h, w) * 3 // 4
        crops = (p, p[:s, :s], p[:s, w - s :], p[h - s :, :s], p[h - s :, w - s :], p[::-1])
        views += list(crops) + [c[:, ::-1] for c in crops]
    if len(views) < count:
        raise ValueError(f"scikit-image gives {len(views)} views, fewer than the {count} asked for")
    # Interleave photos so any prefix mixes subjects.
    order = [i * len(views) // count for i in range(count)]
    return np.stack([centre_crop_resize(views[i], size) for i in order])
