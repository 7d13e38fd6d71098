"""Benchmark and evaluation of the token attributions (``spatial2sentence.explain``).

    python benchmarks/explain.py [--model DIR] [--out benchmarks/results]

On SEMI-SYNTHETIC images (``s2s simulate``: real Damond 2019 layouts, simulated pixels) of the donors
held out from the default model's training (read from ``configs/default_model.json``; the model card
names them too) this script measures the following. The images are taken from the recipe's own rendering
(``out/damond_sim``, the same simulator run the model was trained on) when it exists, else rendered with
``s2s simulate`` (seed 0) into ``out/explain_sim``; a simulator changed since training makes the second
differ from the first.

0. speed: one cell explained (CellSet prepared once, as the plugin does) and every cell of a
   1,000-cell image, on CPU;
1. faithfulness: deleting the 3 marker words with the highest attribution from the anchor's sentence
   lowers the predicted class's probability more than deleting 3 random marker words of the same cell
   (exact expectation over every 3-subset of the cell's marker words); the same for the partner with
   the highest attribution (its whole line deleted) against a random partner (exact expectation over
   the cell's partners). Per cell d = drop(top) - drop(random); mean with a 95% bootstrap CI (10,000
   resamples) and a t interval. Replacing the words by [UNK] instead of deleting them is reported too;
3. sanity: attributions of a model with the same architecture and re-initialised weights
   (Spearman rank correlation over the prompt's tokens, with the trained model's target);
4. plausibility: among correctly predicted cells of each type, how often one of the type's defining
   markers (rule in ``defining_markers``) is among the 3 highest-attributed markers of the cell.

Writes ``<out>/explain.json`` and ``<out>/explain.md``.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = Path(os.environ.get("S2S_DATA", REPO.parent / "shared" / "data")) / "damond_diabetes_layouts" / "cells.csv.gz"
RECIPE = REPO / "configs" / "default_model.json"
TIMING_IMAGE = "H16"  # 1,005 cells, donor 6414 (held out)
FOCUS = ("beta", "alpha", "delta")


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------------------------- data
def heldout_donors() -> list[str]:
    recipe = json.loads(RECIPE.read_text())
    donors = []
    for entry in recipe.get("data", []):
        donors += [str(d) for d in entry.get("exclude", {}).get("donor", [])]
    return donors


def choose_images(donors: list[str], min_per_type: int = 60) -> list[str]:
    """Held-out images, greedily, until beta, alpha and delta each have ``min_per_type`` cells."""
    lay = pd.read_csv(LAYOUTS, usecols=["imageID", "cellType", "case"], dtype={"case": str})
    lay = lay[lay["case"].isin(donors)]
    counts = lay.groupby(["imageID", "cellType"]).size().unstack(fill_value=0)
    counts["n"] = counts.sum(1)
    chosen = [TIMING_IMAGE] if TIMING_IMAGE in counts.index else []
    have = counts.loc[chosen, list(FOCUS)].sum() if chosen else pd.Series(0, index=list(FOCUS))
    rest = counts.drop(index=chosen)
    while (have < min_per_type).any() and len(rest):
        need = (min_per_type - have).clip(lower=0)
        gain = rest[list(FOCUS)].clip(upper=need, axis=1).sum(1) / np.sqrt(rest["n"])
        best = gain.idxmax()
        chosen.append(best)
        have += rest.loc[best, list(FOCUS)]
        rest = rest.drop(index=best)
    return chosen


def load_images(images: list[str], sim_dir: Path) -> dict[str, pd.DataFrame]:
    """Render (if missing) and measure the images; returns measured cells + labels per image."""
    from spatial2sentence.bench.simulate import simulate_dataset
    from spatial2sentence.tables import join_labels, measure_steinbock

    missing = [i for i in images if not (sim_dir / "img" / f"{i}.tiff").exists()]
    if missing or not (sim_dir / "labels.csv").exists():
        log(f"simulating {len(images)} held-out images into {sim_dir} (semi-synthetic, seed 0)")
        simulate_dataset(LAYOUTS, sim_dir, images=images, seed=0)
    labels = pd.read_csv(sim_dir / "labels.csv", dtype={"donor": str})
    cells = measure_steinbock(sim_dir, progress=False, images=images)
    cells = join_labels(cells, labels, sim_dir)
    return {im: g.reset_index(drop=True) for im, g in cells.groupby("image", sort=False)}


# -------------------------------------------------------------------------------------------- helpers
def ci_mean(d: np.ndarray, seed: int = 0, n_boot: int = 10_000) -> dict:
    from scipy import stats

    d = np.asarray(d, float)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(n_boot, len(d)))].mean(1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    t = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
    return {"n": int(len(d)), "mean": float(d.mean()), "ci95_bootstrap": [float(lo), float(hi)],
            "ci95_t": [float(d.mean() - t), float(d.mean() + t)], "median": float(np.median(d)),
            "share_positive": float((d > 0).mean())}


def score(model, seqs: list[list[int]], values: list[list[float]] | None = None, batch: int = 512) -> np.ndarray:
    """Type probabilities after each prompt; ``values``: what each word carries, for a model that reads
    them (without them a v2 model would read every level as 0: a prompt it never saw)."""
    from spatial2sentence.predict import score_prompts

    vals = values if model.sentence.values else None
    out = []
    for c0 in range(0, len(seqs), batch):
        out.append(score_prompts(model.lm, seqs[c0:c0 + batch], model.label_ids("type"),
                                 model.tokenizer.pad_id, model.device,
                                 values=vals[c0:c0 + batch] if vals is not None else None))
    return np.concatenate(out) if out else np.zeros((0, len(model.type_labels)))


def masked(ids: list, positions, mode: str, fill) -> list:
    """``ids`` (or the values beside them) with ``positions`` deleted, or replaced by ``fill`` (mode unk)."""
    pos = set(positions)
    if mode == "delete":
        return [t for i, t in enumerate(ids) if i not in pos]
    return [fill if i in pos else t for i, t in enumerate(ids)]


def partner_lines(ex: dict) -> dict:
    """Positions of each partner's whole line (role word .. ';') and of its own words."""
    toks = ex["tokens"]
    lines, words = {}, {}
    for i, t in enumerate(toks):
        if t["part"].startswith("partner:"):
            words.setdefault(t["part"], []).append(i)
    for part, idx in words.items():
        j = idx[-1]
        while toks[j]["token"] != ";":
            j += 1
        lines[part] = list(range(idx[0], j + 1))
    return {"lines": lines, "words": words}


