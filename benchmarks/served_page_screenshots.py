"""Phone-sized screenshots of the page as `python -m flowers_jax.serve` serves it (for the README).

  python benchmarks/served_page_screenshots.py --export out/lite0 [--out docs/results] [--cores 4]

Serves a copy of the export over HTTPS on 127.0.0.1 (a fresh local CA in a temporary folder) and
opens it in headless Chromium at 390 x 844:
  page_served_offline.png        trusted (by the certificate's public-key hash, as a phone with the
                                 CA installed), visited once, then the server stopped and the page
                                 reopened on the fake camera playing scikit-image's astronaut photo;
  page_untrusted_certificate.png the certificate clicked through, a photo (coffee) chosen: the page
                                 answers and says why it cannot be installed.
`--cores` is what the page is told navigator.hardwareConcurrency is (threads: min(8, cores // 2)).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

VIEWPORT = "390x844"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="an export folder (python export/export_model.py --out)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(HERE), "docs", "results"))
    parser.add_argument("--cores", type=int, default=4)
    args = parser.parse_args()

    import numpy as np
    from PIL import Image
    from skimage import data

    from flowers_jax.export import browser, images, web

    tmp = pathlib.Path(tempfile.mkdtemp())
    site, out = tmp / "web", pathlib.Path(args.out).resolve()
    shutil.copytree(args.export, site)
    web.install(site)  # today's page, whatever the export was made with
    web.finish(site)
    page = "?backend=wasm&camera=off"
    with browser.serve_https(site, tmp / "certs") as (url, spki):
        first = browser.run_page("page", url + page, spki=spki, profile=tmp / "profile", wait_offline=True)
        print("first visit:", first["offline"], "|", first["platformText"])
        photo = tmp / "coffee.png"
        size = first["size"]
        Image.fromarray(images.centre_crop_resize(data.coffee(), size).astype(np.uint8)).save(photo)
        shot = out / "page_untrusted_certificate.png"
        snap = browser.run_page(
            "upload",
            url + page,
            file=photo,
            ignore_https_errors=True,
            wait_offline=True,
            viewport=VIEWPORT,
            screenshot=shot,
        )
        print(f"{shot.name}: {snap['offline']} | {snap['offlineNote']}")
    video = browser.write_y4m(tmp / "photo.y4m", data.astronaut())
    shot = out / "page_served_offline.png"
    snap = browser.run_page(
        "camera",
        url + "?backend=wasm",
        video=video,
        spki=spki,
        profile=tmp / "profile",
        cores=args.cores,
        viewport=VIEWPORT,
        screenshot=shot,
    )
    print(f"{shot.name} (server stopped): {snap['status']} | {snap['backendText']} | {snap['platformText']}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
