"""One-fold probe of the language model's settings on the real CyCIF strips (fast, for choosing settings).

Trains one language model (``s2s`` or ``c2s`` of ``s2s benchmark``, with the benchmark's Budget) on
three of the four CyCIF strips and reads the fourth, printing the training-cell and held-out accuracy
(and macro-F1), the steps run and the validation history. It is NOT the benchmark (one fold, one seed):
it says which way a setting moves a number, the benchmark says where a method stands.

    python benchmarks/fold_probe.py NAME '{"encoding": "values", "class_balance": 0.0}'

Keys of the JSON: any ``Budget`` field; ``method`` (default s2s); ``fold`` (held-out strip, default 3);
``s_*``, ``pr_*``, ``ts_*``, ``ms_*``: a SentenceSettings / PromptSettings / TrainSettings / ModelSettings
field set after the Budget's. Appends one JSON line to benchmarks/results/fold_probe/probes.jsonl.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from spatial2sentence.bench import runner as Bm
from spatial2sentence.training import train

ROOT = Path(__file__).resolve().parent


def main() -> None:
    warnings.simplefilter("ignore")
    name = sys.argv[1]
    kw = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
    given = dict(kw)
    ds = Bm.load_builtin("scimap_cycif", Path("../shared/data"))
    df = ds.df
    imgs = sorted(df["image"].unique())
    test_img = imgs[int(kw.pop("fold", 3))]
    tr = df[df["image"] != test_img].reset_index(drop=True)
    te = df[df["image"] == test_img].reset_index(drop=True)
    budget = Bm.Budget(**{k: v for k, v in kw.items() if k in Bm.Budget.__dataclass_fields__})
    s, p, pr, ms, ts = Bm.lm_settings(kw.get("method", "s2s"), budget, 0)
    ts = replace(ts, val_split=Bm.val_rule(tr), **{k[3:]: v for k, v in kw.items() if k.startswith("ts_")})
    ms = replace(ms, **{k[3:]: v for k, v in kw.items() if k.startswith("ms_")})
    s = replace(s, **{k[2:]: v for k, v in kw.items() if k.startswith("s_")})
    pr = replace(pr, **{k[3:]: v for k, v in kw.items() if k.startswith("pr_")})
    t0 = time.time()
    res = train(Bm.lm_table(tr, ds, True), Path("out") / f"fold_probe_{name}", sentence=s, pairs=p, prompt=pr,
                model_settings=ms, train_settings=ts, progress_bar=False, device="cpu", log=lambda *a, **k: None)
    seconds = time.time() - t0

    def type_probs(d):
        return Bm.lm_predict(res.model, Bm.lm_table(d, ds, False), np.arange(len(d)), ["type"])["type"]

    def metrics(d, probs):
        pred = np.asarray(res.model.type_labels, dtype=object)[probs.argmax(1)]
        return [round(x, 4) for x in Bm.accuracy_and_macro_f1(d["cell_type"].astype(str), pred)]

    def scores(d):
        return metrics(d, type_probs(d))

    # the anchor-alone view at prediction (the single-cell prompt the model also trained on), alone and
    # blended with the full prompt (mean of the log-probabilities)
    alone = {}
    if ts.anchor_alone > 0 and pr.format == "multi":
        full_p = type_probs(te)
        res.model.prompt = replace(pr, format="single")
        alone_p = type_probs(te)
        res.model.prompt = pr
        blend = np.exp((np.log(np.clip(full_p, 1e-9, 1)) + np.log(np.clip(alone_p, 1e-9, 1))) / 2)
        alone = {"test_alone_acc_f1": metrics(te, alone_p), "test_blend_acc_f1": metrics(te, blend)}

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    row = {"name": name, "given": given, "commit": commit, "test_strip": str(test_img),
           "train_acc_f1": scores(tr), "test_acc_f1": scores(te), "steps": res.steps_done,
           **alone, "best_step": (res.best or {}).get("step"), "seconds": round(seconds),
           "val_type_acc": [(h["step"], round(h.get("type_acc", 0), 3)) for h in res.history],
           "settings": {"sentence": asdict(s), "prompt": {**asdict(pr)}, "train": asdict(ts), "model": asdict(ms)}}
    print(json.dumps({k: v for k, v in row.items() if k not in ("settings", "val_type_acc")}), flush=True)
    out = ROOT / "results" / "fold_probe" / "probes.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(row, default=str) + "\n")


if __name__ == "__main__":
    main()