# --------------------------------------------------------------------------------------- evaluation
def faithfulness(model, explanations: list[dict], prompt_of: dict) -> dict:
    """``prompt_of``: (image, Object) -> the cell's prompt (``S2SModel.prompts_for``: tokens and values)."""
    known = set(model.markers)
    unk = model.tokenizer.unk_id
    labels = model.type_labels
    res = {}
    for mode in ("delete", "unk"):
        seqs, vals, plan = [], [], []

        def add(ids, v, positions=()):
            seqs.append(masked(ids, positions, mode, unk))
            vals.append(masked(v, positions, mode, 0.0))

        for ex in explanations:
            key = (ex["image"], ex["object"])
            ids, v = prompt_of[key]["tokens"], prompt_of[key]["values"]
            ti = labels.index(ex["target"])
            mpos = [i for i, t in enumerate(ex["tokens"]) if t["part"] == "anchor" and t["token"] in known]
            entry = {"key": key, "target": ti, "start": len(seqs)}
            add(ids, v)
            if len(mpos) >= 4:
                top = sorted(mpos, key=lambda i: -ex["tokens"][i]["score"])[:3]
                combos = list(itertools.combinations(mpos, 3))
                entry["m_top"] = len(seqs)
                add(ids, v, top)
                entry["m_rand"] = (len(seqs), len(combos))
                for c in combos:
                    add(ids, v, c)
            pl = partner_lines(ex)
            if len(ex["partners"]) >= 2:
                names = [f"partner:{p['object']}" for p in ex["partners"]]
                best = names[int(np.argmax([p["score"] for p in ex["partners"]]))]
                sel = pl["lines"] if mode == "delete" else pl["words"]
                entry["p_top"] = len(seqs)
                add(ids, v, sel[best])
                entry["p_rand"] = (len(seqs), len(names))
                for n in names:
                    add(ids, v, sel[n])
            plan.append(entry)
        probs = score(model, seqs, vals)
        d_m, d_p, drops = [], [], {"marker_top": [], "marker_random": [], "partner_top": [], "partner_random": []}
        # the untouched prompts must score as the explanations did (same words, values and positions)
        same = [abs(probs[e["start"], e["target"]] - ex["probabilities"][ex["target"]])
                for e, ex in zip(plan, explanations)]
        if max(same, default=0.0) > 1e-3:
            raise RuntimeError(f"deletion test: untouched prompts score differently from the explanations "
                               f"(largest difference {max(same):.4f})")
        for e in plan:
            p0 = probs[e["start"], e["target"]]
            if "m_top" in e:
                a, n = e["m_rand"]
                top = p0 - probs[e["m_top"], e["target"]]
                rnd = float(np.mean(p0 - probs[a:a + n, e["target"]]))
                d_m.append(top - rnd)
                drops["marker_top"].append(top)
                drops["marker_random"].append(rnd)
            if "p_top" in e:
                a, n = e["p_rand"]
                top = p0 - probs[e["p_top"], e["target"]]
                rnd = float(np.mean(p0 - probs[a:a + n, e["target"]]))
                d_p.append(top - rnd)
                drops["partner_top"].append(top)
                drops["partner_random"].append(rnd)
        res[mode] = {
            "markers": {**ci_mean(np.array(d_m)), "mean_drop_top3": float(np.mean(drops["marker_top"])),
                        "mean_drop_random3": float(np.mean(drops["marker_random"]))},
            "partners": {**ci_mean(np.array(d_p), seed=1), "mean_drop_top": float(np.mean(drops["partner_top"])),
                         "mean_drop_random": float(np.mean(drops["partner_random"]))},
        }
    return res


