"""The benchmark's reports: ``accuracy.json``, ``accuracy.md`` and the cell-type confusion figures.

Metrics per seed are pooled over the folds (each evaluated cell / image is tested once per seed), then
reported as mean and sd over seeds: accuracy and macro F1 (over the classes present in the truth). A run
of some built-in datasets keeps the other datasets' rows of an earlier ``accuracy.json`` in the same folder
(:func:`kept_results`), and a run of some methods takes the other methods' rows of the same dataset from
earlier runs with the same budget (:func:`merge_methods`): on a 2-core machine one dataset's every-ablation
table is several sittings.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import confusion_matrix

from .datasets import BUILTIN
from .methods import ALL_METHODS, CLASSICAL_METHODS, Budget, bench_sentence, lm_attention, sentence_words

# s2s - c2s accuracy margins reported by the paper (points), for cell type and clinical status
PAPER_MARGIN = {"cell_type": 5.98, "clinical_status": 4.18}


def _fmt(r: dict | None, key="accuracy") -> str:
    if not r:
        return "-"
    return f"{100 * r[key + '_mean']:.1f} ± {100 * r[key + '_sd']:.1f}"


def margins(res: dict) -> list[str]:
    lines = []
    for t, paper in (("cell_type", PAPER_MARGIN["cell_type"]), ("clinical_status", PAPER_MARGIN["clinical_status"])):
        r = res.get(t)
        if not r or "s2s" not in r:
            continue
        s = 100 * r["s2s"]["accuracy_mean"]
        # c2s: s2s with space off; c2s_ranked: the paper's comparison (Cell2Sentence's ranked words, one cell)
        for single, name in (("c2s", "c2s"), ("c2s_ranked", "c2s_ranked (Cell2Sentence as published)")):
            if single in r:
                d = s - 100 * r[single]["accuracy_mean"]
                lines.append(f"- {t}: s2s − {name} = {d:+.1f} points (paper margin {paper:+.2f}): "
                             f"{'MET' if d >= paper else 'NOT MET'}")
        cl = {m: v for m, v in r.items() if m in CLASSICAL_METHODS + ("composition_logreg",)}
        if cl:
            best = max(cl, key=lambda m: cl[m]["accuracy_mean"])
            d = s - 100 * cl[best]["accuracy_mean"]
            lines.append(f"- {t}: s2s − best classical ({best}) = {d:+.1f} points: "
                         f"{'level or above' if d >= 0 else 'BELOW'}")
    return lines


def dataset_markdown(name: str, res: dict) -> str:
    meta = res.get("_meta", {})
    rows = [f"### {name}" + (" (kept from an earlier run)" if meta.get("kept") else ""), "",
            meta.get("description", ""), "",
            f"- split: {meta.get('split')}; {meta.get('n_folds')} folds; {meta.get('n_cells')} cells in "
            f"{meta.get('n_images')} images; test cells per image: "
            f"{meta.get('test_cells_per_image') or 'all'}; wall time {meta.get('wall_s')} s "
            + ("(no LM training in this run)" if not meta.get("n_lm_trainings") else
               f"({meta.get('n_lm_trainings')} LM trainings, {meta.get('lm_train_seconds_mean')} s each on average"
               + (f", {meta['lm_steps_mean']} steps on average (range {meta['lm_steps_range'][0]}-"
                  f"{meta['lm_steps_range'][1]}; best validation step {meta.get('lm_best_step_mean')} on average)"
                  if meta.get("lm_steps_mean") else "") + ")")]
    run = meta.get("run")
    if run:
        rows.append(f"- run: `{run.get('command')}`" + (f" at {run['commit']}" if run.get("commit") else "")
                    + "; budget: "
                    + ", ".join(f"{k}={v}" for k, v in run.get("budget", {}).items())
                    + (f"; sentences: {run['sentences']}" if run.get("sentences") else ""))
    for m in meta.get("merged", []):
        rows.append(f"- {', '.join(m['methods'])}: from an earlier run with the same budget, `{m['command']}`"
                    + (f" at {m['commit']}" if m.get("commit") else "")
                    + (f" ({m['wall_s']} s)" if m.get("wall_s") else ""))
    if meta.get("lm_selected"):  # s2s_select: the sentence its validation cells chose, per seed and fold
        rows.append("- kept by validation: " + ", ".join(f"{k} x{v}" for k, v in meta["lm_selected"].items()))
    for n in meta.get("notes", []):
        rows.append(f"- note: {n}")
    rows += ["", "| method | cell type acc | cell type macro F1 | clinical status acc (per image) | "
             "clinical macro F1 (per image) | clinical status acc (per cell) |", "|---|---|---|---|---|---|"]
    for m in ALL_METHODS:
        cells = [res.get("cell_type", {}).get(m), res.get("cell_type", {}).get(m),
                 res.get("clinical_status", {}).get(m), res.get("clinical_status", {}).get(m),
                 res.get("clinical_status_cells", {}).get(m)]
        if not any(cells):
            continue
        rows.append(f"| {m} | {_fmt(cells[0])} | {_fmt(cells[1], 'macro_f1')} | {_fmt(cells[2])} | "
                    f"{_fmt(cells[3], 'macro_f1')} | {_fmt(cells[4])} |")
    n = []
    for t in ("cell_type", "clinical_status", "clinical_status_cells"):
        r = next(iter(res.get(t, {}).values()), None)
        if r:
            n.append(f"{t}: {r['n_test_cells']} test cells, {r['n_test_images']} test images per seed")
    rows += ["", "Accuracy in % (mean ± sd over seeds). " + "; ".join(n), "", "Margins:", ""]
    rows += margins(res) or ["- (no s2s result)"]
    return "\n".join(rows) + "\n"


def confusion_png(name: str, res: dict, path: Path) -> Path | None:
    conf = res.get("_confusion", {})
    ct = res.get("cell_type", {})
    if "s2s" not in conf or not ct:
        return None
    # matplotlib: imported only where a figure is drawn (a slow import that no other step needs); a bare
    # Figure draws without pyplot, so no process-wide backend is chosen
    from matplotlib.figure import Figure

    cl = [m for m in ct if m in CLASSICAL_METHODS]
    shown = ["s2s", "c2s"] + ([max(cl, key=lambda m: ct[m]["accuracy_mean"])] if cl else [])
    shown = [m for m in shown if m in conf]
    labels = sorted(set(conf["s2s"][0]))
    fig = Figure(figsize=(4.2 * len(shown) + 1, 4.2 + 0.12 * len(labels)))
    axes = np.atleast_1d(fig.subplots(1, len(shown)))
    for ax, m in zip(axes, shown):
        cm = confusion_matrix(conf[m][0], conf[m][1], labels=labels).astype(float)
        cm /= np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(cm, vmin=0, vmax=1, cmap="Blues")
        ax.set_title(f"{m}: acc {100 * ct[m]['accuracy_mean']:.1f}%", fontsize=9)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels if ax is axes[0] else [], fontsize=6)
        ax.set_xlabel("predicted", fontsize=8)
    axes[0].set_ylabel("true (row-normalised, pooled over seeds)", fontsize=8)
    fig.suptitle(f"{name}: cell type confusion", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _read_results(path: Path) -> dict:
    """An earlier run's ``accuracy.json`` as a dict; {} where there is none or it does not parse."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return old if isinstance(old, dict) else {}


