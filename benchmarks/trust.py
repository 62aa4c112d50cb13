"""Calibration, "not sure" and "not one of my flowers", measured on a trained Oxford-102 workdir.

  python benchmarks/trust.py --workdir W [--model lite0|lite1|lite2] --data-dir /tmp/oxford102_tfrec \
      [--open-workdir W2 --open-data-dir /tmp/oxford102_open] [--figures docs/results]

W is a run of --model's recipe (104 classes; lite0: configs/oxford102.py, the others as
benchmarks/oxford102.py --model names them), W2 one of configs/oxford102_open.py (Lite0, 20 classes
left out entirely). Every choice is made on val; test is read once, after:
  1. the test-time size val chose (W/test_size.json, from --mode choose_size or benchmarks/oxford102.py),
     else W/calibration.json's, else val chooses it here among S, S+32, S+64 by the same rule;
  2. with W2: its val photos of known classes against its val photos of the held-out classes
     (`val_unknown`) choose the open-set score (highest AUROC); then its test photos of both groups
     give AUROC and FPR at 95% TPR for every score (the max-softmax baseline beside the chosen one);
  3. `--mode calibrate` on W's val at that size, with that score: T, the "not sure" threshold for
     2% risk, the open-set threshold that keeps 96% of val flowers;
  4. W's test split (2,040 photos) evaluated with it: ECE/NLL/Brier before and after, coverage and
     risk at the threshold, AURC, the share of flowers flagged "not one of mine";
  5. non-flower photos that Python packages ship (scikit-image, scikit-learn, matplotlib; nothing
     fetched), centre-cropped and resized as the page does: the share flagged.
Prints a table of each, writes W/trust_results.json and copies the figures to --figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import numpy as np

from benchmarks.oxford102 import MODELS, output_name, recipe_config

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# Real photographs that are not flowers, shipped inside packages the tests install (no download).
# Synthetic images (chessboard, phantom, logos, a horse silhouette) are left out; so is
# scikit-learn's flower.jpg, which is a flower.
NON_FLOWER_PHOTOS = (
    [
        ("skimage", n)
        for n in (
            "astronaut",
            "brick",
            "camera",
            "cell",
            "chelsea",
            "clock",
            "coffee",
            "coins",
            "grass",
            "gravel",
            "hubble_deep_field",
            "immunohistochemistry",
            "microaneurysms",
            "moon",
            "stereo_motorcycle",
            "page",
            "retina",
            "rocket",
            "text",
        )
    ]
    + [("sklearn", "china.jpg")]
    + [("matplotlib", "grace_hopper.jpg"), ("matplotlib", "Minduka_Present_Blue_Pack.png")]
)


def load_non_flower(package: str, name: str) -> np.ndarray:
    """[H, W, 3] uint8 RGB of one packaged photo (grayscale repeated to 3 channels)."""
    from PIL import Image

    if package == "skimage":
        from skimage import data

        image = getattr(data, name)()
        if name == "stereo_motorcycle":  # (left, right, disparity): one photo of the pair
            image = image[0]
    elif package == "sklearn":
        import sklearn.datasets

        image = np.asarray(Image.open(os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", name)))
    else:
        import matplotlib

        image = np.asarray(Image.open(os.path.join(matplotlib.get_data_path(), "sample_data", name)))
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (255 * (image.astype(np.float64) / max(float(image.max()), 1e-12))).astype(np.uint8)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return image[..., :3]


def model_outputs(config, variables, photos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, C], embeddings [N, D]) of photos [N, S, S, 3] in [0, 255]."""
    import functools

    import jax

    from flowers_jax.state import build_model

    apply = jax.jit(functools.partial(build_model(config).apply, with_embedding=True))
    outs = [apply(variables, photos[i : i + 16]) for i in range(0, len(photos), 16)]
    return np.concatenate([np.asarray(o[0]) for o in outs]), np.concatenate([np.asarray(o[1]) for o in outs])