def randomised_model(model, seed: int = 1):
    """The same model with re-initialised weights: matrices ~ N(0, initializer_range) as transformers
    initialises a Llama, vectors (norms, value scales) 1. A copy of the loaded module, so it works for our
    own Llama reader (:mod:`spatial2sentence.lite_llama`, no transformers config) and keeps the prompt
    settings the module carries (line positions, values)."""
    import torch

    torch.manual_seed(seed)
    rnd = copy.copy(model)
    rnd.lm = copy.deepcopy(model.lm)
    std = float(getattr(model.lm.config, "initializer_range", 0.02))
    with torch.no_grad():
        for p in rnd.lm.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
            else:
                p.fill_(1.0)
    rnd.lm.eval()
    return rnd


def sanity(model, sets: dict, explanations: list[dict], n_cells: int, args) -> dict:
    from scipy.stats import spearmanr

    from spatial2sentence.explain import explain_cells

    rnd = randomised_model(model)
    rng = np.random.default_rng(2)
    pick = sorted(rng.choice(len(explanations), size=min(n_cells, len(explanations)), replace=False))
    sub = [explanations[i] for i in pick]
    rhos, rhos_m, same_top = [], [], []
    for im in dict.fromkeys(e["image"] for e in sub):
        es = [e for e in sub if e["image"] == im]
        rex = explain_cells(rnd, sets[im], [e["object"] for e in es], target=[e["target"] for e in es],
                            internal_batch_size=args.internal_batch_size)
        for a, b in zip(es, rex):
            keep = [i for i, t in enumerate(a["tokens"]) if t["part"] != "task" and t["token"] != "[BOS]"]
            sa = [a["tokens"][i]["score"] for i in keep]
            sb = [b["tokens"][i]["score"] for i in keep]
            rhos.append(spearmanr(sa, sb).statistic)
            ma = {d["marker"]: d["score"] for d in a["markers"]}
            mb = {d["marker"]: d["score"] for d in b["markers"]}
            if len(ma) >= 3:
                ks = list(ma)
                rhos_m.append(spearmanr([ma[k] for k in ks], [mb[k] for k in ks]).statistic)
                same_top.append(a["markers"][0]["marker"] == b["markers"][0]["marker"])
    rhos = np.array(rhos, float)
    rhos_m = np.array([r for r in rhos_m if np.isfinite(r)], float)
    # reference: the trained model against itself with another baseline embedding ([UNK] for [PAD])
    ref = []
    for im in dict.fromkeys(e["image"] for e in sub[:60]):
        es = [e for e in sub[:60] if e["image"] == im]
        uex = explain_cells(model, sets[im], [e["object"] for e in es], target=[e["target"] for e in es],
                            baseline="unk", internal_batch_size=args.internal_batch_size)
        for a, b in zip(es, uex):
            keep = [i for i, t in enumerate(a["tokens"]) if t["part"] != "task" and t["token"] != "[BOS]"]
            ref.append(spearmanr([a["tokens"][i]["score"] for i in keep],
                                 [b["tokens"][i]["score"] for i in keep]).statistic)
    ref = np.array(ref, float)
    return {
        "n_cells": int(len(rhos)),
        "token_spearman_trained_vs_random": {"mean": float(np.nanmean(rhos)), "median": float(np.nanmedian(rhos)),
                                             "q10_q90": [float(np.nanpercentile(rhos, 10)),
                                                         float(np.nanpercentile(rhos, 90))]},
        "marker_spearman_trained_vs_random": {"n": int(len(rhos_m)), "mean": float(np.mean(rhos_m)) if len(rhos_m) else None,
                                              "median": float(np.median(rhos_m)) if len(rhos_m) else None},
        "same_top_marker_share": float(np.mean(same_top)) if same_top else None,
        "reference_trained_pad_vs_unk_baseline": {"n": int(len(ref)), "mean": float(np.nanmean(ref)),
                                                  "median": float(np.nanmedian(ref))},
    }