def kept_results(path: Path, new: dict) -> dict:
    """The datasets of an earlier ``accuracy.json`` in the same folder that this run does not redo, each
    with the run (budget, command) it came from, so a run of one dataset keeps the other datasets' rows."""
    old = _read_results(path)
    if "cell_type" in old or "clinical_status" in old:  # a single-table run
        return {}
    top = old.get("_meta", {})
    prev = {"budget": top.get("budget", {}), "command": top.get("command"), "commit": top.get("commit"),
            "machine": top.get("machine"),
            "sentences": top.get("sentences", "v1: markers ranked by range, top 12 above 0.3")}
    out = {}
    for name, res in old.items():
        if name == "_meta" or name in new or not isinstance(res, dict):
            continue
        res = dict(res)
        res["_meta"] = {**res.get("_meta", {}), "run": res.get("_meta", {}).get("run", prev), "kept": True}
        out[name] = res
    return out


# budget keys added after runs were committed, with the value every run before them used (so an earlier
# run still matches a budget that states them); keys not listed here must be present to match
BUDGET_KEYS_ADDED = {"weight_decay": 0.01, "value_noise": 0.0, "attention": "causal", "tissue_types": False}
# budget keys that do not change results (the runs are deterministic for any thread or process count)
BUDGET_KEYS_IRRELEVANT = ("workers", "threads")
METHOD_TABLES = ("cell_type", "clinical_status", "clinical_status_cells")


