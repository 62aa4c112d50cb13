"""How the page resizes a photo, and which Python resampler gives its pixels (issue #15, item 5).

Headless Chromium draws each photo as export/web/app.js's runModel does (an <img>, the largest
centred square, drawImage to S x S on a willReadFrequently canvas with imageSmoothingQuality
'high', getImageData); every candidate resampler in Python does the same from the same photo, and
the script prints, per candidate and size, the mean and max |difference| over the RGB values and
the share of values off by more than 1. Photos: scikit-image's colour photos and, when present,
the first --count Oxford-102 JPEGs, each as a lossless PNG (the resampler alone) and as the JPEG
the page would be given (decoder and resampler together).

  python benchmarks/page_pixels.py [--photos ../shared/data/oxford102/jpg --count 12] [--sizes 64,224,288,320]
      [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]

# The page's runModel, on one photo URL at each size: the pixels as base64 RGB. Each size loads the
# photo afresh (its own URL), as the page does for each photo chosen: Chromium's decode cache would
# otherwise serve a smaller drawing from a larger one's decode.
DRAW_JS = """
async ([url, sizes]) => {
  const out = {pixels: {}};
  for (const size of sizes) {
    const img = new Image();
    img.src = `${url}?size=${size}`;
    await img.decode();
    out.width = img.naturalWidth;
    out.height = img.naturalHeight;
    const canvas = document.createElement('canvas');
    const ctx = canvas.getContext('2d', { willReadFrequently: true });
    canvas.width = canvas.height = size;
    const side = Math.min(img.naturalWidth, img.naturalHeight);
    ctx.imageSmoothingEnabled = true;
    ctx.imageSmoothingQuality = 'high';
    ctx.drawImage(img, (img.naturalWidth - side) / 2, (img.naturalHeight - side) / 2, side, side, 0, 0, size, size);
    const rgba = ctx.getImageData(0, 0, size, size).data;
    let s = '';
    for (let i = 0; i < rgba.length; i += 4) s += String.fromCharCode(rgba[i], rgba[i + 1], rgba[i + 2]);
    out.pixels[size] = btoa(s);
  }
  return out;
}
"""

STUB = "<!doctype html><meta charset=utf-8><script>window.demo = {state: {status: 'ready'}};</script>"


def chromium_pixels(folder: pathlib.Path, names: list[str], sizes: list[int]) -> dict[str, dict]:
    """{name: {"width", "height", "pixels": {size: [S, S, 3] uint8}}} as Chromium's canvas draws
    `folder`/name, one browser launch for all."""
    import base64

    from flowers_jax.export import browser

    (folder / "index.html").write_text(STUB)
    steps = [{"eval": f"({DRAW_JS})({json.dumps([n, sizes])})", "label": n} for n in names]
    with browser.serve(folder) as url:
        results = browser.run_steps(url, steps, folder, timeout_s=600)
    out = {}
    for n in names:
        r = results[n]
        pixels = {
            int(s): np.frombuffer(base64.b64decode(b), np.uint8).reshape(int(s), int(s), 3)
            for s, b in r["pixels"].items()
        }
        out[n] = {"width": r["width"], "height": r["height"], "pixels": pixels}
    return out


def candidates() -> dict:
    """name -> fn(photo file, size) -> [size, size, 3] float32."""
    from PIL import Image

    from flowers_jax.export import images

    def pil(resample):
        def fn(path: pathlib.Path, size: int) -> np.ndarray:
            image = images.read_upright(path)
            h, w = image.shape[:2]
            side = min(h, w)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            return np.asarray(Image.fromarray(image).resize((size, size), resample, box=box), np.float32)

        return fn

    out = {
        "TF bilinear, antialiased (centre_crop_resize)": lambda p, s: images.centre_crop_resize(
            images.read_upright(p), s
        )
    }
    for name in ("BILINEAR", "BICUBIC", "LANCZOS", "BOX", "HAMMING"):
        out[f"PIL {name.lower()}"] = pil(getattr(Image.Resampling, name))
    out["Chromium's steps (images.page_input)"] = images.page_input
    return out


def photos(oxford: str, count: int, squares: int) -> dict[str, tuple[np.ndarray, int]]:
    """name -> ([H, W, 3] uint8 as stored, EXIF orientation): scikit-image's colour photos and crops of
    the large ones, some stored sideways with an EXIF orientation, and Oxford JPEGs (the first `count`
    and the first `squares` square ones) when present."""
    from skimage import data

    retina = data.retina()
    out = {
        "astronaut": (data.astronaut(), 1),
        "coffee": (data.coffee(), 1),
        "chelsea": (data.chelsea(), 1),
        "rocket": (data.rocket(), 1),
        "retina_800x600": (retina[300:1100, 400:1000], 1),
        "retina_800x601": (retina[300:1100, 400:1001], 1),
        "hubble_800x600": (data.hubble_deep_field()[:800, 200:800], 1),
        "retina_sideways_6": (np.rot90(retina[300:1100, 400:1000]), 6),
        "coffee_sideways_8": (np.rot90(data.coffee(), -1), 8),
        "rocket_upside_down_3": (data.rocket()[::-1, ::-1], 3),
    }
    if oxford and os.path.isdir(oxford):
        from flowers_jax.export import images

        files = sorted(os.listdir(oxford))
        square = []
        for f in files:
            if len(square) >= squares:
                break
            from PIL import Image

            with Image.open(os.path.join(oxford, f)) as im:
                if im.width == im.height:
                    square.append(f)
        for f in files[:count] + square:
            out[f"oxford_{os.path.splitext(f)[0]}"] = (images.decode_jpeg(os.path.join(oxford, f)), 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", default=str(ROOT.parent / "shared" / "data" / "oxford102" / "jpg"))
    parser.add_argument("--count", type=int, default=12, help="Oxford photos (when --photos exists)")
    parser.add_argument("--squares", type=int, default=3, help="and this many square Oxford photos")
    parser.add_argument("--sizes", default="64,224,256,288,320")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the scikit-image photos")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--save", help="write the photos and Chromium's pixels to this .npz (for study)")
    args = parser.parse_args()
    from PIL import Image

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        names = []
        for name, (rgb, orientation) in photos(args.photos, args.count, args.squares).items():
            if orientation == 1:  # lossless: the resampler alone
                Image.fromarray(rgb).save(folder / f"{name}.png")
                names.append(f"{name}.png")
            jpeg = folder / f"{name}.jpg"
            if name.startswith("oxford_"):  # the original file, byte for byte
                jpeg.write_bytes(pathlib.Path(args.photos, name[len("oxford_") :] + ".jpg").read_bytes())
            else:
                exif = Image.Exif()
                if orientation != 1:
                    exif[0x0112] = orientation
                Image.fromarray(rgb).save(jpeg, quality=args.quality, exif=exif.tobytes())
            names.append(jpeg.name)
        page = chromium_pixels(folder, names, sizes)
        if args.save:
            np.savez_compressed(args.save, **{f"page/{n}/{s}": page[n]["pixels"][s] for n in names for s in sizes})
        kinds = {
            "PNG": lambda n: n.endswith(".png"),
            "JPEG": lambda n: n.endswith(".jpg") and "_sideways_" not in n and "_upside_down_" not in n,
            "JPEG, EXIF-rotated": lambda n: "_sideways_" in n or "_upside_down_" in n,
        }
        for cand, fn in candidates().items():
            for kind, member in kinds.items():
                for size in sizes:
                    diffs = [
                        np.abs(fn(folder / n, size) - page[n]["pixels"][size].astype(np.float32)).ravel()
                        for n in names
                        if member(n)
                    ]
                    d = np.concatenate(diffs)
                    rows.append(
                        {
                            "resampler": cand,
                            "input": kind,
                            "size": size,
                            "photos": len(diffs),
                            "mean": float(d.mean()),
                            "max": float(d.max()),
                            "over_1": float(np.mean(d > 1)),
                            "exact": float(np.mean(d == 0)),
                        }
                    )
    print(f"{'resampler':<48}{'input':>20}{'size':>6}{'photos':>8}{'mean':>8}{'max':>6}{'>1':>9}{'exact':>9}")
    for r in rows:
        print(
            f"{r['resampler']:<48}{r['input']:>20}{r['size']:>6}{r['photos']:>8}{r['mean']:>8.3f}{r['max']:>6.0f}"
            f"{r['over_1']:>9.2%}{r['exact']:>9.2%}"
        )
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
