"""Phone-sized screenshots of the exported web demo answering chosen photos (for the README).

  python benchmarks/page_screenshots.py --export out/oxford102 --out docs/results \
      photo1.jpg photo2.jpg skimage:chelsea ...

Serves the export folder on 127.0.0.1, opens the page in headless Chromium (412 x 915, as a phone),
chooses each photo in its file input and saves `page_<name>.png`; prints the page's decision, the
verdict text and the top-5 for each. `skimage:NAME` takes one of scikit-image's sample photos.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def photo_file(spec: str, tmp: pathlib.Path) -> pathlib.Path:
    """A JPEG path for a photo spec (a path, or skimage:NAME written to a temporary JPEG)."""
    if not spec.startswith("skimage:"):
        return pathlib.Path(spec).resolve()  # the browser driver runs in export/
    from PIL import Image

    from benchmarks.trust import load_non_flower

    path = tmp / f"{spec.split(':', 1)[1]}.jpg"
    Image.fromarray(load_non_flower("skimage", spec.split(":", 1)[1])).save(path, quality=95)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="an export folder (python export/export_model.py --out)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "results"))
    parser.add_argument("photos", nargs="+")
    args = parser.parse_args()

    from flowers_jax.export import browser

    os.makedirs(args.out, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, browser.serve(args.export) as url:
        for spec in args.photos:
            path = photo_file(spec, pathlib.Path(tmp))
            shot = os.path.join(args.out, f"page_{path.stem}.png")
            snap = browser.run_page("upload", url + "?backend=wasm", file=path, screenshot=shot)
            top5 = ", ".join(f"{t['name']} {t['prob']:.3f}" for t in snap["last"]["top5"])
            print(f"{path.name}: {snap['last']['decision']}: {snap['verdict']!r}; top-5 {top5} -> {shot}")


if __name__ == "__main__":
    main()
