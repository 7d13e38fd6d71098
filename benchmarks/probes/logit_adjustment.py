"""Probe (2026-11-30): logit adjustment of default-model candidates trained with class-balanced sampling.

A model trained on cells sampled with weight ~ count(type) ** -b learns the types under the prior
count ** (1 - b); adding tau * b * log(count(type)) to its log-probabilities moves it back toward the
training data's own prior (tau = 1: all the way, the rule that maximises accuracy when the features are
right). Balanced sampling teaches rare types; the adjustment decides how readily they are called,
after training, without retraining. Printed per model and tau: held-out donors' cell-type accuracy,
balanced accuracy and the lowest recall (the 3 donors none of the models saw, every marker), the real
toy crops (4 of the panel's markers, beta / alpha / other), and the held-out check cells with the
same 4 markers.

    python benchmarks/probes/logit_adjustment.py [--taus -1,-0.5,0,0.5,1] NAME=MODEL_DIR:B [...]
    (B: the model's class balance; a negative tau moves further from the data's prior, toward rare types)

Probabilities are computed once per model; the adjustment is applied to them in numpy.
"""
import json
import sys
import warnings

import numpy as np
import pandas as pd

warnings.simplefilter("ignore")
from spatial2sentence.cellset import marker_columns  # noqa: E402
from spatial2sentence.model import DEFAULT_MODEL_DIR, S2SModel  # noqa: E402
from spatial2sentence.tables import load_table  # noqa: E402

HELD_OUT = ["6126", "6414", "6180"]
TAUS = [0.0, 0.25, 0.5, 0.75, 1.0]
args = sys.argv[1:]
if args and args[0] == "--taus":
    TAUS, args = [float(t) for t in args[1].split(",")], args[2:]
cells = pd.read_csv("out/damond_sim_cells.csv.gz")
cells["donor"] = cells["donor"].astype(str)
train_counts = cells.loc[~cells["donor"].isin(HELD_OUT), "cell_type"].value_counts()
held = cells[cells["donor"].isin(HELD_OUT)].reset_index(drop=True)
toy = load_table("../shared/data/damond_pancreas_toy", progress=False)
toy_markers = marker_columns(toy.drop(columns=["cell_type", "stage", "donor"], errors="ignore"))
check = pd.read_csv(DEFAULT_MODEL_DIR / "panel_check.csv.gz")
four = ["CD99", "PIN", "CD8a", "CDH"]


def probs(model, df, markers=None):
    p = model.predict_cells(df, markers=markers, tasks=("type",), threads=1, allow_partial_panel=True).cells
    return p[["p_" + t.replace(" ", "_") for t in model.type_labels]].to_numpy(np.float64)


def scores(labels, p, truth, bias, mapped=False):
    q = np.log(np.clip(p, 1e-12, 1)) + bias
    pred = np.asarray(labels, object)[q.argmax(1)]
    if mapped:
        pred = np.where(np.isin(pred, ["alpha", "beta"]), pred, "other")
    rec = {t: float(np.mean(pred[truth == t] == t)) for t in np.unique(truth)}
    return float(np.mean(pred == truth)), float(np.mean(list(rec.values()))), rec


rows = []
for arg in args:
    name, rest = arg.split("=", 1)
    path, b = rest.rsplit(":", 1)
    b = float(b)
    m = S2SModel.from_pretrained(None if path == "default" else path, device="cpu")
    m.calibration = {}
    logn = np.log(np.array([max(train_counts.get(t, 0), 1) for t in m.type_labels], float))
    ph = probs(m, held.drop(columns=["cell_type", "donor", "stage"]))
    pt = probs(m, toy.drop(columns=["cell_type", "stage", "donor"], errors="ignore"), toy_markers)
    x = check.drop(columns=["cell_type"])
    pc = probs(m, x[[c for c in x.columns if c not in m.markers or c in four]])
    for tau in TAUS:
        bias = tau * b * logn
        a, ba, rec = scores(m.type_labels, ph, held["cell_type"].to_numpy(object), bias)
        low = min(rec, key=rec.get)
        ta, tba, trec = scores(m.type_labels, pt, toy["cell_type"].to_numpy(object), bias, mapped=True)
        ca, cba, crec = scores(m.type_labels, pc, check["cell_type"].to_numpy(object), bias)
        row = {"model": name, "b": b, "tau": tau, "held_acc": round(a, 3), "held_bacc": round(ba, 3),
               "lowest_recall": f"{low} {rec[low]:.2f}", "naiveTc": round(rec.get("naiveTc", np.nan), 2),
               "Tc": round(rec.get("Tc", np.nan), 2), "toy_acc": round(ta, 3), "toy_alpha": round(trec["alpha"], 2),
               "check4_acc": round(ca, 3), "check4_alpha": round(crec.get("alpha", np.nan), 2)}
        rows.append(row)
        print(json.dumps(row), flush=True)