def defining_markers(markers: list[str], ratio: float = 2.0, floor: float = 3.0) -> dict:
    """Per type: markers whose profile value is at least ``floor`` counts (clearly above the 0.5-1
    background of the profile table) and at least ``ratio`` x the highest value of any other type."""
    from spatial2sentence.aliases import canonical_marker
    from spatial2sentence.bench.simulate import load_profiles

    prof = load_profiles()
    prof.columns = [canonical_marker(c) for c in prof.columns]
    prof = prof[[m for m in prof.columns if m in set(markers)]]
    out = {}
    for t in prof.index:
        other = prof.drop(index=t).max()
        out[t] = [m for m in prof.columns if prof.loc[t, m] >= floor and prof.loc[t, m] >= ratio * other[m]]
    return out


def plausibility(model, explanations: list[dict], truth: dict) -> dict:
    defs = defining_markers(model.markers)
    res = {}
    for t in model.type_labels:
        ok = [e for e in explanations if truth[(e["image"], e["object"])] == t and e["predicted"] == t]
        n_true = sum(truth[(e["image"], e["object"])] == t for e in explanations)
        dm = set(defs.get(t, []))
        row = {"defining_markers": sorted(dm), "n_explained": int(n_true), "n_correct": len(ok)}
        if ok and dm:
            in_top3 = [bool(dm & {d["marker"] for d in e["markers"][:3]}) for e in ok]
            in_sent = [bool(dm & {d["marker"] for d in e["markers"]}) for e in ok]
            top1 = [bool(e["markers"]) and e["markers"][0]["marker"] in dm for e in ok]
            row.update(top3_share=float(np.mean(in_top3)), top1_share=float(np.mean(top1)),
                       in_sentence_share=float(np.mean(in_sent)))
        if ok:
            tops = pd.Series([e["markers"][0]["marker"] for e in ok if e["markers"]]).value_counts()
            row["most_common_top_marker"] = {k: int(v) for k, v in tops.head(3).items()}
        res[t] = row
    return res


