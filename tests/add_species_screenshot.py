"""A phone-sized screenshot (390 x 844) of the page with an added species in the top 5 (for the README).

  python tests/add_species_screenshot.py [--out docs/results] [--export DIR]

It lives beside the test fixtures it is made from (Python puts this folder on sys.path).

Makes the test suite's small export (tests/small_export.py: MobileNetV2 0.35 at 64 px, sensitised
random weights; a few minutes; or --export: a folder small_export.make wrote earlier), calibrates a
copy for adding species as tests/add_species_site.py does (the trained classes' statistics from
scikit-image / scikit-learn sample photos, none of them Oxford's), serves it, adds "my coffee" from
five photos of scikit-image's coffee cup in the page, then chooses a held-back photo of the cup and
takes the screenshot: page_add_species.png.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

NAME = "my coffee"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "results"))
    parser.add_argument("--export", help="a folder small_export.make wrote (else one is made)")
    args = parser.parse_args()

    import add_species_site
    import small_export
    from PIL import Image

    from benchmarks.sensitised import sensitised_variables
    from flowers_jax.export import browser, images

    tmp = pathlib.Path(tempfile.mkdtemp())
    if args.export:  # its variables again: small_export.make's, from a fixed seed
        export = pathlib.Path(args.export)
        photos = images.skimage_photos(count=32, size=small_export.SIZE)
        variables = sensitised_variables(small_export.MODEL, num_classes=len(small_export.CLASSES), images=photos[::2])
    else:
        export, variables = small_export.make(tmp / "export")
    site = add_species_site.make(export, tmp / "site", variables)
    photos = []
    for i, shot in enumerate(site.shots):
        photos.append(str(tmp / f"shot{i}.png"))
        Image.fromarray(shot).save(photos[-1])
    held = tmp / "held_back.png"
    Image.fromarray(site.held_back).save(held)  # exact pixels: the answer is the one the test checks
    shot = pathlib.Path(args.out).resolve() / "page_add_species.png"
    steps = [
        {"click": "#add-species"},
        {"fill": "#add-name", "value": NAME},
        {"files": "#add-files", "paths": photos},
        {"wait": f"window.demo.state.adding.shots.length === {len(photos)}"},
        {"click": "#add-done"},
        {"wait": f"window.demo.snapshot().addedList.includes('{NAME}')"},
        {"files": "#file", "paths": [str(held)]},
        {"wait": "window.demo.state.last && window.demo.state.last.source === 'photo'"},
        {"screenshot": str(shot)},
        {"snapshot": True, "label": "page"},
    ]
    with browser.serve(site.root) as url:
        r = browser.run_steps(url + "calibrated/?backend=wasm&camera=off", steps, tmp, viewport="390x844")
    page = r["page"]
    print(f"{shot}: {page['verdict']} | top 5: {page['shownTop5']} | {page['addMessage']}")
    assert page["shownTop5"][0] == f"{NAME} (yours)", page["shownTop5"]
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
