"""Does the embedded model's auxiliary pair task tell positive from negative partners?

    python benchmarks/probes/pair_task.py

Why: in every v2 training the pair task's validation accuracy stayed near the share of positive pairs,
which reads as "learns nothing". This probe scores the pair prompts of the sample islet
(``sample_data/simulated_islet``, semi-synthetic, 609 cells; every other cell with each of its partners)
with training's own builder (``spatial2sentence.training_data.pair_example``: the partner's line
cut to ``partner_words`` words, values carried) and prints accuracy, the share called similar, the mean
probability of "similar" for positive and negative partners and the ROC AUC of that probability.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
import torch
from sklearn.metrics import roc_auc_score

from spatial2sentence.io.images import read_image
from spatial2sentence.measure import measure_image
from spatial2sentence.model import S2SModel
from spatial2sentence.predict import score_prompts
from spatial2sentence.threads import torch_threads
from spatial2sentence.training_data import pair_example

ISLET = Path(__file__).resolve().parents[2] / "sample_data" / "simulated_islet"


def main() -> None:
    image = read_image(ISLET / "ome" / "R13_islet.ome.tiff")
    _, cells = measure_image(image, tifffile.imread(ISLET / "masks" / "R13_islet.tiff"))
    model = S2SModel.from_pretrained(None, device="cpu")
    cs = model.prepare(cells, source="R13_islet")
    seqs, values, positive = [], [], []
    for i in range(0, len(cs), 2):
        for j, role, *_ in cs.partners(i):
            words, vals = pair_example(cs, i, j, model.sentence)
            seqs.append(model.tokenizer.encode(words))
            values.append(vals)
            positive.append(role == "positive")
    with torch_threads(2), torch.inference_mode():
        p = score_prompts(model.lm, seqs, model.label_ids("pair"), model.tokenizer.pad_id, "cpu", values=values)
    y = np.array(positive)
    similar = p[:, 0]
    print(f"{len(y)} pair prompts, positive share {y.mean():.3f}; accuracy {np.mean((similar > 0.5) == y):.3f}, "
          f"called similar {np.mean(similar > 0.5):.3f}; p(similar) positives {similar[y].mean():.3f}, "
          f"negatives {similar[~y].mean():.3f}; ROC AUC {roc_auc_score(y, similar):.3f}")


if __name__ == "__main__":
    main()