# ------------------------------------------------------------------------------------------- timing
def timing(model, cells: pd.DataFrame, args) -> dict:
    from spatial2sentence.explain import explain_cells

    t0 = time.perf_counter()
    cs = model.prepare(cells.drop(columns=["cell_type", "donor", "stage"], errors="ignore"), source=TIMING_IMAGE)
    t_prep = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    ids = rng.choice(cs.object_id, size=12, replace=False)
    times, cpu, steps = [], [], []
    load_before = os.getloadavg()[0]
    for k, o in enumerate(ids):
        t, c = time.perf_counter(), time.process_time()
        (e,) = explain_cells(model, cs, [o], internal_batch_size=args.internal_batch_size)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        steps.append(e["n_steps"])
    t, c = time.perf_counter(), time.process_time()
    allx = explain_cells(model, cs, None, internal_batch_size=args.internal_batch_size)
    t_all, c_all = time.perf_counter() - t, time.process_time() - c
    rel = np.array([e["completeness_error"] / max(abs(e["f_input"] - e["f_baseline"]), 0.1) for e in allx])
    st = pd.Series([e["n_steps"] for e in allx]).value_counts().sort_index()
    return {
        "image": TIMING_IMAGE, "n_cells": int(len(cs)), "prepare_s": round(t_prep, 3),
        "one_cell_s": {"first": round(times[0], 3), "median": round(float(np.median(times[1:])), 3),
                       "max": round(float(np.max(times[1:])), 3), "n": len(times) - 1,
                       "steps_used": [int(s) for s in steps]},
        "one_cell_cpu_s": {"median": round(float(np.median(cpu[1:])), 3), "max": round(float(np.max(cpu[1:])), 3),
                           "median_16_steps": round(float(np.median([c for c, s in zip(cpu[1:], steps[1:]) if s == 16]
                                                                    or [np.nan])), 3)},
        "all_cells_s": round(t_all, 2), "per_cell_ms": round(1000 * t_all / len(cs), 2),
        "all_cells_cpu_s": round(c_all, 2),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "threads": args.threads,
        "steps_used": {int(k): int(v) for k, v in st.items()},
        "completeness_relative": {"median": float(np.median(rel)), "p99": float(np.percentile(rel, 99)),
                                  "max": float(rel.max())},
        "internal_batch_size": args.internal_batch_size,
    }


