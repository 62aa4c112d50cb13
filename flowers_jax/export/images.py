"""Real photographs for parity checks, preprocessed the way the web demo does.

Every runtime is compared on the same pixels, so the only rule is that they be real
photos (random noise hides errors that real image statistics expose) and integer-valued
like a browser's pixels. JPEGs are decoded with the accurate integer DCT, as browsers
and PIL do (TF's default DCT is a faster approximation; docs/design.md, §decode).

`page_input` gives, for a photo file, the very pixels the web page feeds its model (Chromium's
decode, EXIF orientation and canvas resize repeated; docs/design.md, §pagepixels): the page-fed
eval (flowers_jax/page_eval.py) reads photos through it.
"""

from __future__ import annotations

import math
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


def page_resize(image: np.ndarray, size: int, *, rotated: bool = False) -> np.ndarray:
    """[H, W, 3] uint8 RGB -> [size, size, 3] float32: the pixels the web page feeds its model.

    The page (export/web/app.js, runModel) draws the largest centred square, from
    ((W - side) / 2, (H - side) / 2) (a half pixel in when W - H is odd), onto a size x size
    software canvas with imageSmoothingQuality 'high'. This repeats what Chromium does with it
    (docs/design.md, §pagepixels):
    - when halving the square (rounded up) still leaves at least `size`, the decode cache first scales the
      square (its source rectangle rounded out to whole pixels) down to the mip level at or above
      the size (`cc::MipMapUtil`: each halving rounded up) with Skia's scalePixels: the Skia mipmap
      level nearest the scale (the geometric mean of the two axes' scales, less a half) built by
      SkMipmapHQDownSampler, then a bilinear sample of it, rounded;
    - then Skia draws that (or the photo itself) bilinearly with 4-bit weights (SkBitmapProcState:
      16.16 coordinates, clamped at the edges, the weighted sum truncated).
    Pixels beyond the square but inside the photo take part in the filter, as the canvas spec asks.
    `rotated`: the picture is drawn turned a quarter (an EXIF orientation 5 to 8, `page_input`), which
    Skia samples bilinearly in floating point, rounded, instead.
    How close it comes to Chromium's own pixels: benchmarks/page_pixels.py (README).
    """
    image = np.asarray(image, np.uint8)
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) / 2, (w - side) / 2
    y0, x0, y1, x1 = math.floor(top), math.floor(left), math.ceil(top + side), math.ceil(left + side)
    sub_h, sub_w = y1 - y0, x1 - x0
    level = _mip_level_for((sub_h, sub_w), (_round(sub_h * size / side), _round(sub_w * size / side)))
    draw = _draw_float if rotated else _draw
    if level == 0:
        return draw(image, (top, left), (side, side), size)
    th, tw = -(-sub_h // 2**level), -(-sub_w // 2**level)
    scaled = _scale_pixels(image[y0:y1, x0:x1], (th, tw))
    # The decode cache's scale adjustment, float32 as in cc: the square in the scaled picture's pixels.
    ay, ax = np.float32(th) / np.float32(sub_h), np.float32(tw) / np.float32(sub_w)
    return draw(scaled, (np.float32(top - y0) * ay, np.float32(left - x0) * ax), (side * ay, side * ax), size)


def _round(x: float) -> int:
    """SkScalarRoundToInt: halves round up."""
    return math.floor(x + 0.5)


def _mip_level_for(src: tuple[int, int], target: tuple[int, int]) -> int:
    """cc::MipMapUtil::GetLevelForSize: the last halving (rounded up) still at least `target` on both axes."""
    level = 0
    while True:
        nxt = [max(1, -(-n // 2 ** (level + 1))) for n in src]
        if nxt[0] < target[0] or nxt[1] < target[1] or max(-(-n // 2**level) for n in src) == 1:
            return level
        level += 1


def _scale_pixels(src: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """SkPixmap::scalePixels(medium quality) of uint8 [h, w, 3] to `target` (th, tw): the mipmap level
    nearest the scale (Chromium's geometric mean of the axes' scales, less SkMipmap's half-level bias),
    then a bilinear sample of it at the target's pixel centres, rounded."""
    h, w = src.shape[:2]
    scale = math.sqrt(target[0] / h * target[1] / w)
    level = max(-math.log2(scale) - 0.5, 0.0) if scale < 1 else 0.0
    for _ in range(int(math.floor(level + 0.5))):
        src = _mip_down(src)
    if src.shape[:2] == tuple(target):
        return src
    return _bilinear_rounded(src, (0.0, 0.0), src.shape[:2], target).astype(np.uint8)


def _mip_down(level: np.ndarray) -> np.ndarray:
    """The next mipmap level of uint8 [h, w, 3] as Skia's SkMipmapHQDownSampler builds it: each side
    halved (floored, at least 1 pixel) by a 2-tap box on an even side and an overlapping 1-2-1
    triangle on an odd one, the weighted sum truncated (not rounded)."""
    acc, total = level.astype(np.uint32), 1
    for axis in (0, 1):
        n = acc.shape[axis]
        if n == 1:
            continue
        first = np.arange(n // 2) * 2
        if n % 2 == 0:
            acc, total = np.take(acc, first, axis) + np.take(acc, first + 1, axis), total * 2
        else:
            taps = np.take(acc, first, axis) + 2 * np.take(acc, first + 1, axis) + np.take(acc, first + 2, axis)
            acc, total = taps, total * 4
    return (acc // total).astype(np.uint8)


def _draw(src: np.ndarray, origin: tuple[float, float], extent: tuple[float, float], size: int) -> np.ndarray:
    """[size, size, 3] float32: Skia's bilinear draw (SkBitmapProcState, S32_alpha_D32_filter_DX) of
    the rectangle at `origin` (y, x) of `extent` (h, w) in uint8 [h, w, 3] `src` onto size x size.
    The inverse matrix in float32 (scale 1 / (size / extent)); a pixel centre mapped through it to
    32.32 fixed point, half a pixel back (each row mapped anew, x stepped along the row by the
    scale), the two taps clamped to the edges, the top 4 fraction bits the weights, the sum truncated."""
    f32 = np.float32

    def taps(n: int, start: float, length: float, *, stepped: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scale, shift = f32(1) / (f32(size) / f32(length)), f32(start)
        if stepped:  # the row's first centre mapped, then + scale per pixel (SkFractionalInt)
            first = np.int64(np.floor(np.float64(f32(f32(0.5) * scale + shift)) * 2**32))
            fixed = (first + np.arange(size, dtype=np.int64) * np.int64(np.floor(np.float64(scale) * 2**32))) >> 16
        else:
            centres = ((np.arange(size, dtype=f32) + f32(0.5)) * scale + shift).astype(f32)
            fixed = np.floor(centres.astype(np.float64) * 2**32).astype(np.int64) >> 16
        fixed -= 1 << 15  # half a pixel back, for the bilinear taps
        lo, hi = np.clip(fixed >> 16, 0, n - 1), np.clip((fixed + 65536) >> 16, 0, n - 1)
        return lo, hi, (fixed >> 12) & 15

    y0, y1, wy = taps(src.shape[0], origin[0], extent[0], stepped=False)
    x0, x1, wx = taps(src.shape[1], origin[1], extent[1], stepped=True)
    a = src.astype(np.int64)
    rows = a[y0] * (16 - wy)[:, None, None] + a[y1] * wy[:, None, None]
    out = rows[:, x0] * (16 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]
    return (out >> 8).astype(np.float32)


def _draw_float(src: np.ndarray, origin: tuple[float, float], extent: tuple[float, float], size: int) -> np.ndarray:
    """As `_draw`, with float weights and the result rounded (Skia's raster pipeline, which draws
    the pictures an EXIF orientation turns a quarter)."""
    return _bilinear_rounded(src, origin, extent, (size, size)).astype(np.float32)


def _bilinear_rounded(
    src: np.ndarray, origin: tuple[float, float], extent: tuple[float, float], target: tuple[int, int]
) -> np.ndarray:
    """[th, tw, 3] float64 whole numbers: the rectangle at `origin` (y, x) of `extent` (h, w) in [h, w, 3]
    `src`, sampled bilinearly in floating point at the centres of a `target` (th, tw) grid, taps
    clamped to the edges, rounded half up (the float sampler of both `_scale_pixels` and `_draw_float`)."""

    def taps(n: int, start: float, length: float, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        u = start + (np.arange(size) + 0.5) * length / size - 0.5
        i0 = np.floor(u)
        return np.clip(i0, 0, n - 1).astype(int), np.clip(i0 + 1, 0, n - 1).astype(int), u - i0

    (y0, y1, fy) = taps(src.shape[0], origin[0], extent[0], target[0])
    (x0, x1, fx) = taps(src.shape[1], origin[1], extent[1], target[1])
    a = src.astype(np.float64)
    rows = a[y0] * (1 - fy)[:, None, None] + a[y1] * fy[:, None, None]
    out = rows[:, x0] * (1 - fx)[None, :, None] + rows[:, x1] * fx[None, :, None]
    return np.floor(out + 0.5)


def page_input(path: str | pathlib.Path, size: int) -> np.ndarray:
    """A photo file -> [size, size, 3] float32: what the page feeds its model for it (`read_upright`,
    then `page_resize`), with Chromium's one shortcut: a square JPEG whose sides are whole MCUs (16
    pixels for 4:2:0 chroma, 8 for 4:4:4) and that needs a mip level is decoded straight at that
    level's size (libjpeg's DCT scaling, which TF's decoder reproduces with `ratio`) and drawn from
    there. (Measured: 496, 512 and 528 px 4:2:0 squares decode scaled, 500, 504, 508 and 520 do not.)
    A photo with an EXIF orientation is drawn as Chromium draws it: from the stored picture (its
    centred square is the upright one's), then turned; a quarter turn (orientations 5 to 8) goes
    through Skia's floating-point sampler, a flip (2 to 4) through the 4-bit one (measured on
    orientations 3, 6 and 8; the square JPEG shortcut is not applied to them, unmeasured)."""
    import tensorflow as tf

    from flowers_jax.data.convert import _apply_orientation

    data = tf.io.read_file(str(path))
    stored, orientation, mcu = _decode(data)
    if orientation != 1:  # drawn from the stored picture, turned as it is drawn (see the docstring)
        out = page_resize(stored, size, rotated=orientation >= 5)
        return _apply_orientation(tf.constant(out), tf.constant(orientation)).numpy()
    image = stored
    h, w = image.shape[:2]
    level = _mip_level_for((h, w), (size, size)) if h == w else 0
    if not (0 < level <= 3 and mcu and h % mcu[0] == 0 and w % mcu[1] == 0):
        return page_resize(image, size)
    scaled = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE", ratio=2**level).numpy()
    return _draw(scaled, (0.0, 0.0), scaled.shape[:2], size)


def read_upright(path: str | pathlib.Path) -> np.ndarray:
    """A photo file -> [H, W, 3] uint8 RGB as a browser shows it: a JPEG decoded with the accurate
    integer DCT (other formats by TF's decoders), turned upright by its EXIF orientation, as an
    <img> (CSS image-orientation: from-image, the default) and a canvas drawing of it are."""
    import tensorflow as tf

    from flowers_jax.data.convert import _apply_orientation  # PIL's ImageOps.exif_transpose, in TF

    stored, orientation, _ = _decode(tf.io.read_file(str(path)))
    return _apply_orientation(tf.constant(stored), tf.constant(orientation)).numpy()


def _decode(data) -> tuple[np.ndarray, int, tuple[int, int] | None]:
    """(the stored [H, W, 3] uint8 picture, its EXIF orientation, a JPEG's MCU (h, w) in pixels or
    None) of encoded bytes (a tf string)."""
    import io

    import tensorflow as tf
    from PIL import Image

    jpeg = bool(tf.io.is_jpeg(data))
    if jpeg:
        image = tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")
    else:
        image = tf.io.decode_image(data, channels=3, expand_animations=False)
    orientation, mcu = 1, None
    try:
        with Image.open(io.BytesIO(data.numpy())) as im:  # reads the header only
            orientation = int(im.getexif().get(0x0112, 1) or 1)
            if jpeg and getattr(im, "layer", None):
                mcu = (8 * max(v for _, _, v, _ in im.layer), 8 * max(h for _, h, _, _ in im.layer))
    except Exception:  # TF decoded it, so it is a picture; no readable header is orientation 1
        pass
    return image.numpy(), orientation, mcu


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
