"""Temperature scaling of a model's cell-type probabilities, fitted and judged on different held-out images.

The model folder's check cells (``panel_check.csv.gz``: 1,200 cells of 6 semi-synthetic images of the
3 donors the default model never saw) are split by image: one image per donor fits the temperature
(E17, G32, J07), the other three judge it (E32, H16, K09). Printed and saved: the temperature, the
expected calibration error (10 bins) and the reliability diagram before and after, on the judging images.
Temperature scaling changes no call (the argmax stays), only how sure the probabilities say it is. A
temperature that raises the judging images' calibration error is not stored (``--write`` keeps T = 1
and records the fitted value).

    python benchmarks/calibration.py [--model DIR] [--write]

``--write`` stores ``calibration`` (``type_temperature``, the ECEs, the images) in the model's
``s2s_config.json`` and a "Calibration" section in its MODEL_CARD.md. Results:
``benchmarks/results/calibration.json`` and ``calibration.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from spatial2sentence.check_cells import read_check_cells  # noqa: E402
from spatial2sentence.domain import CHECK_CELLS, apply_temperature, fit_temperature, reliability  # noqa: E402
from spatial2sentence.io import write_json_atomic  # noqa: E402
from spatial2sentence.model import DEFAULT_MODEL_DIR, S2SModel  # noqa: E402

FIT_IMAGES = ["E17", "G32", "J07"]  # one per held-out donor
JUDGE_IMAGES = ["E32", "H16", "K09"]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--write", action="store_true", help="store the temperature in the model folder")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = ap.parse_args(argv)
    model_dir = Path(args.model) if args.model else DEFAULT_MODEL_DIR
    model = S2SModel.from_pretrained(model_dir, device="cpu")
    model.calibration = {}  # measure the raw probabilities
    cells = read_check_cells(model_dir)
    if cells is None:
        raise SystemExit(f"{model_dir / CHECK_CELLS}: no check cells in this model folder")
    markers = [m for m in model.markers if m in cells.columns]
    pred = model.predict_cells(cells.drop(columns=["cell_type"]), markers=markers, tasks=("type",), threads=1).cells
    cols = ["p_" + str(t).replace(" ", "_") for t in model.type_labels]
    p = pred[cols].to_numpy(np.float64)
    index = {t: k for k, t in enumerate(model.type_labels)}
    y = cells["cell_type"].map(index).to_numpy()
    ok = np.isfinite(p).all(1) & ~pd.isna(y)
    y = np.where(ok, y, 0).astype(int)
    fit = ok & cells["image"].isin(FIT_IMAGES).to_numpy()
    judge = ok & cells["image"].isin(JUDGE_IMAGES).to_numpy()
    t = fit_temperature(p[fit], y[fit])
    ece_before, rel_before = reliability(p[judge], y[judge])
    ece_after, rel_after = reliability(apply_temperature(p[judge], t), y[judge])
    res = {"command": "python benchmarks/calibration.py" + (" " + " ".join(argv or sys.argv[1:])).rstrip(),
           "model": str(model_dir), "fit_images": FIT_IMAGES, "judge_images": JUDGE_IMAGES,
           "n_fit": int(fit.sum()), "n_judge": int(judge.sum()), "type_temperature": round(t, 4),
           "ece_before": round(ece_before, 4), "ece_after": round(ece_after, 4),
           "accuracy_judge": round(float(np.mean(p[judge].argmax(1) == y[judge])), 4),
           "reliability_before": rel_before, "reliability_after": rel_after,
           # a temperature that makes the judging images' calibration worse is not stored: T = 1 (raw
           # probabilities), with the fitted value and both errors kept for the record
           "applied": bool(ece_after <= ece_before)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "calibration.json").write_text(json.dumps(res, indent=1) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(4.6, 4.2))
        ax.plot([0, 1], [0, 1], color="0.7", ls="--", lw=1, label="perfect calibration")
        for rel, name, c in ((rel_before, f"raw (ECE {ece_before:.3f})", "C3"),
                             (rel_after, f"T = {t:.2f} (ECE {ece_after:.3f})", "C0")):
            ax.plot([r["confidence"] for r in rel], [r["accuracy"] for r in rel], marker="o", color=c, label=name)
        ax.set_xlabel("predicted probability of the call")
        ax.set_ylabel("fraction of calls that are right")
        ax.set_title("cell type, held-out images E32, H16, K09", fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(out / "calibration.png", dpi=120)
    except ImportError:
        pass
    print(f"temperature {t:.3f}: ECE {ece_before:.4f} -> {ece_after:.4f} on {int(judge.sum())} cells of "
          f"{', '.join(JUDGE_IMAGES)} (fitted on {int(fit.sum())} cells of {', '.join(FIT_IMAGES)})")
    applied = res["applied"]
    if not applied:
        print(f"not applied: T = {t:.3f} raises the expected calibration error on the judging images")
    if args.write:
        cfg_path = model_dir / "s2s_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["calibration"] = {"type_temperature": round(t, 4) if applied else 1.0,
                              "fitted_temperature": round(t, 4), "ece_before": round(ece_before, 4),
                              "ece_after": round(ece_after if applied else ece_before, 4),
                              "ece_with_fitted": round(ece_after, 4), "fit_images": FIT_IMAGES,
                              "judge_images": JUDGE_IMAGES, "command": res["command"]}
        write_json_atomic(cfg, cfg_path)
        card = model_dir / "MODEL_CARD.md"
        text = card.read_text() if card.exists() else ""
        how = (f"- cell-type probabilities are temperature-scaled, T = {t:.3f}, fitted on the check cells of "
               f"{', '.join(FIT_IMAGES)} (one image per held-out donor)\n"
               f"- expected calibration error (10 bins) on {int(judge.sum())} cells of {', '.join(JUDGE_IMAGES)}: "
               f"{ece_before:.3f} before, {ece_after:.3f} after (calls unchanged; accuracy there "
               f"{res['accuracy_judge']:.3f})\n") if applied else (
               f"- cell-type probabilities are not rescaled: the temperature fitted on the check cells of "
               f"{', '.join(FIT_IMAGES)} (T = {t:.3f}) raised the expected calibration error (10 bins) on "
               f"{int(judge.sum())} cells of {', '.join(JUDGE_IMAGES)} from {ece_before:.3f} to {ece_after:.3f}, "
               f"so T = 1 is stored (accuracy there {res['accuracy_judge']:.3f})\n")
        text = text.split("\n## Calibration\n")[0].rstrip() + "\n\n## Calibration\n" + how + (
            f"- reliability diagram: benchmarks/results/calibration.png; command: `{res['command']}`\n")
        card.write_text(text)
        print(f"written into {cfg_path} and {card}")
    return res


if __name__ == "__main__":
    main()