def budget_differences(a: dict, b: dict) -> list[str]:
    """The budget keys on which two runs' budgets (``Budget.to_dict()`` of each) differ."""
    a, b = {**BUDGET_KEYS_ADDED, **a}, {**BUDGET_KEYS_ADDED, **b}
    return sorted(k for k in set(a) | set(b) if k not in BUDGET_KEYS_IRRELEVANT and a.get(k, "?") != b.get(k, "!"))


def source_commit() -> str:
    """The git commit of the spatial2sentence source that runs ("" outside a git checkout, e.g. an installed
    wheel), with "+changes" when its tracked files under src/ differ from that commit. Why: a composed table
    takes rows from earlier runs, and their command alone does not say which code made them."""
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return ""
    try:
        git = ["git", "-C", str(root)]
        head = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=20).stdout.strip()
        changed = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", "--", "src"],
                                 capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return head + ("+changes" if head and changed else "")


def _run_of(res: dict, top: dict) -> dict:
    """The run (budget, command, ...) a dataset's results in an ``accuracy.json`` came from."""
    run = res.get("_meta", {}).get("run")
    return run or {"budget": top.get("budget", {}), "command": top.get("command"), "commit": top.get("commit")}


def merge_methods(results: dict, sources: list[Path], log=print) -> dict:
    """``results`` with, for each of its datasets, the methods it did not run taken from the same dataset
    in the ``accuracy.json`` files ``sources`` (earlier first), where that run's budget equals this run's
    (:func:`budget_differences`) and the dataset is the same (cells, images, markers); each dataset
    records what it took from where in ``_meta["merged"]``. Other sources are skipped with a line saying
    why."""
    loaded = [(src, _read_results(Path(src))) for src in sources]
    out = {}
    for name, res in results.items():
        # copies: the runner passes the same results again at its next write
        res = {**res, "_meta": dict(res.get("_meta", {})), **{t: dict(res[t]) for t in METHOD_TABLES if t in res}}
        budget = res["_meta"].get("run", {}).get("budget", {})
        ran = {m for t in METHOD_TABLES for m in res.get(t, {})}
        for src, old in loaded:
            if not isinstance(old.get(name), dict):
                continue
            prev = old[name]
            run = _run_of(prev, old.get("_meta", {}))
            diff = budget_differences(budget, run.get("budget", {}))
            same = all(prev.get("_meta", {}).get(k) == res["_meta"].get(k) for k in ("n_cells", "n_images", "markers"))
            took = sorted({m for t in METHOD_TABLES for m in prev.get(t, {}) if m not in ran})
            if not took:
                continue
            if diff or not same:
                log(f"[{name}] not merging {', '.join(took)} from {src}: "
                    + (f"budget differs in {', '.join(diff)}" if diff else "a different dataset (cells or markers)"))
                continue
            for t in METHOD_TABLES:
                for m in took:
                    if m in prev.get(t, {}):
                        res.setdefault(t, {})[m] = prev[t][m]
            ran |= set(took)
            # where each method was run: a source that itself merged keeps the original runs
            origin = {m: (e.get("command"), e.get("wall_s"), e.get("commit")) for e in
                      prev.get("_meta", {}).get("merged", []) for m in e["methods"]}
            here = (run.get("command"), prev.get("_meta", {}).get("wall_s"), run.get("commit"))
            for where in dict.fromkeys(origin.get(m, here) for m in took):
                res["_meta"]["merged"] = res["_meta"].get("merged", []) + [
                    {"methods": [m for m in took if origin.get(m, here) == where], "command": where[0],
                     "wall_s": where[1], **({"commit": where[2]} if where[2] else {})}]
            log(f"[{name}] merged {', '.join(took)} from {src} (same budget)")
        out[name] = res
    return out


