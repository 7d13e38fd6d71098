"""A tiny, untrained model for tests and benchmarks when the embedded default model is absent.

Its predictions are meaningless (random weights); it exercises the full code path quickly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DAMOND_TYPES = ["acinar", "ductal", "alpha", "beta", "delta", "gamma", "stromal", "endothelial", "Tc", "Th",
                "naiveTc", "B", "macrophage", "neutrophil", "otherimmune", "unknown"]
STAGES = ["Non-diabetic", "Onset", "Long-duration"]


def damond_markers() -> list[str]:
    import pandas as pd

    from spatial2sentence.bench.simulate import PANEL_PATH

    return pd.read_csv(PANEL_PATH)["name"].tolist()


def make_tiny_model(path, seed: int = 0, hidden: int = 32) -> Path:
    """Write a tiny random Llama model for the full Damond panel to ``path`` (idempotent)."""
    path = Path(path)
    if (path / "s2s_config.json").exists():
        return path
    from spatial2sentence.model import S2SModel
    from spatial2sentence.normalize import Normalizer
    from spatial2sentence.settings import ModelSettings

    from spatial2sentence.aliases import canonical_marker

    markers = [canonical_marker(m) for m in damond_markers()]
    rng = np.random.default_rng(seed)
    norm = Normalizer().fit(rng.gamma(2.0, 3.0, size=(500, len(markers))), markers)
    ms = ModelSettings(hidden_size=hidden, num_layers=1, num_heads=2, intermediate_size=2 * hidden,
                       max_positions=128)
    model = S2SModel.create(markers, DAMOND_TYPES, STAGES, norm, model=ms, seed=seed, device="cpu")
    # the domain guard is off for this code-path model (tests read the 5-marker toy crops with it); the
    # guard itself is tested with the default model
    model.info = {"note": "tiny untrained test model", "domain": {"min_marker_fraction": 0.0}}
    model.save_pretrained(path, card="Tiny untrained test model (random weights): for tests only.\n")
    return path


def default_model_available() -> bool:
    from spatial2sentence.model import DEFAULT_MODEL_DIR

    return (DEFAULT_MODEL_DIR / "s2s_config.json").exists()
