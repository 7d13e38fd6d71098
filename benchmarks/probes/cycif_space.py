"""Does a cell's neighbourhood carry cell-type information on the scimap CyCIF table?

    python benchmarks/probes/cycif_space.py

Why: on CyCIF's 4 strips s2s (78.1) stays 1.6 points under c2s (79.7), the same network reading one cell,
and every context ablation is within a seed's spread (``benchmarks/results/cycif_abl``). The table's 25
phenotypes come from scimap's gating (``phenotype_workflow.csv``) of each cell's own markers, as scaled by
scimap around the expert's gates (``example_data.h5ad``; 0.5 = the gate). This probe asks the strongest
classical reader we have, gradient boosting, with and without the mean of the 10 nearest cells of the same
strip, on those gate-scaled values, with the benchmark's strips (4 vertical strips of equal cell counts,
leave one out). Those values encode the gates that defined the labels, so they are no fair input for a
method (the benchmark reads the raw means, normalised by us); here they only bound what space can add.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neighbors import NearestNeighbors

from spatial2sentence.bench.datasets import split_into_strips

ROOT = Path(__file__).resolve().parents[2]
K = 10


def main() -> None:
    adata = ad.read_h5ad(ROOT.parent / "shared" / "data" / "scimap_cycif" / "example_data.h5ad")
    own = np.asarray(adata.X, np.float64)
    y = adata.obs["phenotype"].astype(str).to_numpy()
    xy = adata.obs[["X_position", "Y_position"]].to_numpy(np.float64)
    # the benchmark's own strips (one image, x quartiles), by the function that cuts them
    cut = split_into_strips(pd.DataFrame({"image": "cycif", "x": xy[:, 0]}))["image"]
    strip = cut.str.rsplit("strip", n=1).str[1].astype(int).to_numpy() - 1
    around = np.zeros_like(own)
    for s in range(4):  # neighbours within the strip, as the benchmark's images are the strips
        cells = np.flatnonzero(strip == s)
        _, ind = NearestNeighbors(n_neighbors=K + 1).fit(xy[cells]).kneighbors(xy[cells])
        around[cells] = own[cells[ind[:, 1:]]].mean(1)
    for name, X in (("own markers", own), (f"own + mean of {K} nearest", np.hstack([own, around]))):
        acc = []
        for s in range(4):
            tr, te = strip != s, strip == s
            clf = HistGradientBoostingClassifier(random_state=0).fit(X[tr], y[tr])
            acc.append(float((clf.predict(X[te]) == y[te]).mean()))
        print(f"hgb, gate-scaled values, {name}: per strip {np.round(acc, 3).tolist()}, "
              f"mean {100 * np.mean(acc):.1f}")


if __name__ == "__main__":
    main()