def write_results(out: Path, results: dict, budget: Budget, command: str, wall_s: float, single: bool,
                  merge: list[Path] | tuple = (), log=print) -> None:
    """``accuracy.json`` + ``accuracy.md`` (+ confusion PNGs) in ``out``; methods this run did not do are
    taken from ``merge`` (their ``accuracy.json``, in the order given) and then from ``out``'s earlier
    ``accuracy.json`` where the budget is the same (:func:`merge_methods`): a folder named on purpose wins
    over what ``out`` held before (a rerun of a method, composed into ``out``, replaces its old row)."""
    out.mkdir(parents=True, exist_ok=True)
    commit = source_commit()
    meta = {"budget": budget.to_dict(), "command": command, "wall_s": round(wall_s, 1), "commit": commit,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), "
                       f"python {sys.version.split()[0]}",
            "methods": list(ALL_METHODS), "paper_margins_points": PAPER_MARGIN}

    def clean(r):
        return {k: v for k, v in r.items() if k != "_confusion"}

    run = {"budget": budget.to_dict(), "command": command, "commit": commit, "machine": meta["machine"],
           "sentences": sentence_words(budget)}
    results = {name: {**res, "_meta": {**res.get("_meta", {}), "run": res.get("_meta", {}).get("run", run)}}
               for name, res in results.items()}
    if not single:
        results = merge_methods(results, [Path(m) / "accuracy.json" for m in merge] + [out / "accuracy.json"], log)
    if single:
        (name, res), = results.items()
        js = {**clean(res), "_meta": {**res["_meta"], **meta}}
    else:
        results = {**kept_results(out / "accuracy.json", results), **results}
        results = {k: results[k] for k in sorted(results, key=lambda k: (BUILTIN + (k,)).index(k))}
        js = {name: clean(res) for name, res in results.items()}
        js["_meta"] = meta
    (out / "accuracy.json").write_text(json.dumps(js, indent=1, default=float))
    md = ["# Accuracy benchmark (`s2s benchmark`)", "",
          f"Command: `{command}`  ", f"Wall time: {wall_s / 60:.1f} min ({wall_s:.0f} s) on {meta['machine']}.", "",
          "Budget of this run (the same for every language model): "
          + ", ".join(f"{k}={v}" for k, v in budget.to_dict().items()),
          "", "Language models: small Llama-architecture causal LMs trained from scratch by "
          "`spatial2sentence.training.train` (multi-task: cell type, clinical status, the pair task and tissue "
          "prompts, mixed as `spatial2sentence.bench.methods.lm_settings` says; panel-subset augmentation off). "
          f"This run: at most {budget.steps} steps, validation on {budget.val_fraction:.0%} of the training groups "
          "(whole images when the training part has 5 or more, else the right-most block of each image) every "
          f"{budget.eval_every} steps, early stopping after {budget.patience} evaluations without a better "
          f"validation {budget.select_by.replace('_', ' ')} (best state kept)"
          + ("; then trained again on every training cell for the best step count (refit)" if budget.refit else "")
          + (f"; {budget.anchor_alone:.0%} of s2s's type/status prompts show the anchor alone"
             if budget.anchor_alone else "")
          + {"prefix": "; prefix attention (the prompt's sentences attend both ways, the answer causally)",
             "sentence": "; sentence attention (each line's words attend both ways, earlier lines and the answer "
                         "causally)"}.get(budget.attention, "")
          + ("; sentences without values (s2s_ranked) read causally"
             if lm_attention(budget, bench_sentence(budget, ranked=True)) != budget.attention else "")
          + f"; fresh weights drawn with sd {budget.init_std}"
          + (f"; validation reads and training keeps a moving average of the weights (decay {budget.ema_decay})"
             if budget.ema_decay else "")
          + f"; AdamW weight decay {budget.weight_decay}"
          + (f"; training prompts' values jittered (sd {budget.value_noise})" if budget.value_noise else "")
          + f"; type sampling weight ~ count ** -{budget.class_balance}; sentences: {sentence_words(budget)}. "
          "`c2s`: single-cell prompts, no pair "
          "task (s2s with space off); `c2s_ranked`: single-cell prompts of v1 ranked words without values, "
          "read causally (Cell2Sentence's kind of sentence, the paper's baseline). Classical baselines: "
          "`spatial2sentence.bench.baselines`. Nothing is tuned on test folds. Datasets "
          "marked 'kept' come from an earlier run (their own run line gives its budget).", ""]
    for name, res in results.items():
        md.append(dataset_markdown(name, res))
        png = out / f"confusion_{name}.png"
        if not res.get("_meta", {}).get("kept"):
            png = confusion_png(name, res, png)
        if png and png.exists():
            md += [f"![{name} confusion]({png.name})", ""]
    (out / "accuracy.md").write_text("\n".join(md))