def openset_scores(config, workdir: str, split_known: str, split_unknown: str, temperature: float) -> dict:
    """Every open-set score's AUROC / FPR@95 of known-vs-unknown photos of the leave-out model."""
    from flowers_jax import abstain, evaluation

    variables, _ = evaluation._load(config, workdir, "best")
    known = evaluation.predict_split(config, variables, split_known)
    unknown = evaluation.predict_split(config, variables, split_unknown)
    train = evaluation.predict_split(config, variables, config.data.train_split)
    stats = abstain.fit_embedding_stats(train.embeddings, train.labels, config.num_classes)
    out = {}
    for name in abstain.OPENSET_SCORES:
        k = abstain.openset_score(name, known.logits[0], known.embeddings, stats, temperature=temperature)
        u = abstain.openset_score(name, unknown.logits[0], unknown.embeddings, stats, temperature=temperature)
        out[name] = abstain.openset_report(k, u)
    return out


def open_config(open_data_dir: str, size: int):
    """(config, records folder) of the leave-out run (configs/oxford102_open.py) at `size`, uncalibrated."""
    from configs import oxford102_open
    from flowers_jax.chosen_size import at_size
    from flowers_jax.data import tfrecords

    config = oxford102_open.get_config()
    config.data.data_dir = open_data_dir
    config = at_size(config, size)
    config.eval.calibration = "off"
    return config, tfrecords.layout_dir(open_data_dir, config.data.tfrecord_size)


def leave_out(open_workdir: str, open_data_dir: str, size: int) -> dict:
    """Step 2: the open-set score chosen on val_unknown, then measured on test_unknown."""
    from flowers_jax import calibration, evaluation

    config, layout = open_config(open_data_dir, size)
    # T of the leave-out model (its own val), so that msp and energy are the calibrated ones.
    variables, _ = evaluation._load(config, open_workdir, "best")
    val = evaluation.predict_split(config, variables, "val")
    t = calibration.fit_temperature(val.logits[0], val.labels)
    val_scores = openset_scores(config, open_workdir, "val", os.path.join(layout, "val_unknown", "*.tfrec"), t)
    chosen = max(val_scores, key=lambda n: val_scores[n]["auroc"])
    test_scores = openset_scores(config, open_workdir, "test", os.path.join(layout, "test_unknown", "*.tfrec"), t)
    return {"temperature": t, "image_size": size, "val": val_scores, "test": test_scores, "chosen": chosen}


def non_flowers(config, workdir: str, size: int) -> dict:
    """Step 5: decisions of W's calibrated model on the packaged non-flower photos."""
    from flowers_jax import evaluation, trust
    from flowers_jax.export import images

    variables, info = evaluation._load(config, workdir, "best")
    cal = trust.load_matching(workdir, step=info["step"], image_size=size)
    photos = np.stack([images.centre_crop_resize(load_non_flower(p, n), size) for p, n in NON_FLOWER_PHOTOS])
    logits, embeddings = model_outputs(config, variables, photos)
    decisions = cal.decide(logits, embeddings)
    names = [n for _, n in NON_FLOWER_PHOTOS]
    return {
        "photos": len(names),
        "flagged": float(np.mean(decisions == "unknown")),
        "per_photo": {n: str(d) for n, d in zip(names, decisions, strict=True)},
    }


def diagnose(config, variables: dict, sizes: list[int]) -> dict:
    """Why is the model under-confident? Mean top probability against accuracy on the training photos
    (un-augmented, at the training size) and on val at each size, with the T that val would fit."""
    from flowers_jax import calibration, evaluation
    from flowers_jax.chosen_size import at_size

    out = {}
    for split, size in [("train", config.data.image_size)] + [("val", s) for s in sizes]:
        c = at_size(config, size)
        c.eval.calibration = "off"
        o = evaluation.predict_split(c, variables, split)
        probs = o.probs()
        out[f"{split}@{size}"] = {
            "accuracy": float(np.mean(probs.argmax(-1) == o.labels)),
            "mean_confidence": float(probs.max(-1).mean()),
            "fitted_temperature": calibration.fit_temperature(o.logits[0], o.labels),
            "ece": calibration.ece(o.labels, probs)[0],
        }
    return out