# --------------------------------------------------------------------------------------------- main
def main(argv=None):
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="model directory (default: the embedded default model)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--sim-dir", default=None,
                    help="steinbock folder with the held-out images (default: out/damond_sim, the default "
                         "model's recipe data, when it exists, else out/explain_sim, rendered here)")
    ap.add_argument("--per-type", type=int, default=20, help="cells explained per type (other types)")
    ap.add_argument("--per-focus-type", type=int, default=60, help="cells explained per beta/alpha/delta")
    ap.add_argument("--random-cells", type=int, default=120, help="cells for the randomised-model check")
    ap.add_argument("--internal-batch-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--timing-only", action="store_true",
                    help="only redo the speed section of an existing <out>/explain.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from spatial2sentence.explain import explain_cells
    from spatial2sentence.model import DEFAULT_MODEL_DIR, S2SModel

    t_start = time.perf_counter()
    model = S2SModel.from_pretrained(args.model, device="cpu")
    donors = heldout_donors()
    card = (Path(args.model or DEFAULT_MODEL_DIR) / "MODEL_CARD.md")
    card_txt = card.read_text() if card.exists() else ""
    log(f"model {args.model or 'default'}; held-out donors (configs/default_model.json): {donors}; "
        f"named in the model card: {all(d in card_txt for d in donors)}")
    images = choose_images(donors)
    log(f"images: {images}")
    out = Path(args.out)
    if args.timing_only:
        sim_dir = Path(args.sim_dir) if args.sim_dir else (
            REPO / "out" / "damond_sim" if (REPO / "out" / "damond_sim" / "labels.csv").exists()
            else REPO / "out" / "explain_sim")
        results = json.loads((out / "explain.json").read_text())
        results["timing"] = timing(model, load_images([TIMING_IMAGE], sim_dir)[TIMING_IMAGE], args)
        log("timing:", json.dumps(results["timing"]))
        from spatial2sentence.io import write_json_atomic

        write_json_atomic(results, out / "explain.json")
        (out / "explain.md").write_text(report(results))
        return results
    sim_dir = Path(args.sim_dir) if args.sim_dir else (
        REPO / "out" / "damond_sim" if (REPO / "out" / "damond_sim" / "labels.csv").exists()
        else REPO / "out" / "explain_sim")
    log(f"held-out images from {sim_dir}")
    tables = load_images(images, sim_dir)
    results: dict = {"model": str(args.model or "default"), "heldout_donors": donors, "images": images,
                     "sim_dir": str(sim_dir.relative_to(REPO) if sim_dir.is_relative_to(REPO) else sim_dir),
                     "semi_synthetic": True, "per_type": args.per_type, "per_focus_type": args.per_focus_type,
                     # the command that made these figures: smaller samples or other threads change them
                     "command": shlex.join(["python", "benchmarks/explain.py",
                                            *(sys.argv[1:] if argv is None else argv)])}

    if not args.skip_timing:
        results["timing"] = timing(model, tables[TIMING_IMAGE], args)
        log("timing:", json.dumps(results["timing"]))

    # ---- predictions and the cells to explain (stratified by true type)
    sets, truth, pools = {}, {}, []
    for im, df in tables.items():
        cs = model.prepare(df.drop(columns=["cell_type", "donor", "stage"]), source=im)
        sets[im] = cs
        pred = model.predict_cells(cs, tasks=("type",)).cells
        pred["true"] = df["cell_type"].to_numpy()
        pred["image"] = im
        pools.append(pred)
        truth.update({(im, o): t for o, t in zip(df["Object"], df["cell_type"])})
    pool = pd.concat(pools, ignore_index=True)
    results["accuracy_on_images"] = float((pool["cell_type"] == pool["true"]).mean())
    rng = np.random.default_rng(0)
    chosen = []
    for t, g in pool.groupby("true"):
        k = args.per_focus_type if t in FOCUS else args.per_type
        chosen.append(g.iloc[rng.permutation(len(g))[:k]])
    chosen = pd.concat(chosen)
    log(f"explaining {len(chosen)} cells of {len(pool)} (accuracy on these images "
        f"{results['accuracy_on_images']:.3f})")
    t = time.perf_counter()
    explanations, prompt_of = [], {}
    for im, g in chosen.groupby("image", sort=False):
        ids = g["Object"].tolist()
        explanations += explain_cells(model, sets[im], ids, internal_batch_size=args.internal_batch_size)
        for p in model.prompts_for(sets[im], ids):
            prompt_of[(im, p["Object"])] = p
    results["n_explained"] = len(explanations)
    results["explain_seconds"] = round(time.perf_counter() - t, 1)
    rel = np.array([e["completeness_error"] / max(abs(e["f_input"] - e["f_baseline"]), 0.1) for e in explanations])
    results["completeness_relative"] = {"median": float(np.median(rel)), "p99": float(np.percentile(rel, 99)),
                                        "max": float(rel.max()),
                                        "share_below_5pct": float((rel <= 0.05).mean())}
    results["steps_used"] = {int(k): int(v) for k, v in
                             pd.Series([e["n_steps"] for e in explanations]).value_counts().sort_index().items()}
    log(f"explained in {results['explain_seconds']} s; completeness {results['completeness_relative']}")

    results["faithfulness"] = faithfulness(model, explanations, prompt_of)
    log("faithfulness:", json.dumps(results["faithfulness"], indent=1))
    results["plausibility"] = plausibility(model, explanations, truth)
    log("plausibility:", json.dumps({k: (v.get("n_correct"), v.get("top3_share")) for k, v in results["plausibility"].items()}))
    results["sanity"] = sanity(model, sets, explanations, args.random_cells, args)
    log("sanity:", json.dumps(results["sanity"]))
    results["seconds_total"] = round(time.perf_counter() - t_start, 1)
    out.mkdir(parents=True, exist_ok=True)
    from spatial2sentence.io import write_json_atomic

    write_json_atomic(results, out / "explain.json")
    (out / "explain.md").write_text(report(results))
    log(f"wrote {out / 'explain.json'} and {out / 'explain.md'}")
    return results


def _ci(d: dict) -> str:
    lo, hi = d["ci95_bootstrap"]
    tl, th = d["ci95_t"]
    return (f"{d['mean']:+.3f} (95% CI bootstrap [{lo:+.3f}, {hi:+.3f}], t [{tl:+.3f}, {th:+.3f}]; "
            f"n = {d['n']}; top > random in {100 * d['share_positive']:.0f}% of cells)")


def report(r: dict) -> str:
    L = [
        "# Token attributions: speed, faithfulness, sanity, plausibility",
        "",
        "All figures are on **semi-synthetic** data: real Damond et al. 2019 cell layouts (positions, types, "
        "donors) rendered into IMC-like images by `s2s simulate` (seed 0), measured by `s2s`'s own reader. "
        f"Model: `{r['model']}`. Only donors held out from the default model's training are used "
        f"({', '.join(r['heldout_donors'])}; `configs/default_model.json`): images {', '.join(r['images'])} "
        f"from `{r.get('sim_dir')}`.",
        "",
        "Method (`spatial2sentence.explain`): integrated gradients of the predicted class's log-probability "
        "(softmax over the 16 cell-type label tokens, as prediction) on the input embeddings; baseline: the "
        "[PAD] embedding at every content word, [BOS] and the task words kept; Gauss-Legendre quadrature, 16 "
        "steps doubled (up to 256) until the completeness error is below 5% of |f(x) - f(baseline)|.",
        "",
        f"Reproduce: `{r.get('command', 'python benchmarks/explain.py')}` (CPU; `--timing-only` redoes the speed "
        "section).",
        "",
    ]
    if "timing" in r:
        tm = r["timing"]
        L += [
            "## Speed (CPU)",
            "",
            f"- one cell (CellSet of the image prepared once, as in the plugin), {tm['one_cell_s']['n']} cells: "
            f"CPU time of this process median **{tm['one_cell_cpu_s']['median']:.3f} s** "
            f"(max {tm['one_cell_cpu_s']['max']:.3f} s; cells done in 16 steps: {tm['one_cell_cpu_s']['median_16_steps']:.3f} s); "
            f"wall clock median {tm['one_cell_s']['median']:.3f} s, max {tm['one_cell_s']['max']:.3f} s "
            f"(first call {tm['one_cell_s']['first']:.3f} s); steps used {tm['one_cell_s']['steps_used']}; "
            f"preparing the image's cells and partners: {tm['prepare_s']:.2f} s",
            f"- all {tm['n_cells']} cells of image {tm['image']}: wall **{tm['all_cells_s']:.1f} s** "
            f"({tm['per_cell_ms']:.1f} ms per cell), CPU {tm['all_cells_cpu_s']:.1f} s; internal_batch_size "
            f"{tm['internal_batch_size']}; steps used {tm['steps_used']}; relative completeness error median "
            f"{tm['completeness_relative']['median']:.4f}, max {tm['completeness_relative']['max']:.4f}",
            f"- {tm['threads']} torch threads on a 2-core machine SHARED with other jobs (1-min load average "
            f"{tm['load_average_1min'][0]} before, {tm['load_average_1min'][1]} after): wall-clock times are "
            "inflated several-fold; process CPU time (both threads summed) is the better estimate of the "
            "time on an idle machine.",
            "",
        ]
    c = r["completeness_relative"]
    L += [
        "## Cells explained",
        "",
        f"{r['n_explained']} held-out cells, stratified by true type (up to {r.get('per_focus_type')} beta / alpha / "
        f"delta, {r.get('per_type')} of each other type; seeded), in {r['explain_seconds']} s. Cell-type accuracy of the model on these images: "
        f"{r['accuracy_on_images']:.3f}. Completeness error / |f(x) - f(b)|: median {c['median']:.4f}, p99 "
        f"{c['p99']:.4f}, max {c['max']:.4f} ({100 * c['share_below_5pct']:.1f}% below 5%); steps used: {r['steps_used']}.",
        "",
        "## 1. Faithfulness (deletion)",
        "",
        "Per cell: drop of the predicted class's probability when the 3 highest-attributed marker words of the "
        "cell's own sentence are deleted, minus the mean drop over every set of 3 of its marker words (the exact "
        "expectation of deleting 3 random marker words; cells with at least 4 marker words). Partners: the "
        "highest-attributed partner's whole line (`near/far <distance> <direction> : <markers> ;`) deleted, "
        "minus the mean over the cell's partners (cells with at least 2 partners). Positive = the attribution "
        "finds words that matter more than chance.",
        "",
        "| masking | markers: top 3 - random 3 | partners: top - random |",
        "|---|---|---|",
    ]
    for mode, name in (("delete", "delete the words"), ("unk", "replace by [UNK]")):
        f = r["faithfulness"][mode]
        L.append(f"| {name} | {_ci(f['markers'])} | {_ci(f['partners'])} |")
    fd = r["faithfulness"]["delete"]
    L += [
        "",
        f"Mean probability drops (deletion): top-3 markers {fd['markers']['mean_drop_top3']:.3f} vs random 3 "
        f"{fd['markers']['mean_drop_random3']:.3f}; top partner {fd['partners']['mean_drop_top']:.3f} vs random "
        f"partner {fd['partners']['mean_drop_random']:.3f}.",
        "",
    ]
    s = r["sanity"]
    L += [
        "## 2. Sanity: randomised weights",
        "",
        f"Same architecture, re-initialised weights (matrices N(0, initializer_range), vectors 1; seed 1), same target class, "
        f"{s['n_cells']} cells. Spearman rank correlation between the trained and the randomised model's token "
        f"scores (all prompt words except [BOS] and the task words, which are kept in the baseline): mean "
        f"**{s['token_spearman_trained_vs_random']['mean']:.3f}**, median "
        f"{s['token_spearman_trained_vs_random']['median']:.3f} (10-90%: "
        f"{s['token_spearman_trained_vs_random']['q10_q90'][0]:.2f} .. {s['token_spearman_trained_vs_random']['q10_q90'][1]:.2f}). "
        f"Over the anchor's markers only: mean {s['marker_spearman_trained_vs_random']['mean']:.3f} "
        f"(n = {s['marker_spearman_trained_vs_random']['n']}); same top marker in "
        f"{100 * s['same_top_marker_share']:.0f}% of cells. Reference, the trained model against itself with "
        f"the [UNK] instead of the [PAD] baseline: mean {s['reference_trained_pad_vs_unk_baseline']['mean']:.3f} "
        f"(n = {s['reference_trained_pad_vs_unk_baseline']['n']}).",
        "",
        "## 3. Plausibility against the committed expression profiles",
        "",
        "Defining markers of a type (from `src/spatial2sentence/data/celltype_profiles.csv`): profile value "
        ">= 3 counts (clearly above the 0.5-1 background) and >= 2x the highest value of any other type. Share "
        "of correctly predicted cells whose 3 highest-attributed markers include one of them (top 1 and "
        "'in the sentence at all', the ceiling, beside it).",
        "",
        "| type | defining markers | correct / explained | top 3 | top 1 | in sentence | most common top marker |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, v in r["plausibility"].items():
        pct = lambda k: f"{100 * v[k]:.0f}%" if k in v else "n/a"  # noqa: E731
        dm = ", ".join(v["defining_markers"]) or "none (rule finds none)"
        mc = ", ".join(f"{k} ({n})" for k, n in v.get("most_common_top_marker", {}).items())
        top3 = f"**{pct('top3_share')}**" if t in FOCUS else pct("top3_share")
        L.append(f"| {t} | {dm} | {v['n_correct']} / {v['n_explained']} | {top3} | {pct('top1_share')} | "
                 f"{pct('in_sentence_share')} | {mc} |")
    L += ["", f"Total run time {r['seconds_total']} s.", ""]
    return "\n".join(L)


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
