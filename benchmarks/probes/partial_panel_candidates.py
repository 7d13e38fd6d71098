"""Probe (2026-11-30): default-model candidates on the embedded model's held-out check cells
(1,200 cells of 6 semi-synthetic images of the 3 held-out donors), with the full panel and with only the
real toy crops' 4 markers (CD99, PIN, CD8A, CDH1), partial panel allowed.

    python benchmarks/probes/partial_panel_candidates.py [MODEL_DIR ...]   (default: v1, candidates 3 and 4)

Why it is here: candidate 4 found almost no alpha cell on the real toy crops; this tells whether that is
how it reads a 4-marker panel (then simulated cells with the same markers show it too) or how it reads
real intensities. The candidates live in out/ (not committed); printed results:
benchmarks/results/default_model_v2/README.md.
"""
import warnings; warnings.simplefilter("ignore")
import numpy as np, pandas as pd, sys
from spatial2sentence.model import S2SModel, DEFAULT_MODEL_DIR
cells = pd.read_csv(DEFAULT_MODEL_DIR / "panel_check.csv.gz")
toy = ["CD99", "PIN", "CD8a", "CDH"]
given = [(a.rstrip("/").split("_")[-1], a) for a in sys.argv[1:]]
for name, path in given or (("v1", None), ("candidate3", "out/default_model_v2_candidate3"), ("candidate4", "out/default_model_v2_candidate4")):
    m = S2SModel.from_pretrained(path, device="cpu")
    for label, markers in (("full", [c for c in m.markers if c in cells.columns]), ("toy 4", None)):
        X = cells.drop(columns=["cell_type"])
        if markers is None:
            keep = [c for c in X.columns if c in ("CD99", "PIN", "CD8A", "CDH1", "CD8a", "CDH")] 
            X = X[[c for c in X.columns if c not in m.markers or c in keep]]
        p = m.predict_cells(X, tasks=("type",), threads=2, allow_partial_panel=True).cells
        y = cells["cell_type"].to_numpy(); pr = p["cell_type"].to_numpy()
        rec = {t: float(np.mean(pr[y == t] == t)) for t in ("alpha", "beta", "delta", "acinar") if (y == t).any()}
        bal = np.mean([np.mean(pr[y == t] == t) for t in np.unique(y)])
        print(f"{name:11s} {label:6s} acc {np.mean(pr == y):.3f} balanced {bal:.3f}  recall "
              + " ".join(f"{k} {v:.2f}" for k, v in rec.items()), flush=True)