def markdown(r: dict) -> str:
    """The README's tables from one run's results."""
    t, cal = r["test"], r["calibration"]
    u, c = t["uncalibrated"], t["calibrated"]
    size = r["image_size"]
    lines = [
        f"Calibration, at {size} px (val chose it: val accuracy "
        + ", ".join(f"{k}: {v:.4f}" for k, v in (r["val_accuracy_by_size"] or {}).items())
        + f"), T = {cal['temperature']:.4f} fitted on val ({cal['val']['examples']} photos):",
        "",
        "| split | T | accuracy | ECE | adaptive ECE | NLL | Brier | mean top probability |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, m, temp, acc in (
        ("val, before", cal["val"]["before"], 1.0, None),
        ("val, after", cal["val"]["after"], cal["temperature"], None),
        (f"test ({t['examples']}), before", u, 1.0, t["accuracy"]),
        (f"test ({t['examples']}), after", c, cal["temperature"], t["accuracy"]),
    ):
        a = f"{acc:.4f}" if acc is not None else "–"
        lines.append(
            f"| {name} | {temp:.4f} | {a} | {m['ece']:.4f} | {m['adaptive_ece']:.4f} | {m['nll']:.4f} | "
            f"{m['brier']:.4f} | {m['mean_confidence']:.4f} |"
        )
    sel, vsel = t["selective"], cal["selective"]
    lines += [
        "",
        '| "not sure" score (val AURC) | threshold (val, 2% risk) | val coverage / risk | '
        "test coverage / risk | test AURC |",
        "|---|---|---|---|---|",
        f"| {sel['score']} (" + ", ".join(f"{k} {v['aurc']:.4f}" for k, v in vsel["candidates"].items()) + ") | "
        f"{sel['threshold']:.4f} | {vsel['val']['coverage']:.4f} / {vsel['val']['risk']:.4f} | "
        f"{sel['coverage']:.4f} / {sel['risk']:.4f} | {sel['aurc']:.4f} |",
    ]
    if "leave_out" in r:
        lo = r["leave_out"]
        lines += [
            "",
            f"Open set, leave-20-classes-out model at {lo['image_size']} px "
            f"(T = {lo['temperature']:.4f} from its val):",
            "",
            "| score | val AUROC (chooses) | test AUROC | test FPR at 95% TPR |",
            "|---|---|---|---|",
        ]
        for name in lo["val"]:
            mark = " **(chosen)**" if name == lo["chosen"] else (" (baseline)" if name == "msp" else "")
            lines.append(
                f"| {name}{mark} | {lo['val'][name]['auroc']:.4f} | {lo['test'][name]['auroc']:.4f} | "
                f"{lo['test'][name]['fpr_at_95_tpr']:.4f} |"
            )
    nf = r["non_flowers"]
    lines += [
        "",
        f'"Not one of my flowers" with {cal["openset"]["score"]} < {cal["openset"]["threshold"]:.4f} (keeps '
        f"{cal['openset']['known_recall']:.0%} of val flowers): test flowers flagged "
        f"{t['openset']['flagged_not_a_known_flower']:.4f}; packaged non-flower photos flagged "
        f"{nf['flagged']:.4f} ({round(nf['flagged'] * nf['photos'])} of {nf['photos']}; not flagged: "
        + (", ".join(n for n, d in nf["per_photo"].items() if d != "unknown") or "none")
        + ").",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a run of --model's recipe (lite0: configs/oxford102.py)")
    parser.add_argument("--model", choices=sorted(MODELS), default="lite0", help="whose recipe W ran (as oxford102.py)")
    parser.add_argument("--data-dir", default="/tmp/oxford102_tfrec")
    parser.add_argument("--open-workdir", default="", help="a configs/oxford102_open.py run")
    parser.add_argument("--open-data-dir", default="/tmp/oxford102_open")
    parser.add_argument("--openset-score", default="", help="skip the choice on the leave-out val: use this score")
    parser.add_argument("--figures", default=os.path.join(ROOT, "docs", "results"), help="'' to skip copying")
    args = parser.parse_args()

    from flowers_jax import chosen_size, evaluation, trust
    from flowers_jax.chosen_size import at_size

    config = recipe_config(args.model)
    config.data.data_dir = args.data_dir
    sizes = chosen_size.candidates(config.data.image_size)
    variables, info = evaluation._load(config, args.workdir, "best")
    results: dict = {"diagnosis": diagnose(config, variables, sizes)}
    print("\nunder-confidence: accuracy, mean top probability, ECE and the T each split would fit")
    for key, d in results["diagnosis"].items():
        print(
            f"  {key:<10} accuracy {d['accuracy']:.4f}  mean confidence {d['mean_confidence']:.4f}  "
            f"ECE {d['ece']:.4f}  T {d['fitted_temperature']:.4f}"
        )
    # The test-time size: the one val chose and W/test_size.json records (--mode choose_size, as
    # benchmarks/oxford102.py), else the calibration's, else the one val prefers here by the same rule.
    val = {s: results["diagnosis"][f"val@{s}"]["accuracy"] for s in sizes}
    if chosen_size.load(args.workdir) or trust.load(args.workdir):  # refused when of another checkpoint step
        size, why = chosen_size.resolve(args.workdir, step=info["step"], trained_size=config.data.image_size)
    else:
        size, why = max(sizes, key=lambda s: (val[s], -s)), "val's choice here, by --mode choose_size's rule"
    results |= {"image_size": size, "val_accuracy_by_size": val}
    print(f"test-time size {size} ({why}; val accuracy by size: {val})")
    if args.open_workdir:
        results["leave_out"] = lo = leave_out(args.open_workdir, args.open_data_dir, size)
        print(f"\nleave-20-classes-out, at {size}px: AUROC known vs unknown (val chooses, test reports)")
        print(f"{'score':<12}{'val AUROC':>10}{'test AUROC':>11}{'test FPR@95':>12}")
        for name in lo["val"]:
            mark = "  <- chosen on val" if name == lo["chosen"] else ""
            print(
                f"{name:<12}{lo['val'][name]['auroc']:>10.4f}{lo['test'][name]['auroc']:>11.4f}"
                f"{lo['test'][name]['fpr_at_95_tpr']:>12.4f}{mark}"
            )
    config = at_size(config, size)
    chosen = results.get("leave_out", {}).get("chosen", config.trust.openset_score)
    config.trust.openset_score = args.openset_score or chosen
    cal = evaluation.run_calibrate(config, args.workdir, "best", "val")
    test = evaluation.run_eval(config, args.workdir, "best", "test")
    results["calibration"] = cal.to_json()
    results["test"] = test
    results["non_flowers"] = nf = non_flowers(config, args.workdir, size)
    u, c = test["uncalibrated"], test["calibrated"]
    print(f"\ntest ({test['examples']} photos, {size}px): accuracy {test['accuracy']:.4f}, T = {cal.temperature:.4f}")
    for key in ("ece", "adaptive_ece", "nll", "brier", "mean_confidence"):
        print(f"  {key:<16}{u[key]:>8.4f} -> {c[key]:.4f}")
    sel = test["selective"]
    print(
        f"not sure ({sel['score']} < {sel['threshold']:.4f}, chosen on val for {sel['target_risk']:.0%} risk): "
        f"coverage {sel['coverage']:.4f}, risk {sel['risk']:.4f}, AURC {sel['aurc']:.4f}"
    )
    print(
        f"not one of my flowers ({config.trust.openset_score}): test flowers flagged "
        f"{test['openset']['flagged_not_a_known_flower']:.4f}; non-flower photos flagged {nf['flagged']:.4f} "
        f"of {nf['photos']}: {nf['per_photo']}"
    )
    with open(os.path.join(args.workdir, "trust_results.json"), "w") as f:
        json.dump(results, f, indent=2, default=float)
    print("\n" + markdown(results))
    if args.figures:
        os.makedirs(args.figures, exist_ok=True)
        test_dir = evaluation.split_dir_name("test", config, info["trained_image_size"])  # as eval named it
        test_dir = os.path.join(args.workdir, "eval", "best", test_dir)
        for src, dst in (
            ("reliability.png", f"{output_name(args.model)}_reliability.png"),
            ("risk_coverage.png", f"{output_name(args.model)}_risk_coverage.png"),
        ):
            shutil.copyfile(os.path.join(test_dir, src), os.path.join(args.figures, dst))
        print(f"figures in {args.figures}")


if __name__ == "__main__":
    from flowers_jax import hugepages

    hugepages.restart_with_huge_pages()
    main()
