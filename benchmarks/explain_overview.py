"""The whole-image attribution map (issue 20): its time on a 5,351-cell image and its faithfulness,
side by side with the refined integrated gradients of the single-cell panel, in one run.

    python benchmarks/explain_overview.py [--model DIR] [--cells 300] [--threads 2]

* time: every cell of the semi-synthetic image Y15 (5,351 cells; ``out/damond_sim``, the default model's
  own rendering) with the overview settings (``spatial2sentence.explain.OVERVIEW``); the refined
  attribution (16 steps doubled until complete, the panel's) on ``--cells`` of them, with its time per
  cell extrapolated to the image beside it;
* one cell as the plugin does it after a click (CellSet prepared once): the time to the first shading
  (``FIRST_PASS``: first call, median, max) and to the refined attribution where that pass is incomplete;
* faithfulness: the deletion test of ``benchmarks/explain.py`` (3 highest-attributed marker words of the
  cell deleted vs every set of 3 of its marker words) on ``--cells`` cells of the held-out donors' images,
  for the overview and for the refined attributions of the same cells, and how often the two agree on
  the top marker.

Writes ``benchmarks/results/explain_overview.json``. Semi-synthetic images: real Damond 2019 layouts,
simulated pixels.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import explain as ex_bench  # noqa: E402  (benchmarks/explain.py: data loading and the deletion test)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--cells", type=int, default=300)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--image", default="Y15")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "explain_overview.json"))
    args = ap.parse_args(argv)

    import torch

    from spatial2sentence.explain import FIRST_PASS, OVERVIEW, explain_cells, is_complete
    from spatial2sentence.io import write_json_atomic
    from spatial2sentence.model import S2SModel
    from spatial2sentence.threads import torch_threads

    sim_dir = REPO / "out" / "damond_sim"
    model = S2SModel.from_pretrained(args.model, device="cpu")
    heldout = ex_bench.choose_images(ex_bench.heldout_donors())[:2]
    tables = ex_bench.load_images([args.image, *heldout], sim_dir)
    res: dict = {"model": str(args.model or "default"), "image": args.image, "overview": dict(OVERVIEW),
                 "threads": args.threads, "semi_synthetic": True}
    rng = np.random.default_rng(0)
    with torch_threads(args.threads):
        cells = tables[args.image].drop(columns=["cell_type", "donor", "stage"], errors="ignore")
        cs = model.prepare(cells, source=args.image)
        objects = list(cs.object_id)
        t0 = time.perf_counter()
        explain_cells(model, cs, objects, **OVERVIEW)
        overview_s = time.perf_counter() - t0
        sub = [objects[i] for i in rng.choice(len(objects), min(args.cells, len(objects)), replace=False)]
        t0 = time.perf_counter()
        explain_cells(model, cs, sub)
        refined_s = time.perf_counter() - t0
        res["map"] = {"n_cells": len(objects), "overview_s": round(overview_s, 2),
                      "refined_s_for_subset": round(refined_s, 2), "subset": len(sub),
                      "refined_s_extrapolated": round(refined_s / len(sub) * len(objects), 1)}
        print("map:", json.dumps(res["map"]), flush=True)
        # one click: a fresh CellSet (as after a Run), then cells one by one
        # the words are shaded after the first pass (FIRST_PASS); the refined attribution follows where
        # that pass misses the completeness rule (napari_s2s/_explain_view.py)
        cs1 = model.prepare(cells, source=args.image)
        shaded, refined_t = [], []
        for o in sub[:12]:
            t0 = time.perf_counter()
            first = explain_cells(model, cs1, [o], **FIRST_PASS)[0]
            shaded.append(time.perf_counter() - t0)
            if not is_complete(first):
                explain_cells(model, cs1, [o])
            refined_t.append(time.perf_counter() - t0)
        res["click"] = {"first_s": round(shaded[0], 3), "median_s": round(float(np.median(shaded)), 3),
                        "max_s": round(max(shaded), 3), "n": len(shaded),
                        "refined_median_s": round(float(np.median(refined_t)), 3),
                        "refined_max_s": round(max(refined_t), 3)}
        print("click:", json.dumps(res["click"]), flush=True)
        # faithfulness on held-out cells: overview vs refined, same cells
        explanations = {"overview": [], "refined": []}
        prompt_of = {}
        per_image = max(1, args.cells // len(heldout))
        for im in heldout:
            c = tables[im].drop(columns=["cell_type", "donor", "stage"], errors="ignore")
            csh = model.prepare(c, source=im)
            pick = list(rng.choice(list(csh.object_id), min(per_image, len(csh)), replace=False))
            for name, opts in (("overview", OVERVIEW), ("refined", {})):
                out = explain_cells(model, csh, pick, **opts)
                for e in out:
                    e["image"] = im
                explanations[name] += out
            for p in model.prompts_for(csh, pick):
                prompt_of[(im, p["Object"])] = p
        res["faithfulness"] = {}
        for name, exs in explanations.items():
            f = ex_bench.faithfulness(model, exs, prompt_of)["delete"]["markers"]
            res["faithfulness"][name] = {k: f[k] for k in f if k in ("mean", "ci95_bootstrap", "n", "share_positive",
                                                                     "mean_drop_top3", "mean_drop_random3")}
        top = [(a["markers"][0]["marker"] if a["markers"] else None, b["markers"][0]["marker"] if b["markers"] else None)
               for a, b in zip(explanations["overview"], explanations["refined"])]
        res["faithfulness"]["same_top_marker"] = round(float(np.mean([a == b for a, b in top])), 3)
        print("faithfulness:", json.dumps(res["faithfulness"]), flush=True)
    res["torch_threads_after"] = torch.get_num_threads()
    write_json_atomic(res, Path(args.out))
    return res


if __name__ == "__main__":
    main()
