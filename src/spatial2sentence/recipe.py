"""Training recipes: a JSON file holding every setting of a model, its data (with row filters, a
measurement cache and a ``simulate`` block that renders the data first when it is missing) and the
held-out evaluations written into its model card. ``s2s train --config`` reads one
(``configs/default_model.json`` is the embedded model's). Relative paths in a recipe are relative to
the current directory (run recipes from the repository root).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pandas as pd

from .bench.simulate import simulate_dataset
from .errors import S2SInputError
from .evaluation import evaluate_folder
from .settings import ModelSettings, PairSettings, PromptSettings, SentenceSettings, TrainSettings
from .tables import filter_rows, load_table
from .training import model_card

SETTING_BLOCKS = ("train", "sentence", "pairs", "prompt", "model")
# what a data entry may be: a folder (steinbock + labels.csv) or a cells table
TABLE_SUFFIXES = (".csv", ".csv.gz")


def read_recipe(path: str | Path) -> dict:
    """The recipe in ``path``, its shape checked (one message naming the file per problem)."""
    try:
        cfg = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise S2SInputError(path, f"not a JSON recipe ({str(err).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise S2SInputError(path, "a recipe is a JSON object (settings, data, evaluations)")
    for key in SETTING_BLOCKS:
        if key in cfg and not isinstance(cfg[key], dict):
            raise S2SInputError(path, f"'{key}' must be a JSON object of settings")
    return cfg


def recipe_settings(cfg: dict, source=None) -> dict:
    """The settings of a recipe as ``train``'s keyword arguments (``train_settings``, ``sentence``,
    ``pairs``, ``model_settings``, ``prompt``); an unknown or mistyped setting is refused."""
    try:
        return dict(train_settings=TrainSettings.from_dict(cfg.get("train"), strict=True),
                    sentence=SentenceSettings.from_dict(cfg.get("sentence"), strict=True),
                    pairs=PairSettings.from_dict(cfg.get("pairs"), strict=True),
                    model_settings=ModelSettings.from_dict(cfg.get("model"), strict=True),
                    prompt=PromptSettings.from_dict(cfg.get("prompt"), strict=True))
    except TypeError as err:
        raise S2SInputError(source, f"bad settings in the recipe ({err})") from None


def data_entries(cfg: dict, paths: tuple[str, ...] = ()) -> list[dict]:
    """The data entries: ``paths`` when given (they replace the recipe's), else the recipe's ``data``."""
    if paths:
        return [{"path": p} for p in paths]
    return [e if isinstance(e, dict) else {"path": e} for e in cfg.get("data", [])]


def check_data_entry(entry: dict) -> None:
    """Refuse a missing path (unless the entry renders it) or a file that is not a cells table, before
    anything is read."""
    path = Path(entry.get("path", ""))
    if not path.exists():
        if "simulate" in entry:
            return  # rendered first
        raise S2SInputError(path, "training data not found")
    if path.is_file() and not path.name.lower().endswith(TABLE_SUFFIXES):
        raise S2SInputError(path, "training data must be a steinbock folder with labels.csv or a cells "
                                  "table (.csv, .csv.gz); an image alone has no labels")


def load_data_entry(entry: dict, seed: int, log: Callable[[str], None] = print) -> pd.DataFrame:
    """The cells of one data entry: rendered first when it has a ``simulate`` block and is missing,
    measured (or read from its ``cache``), then its ``include`` / ``exclude`` filters, ``drop_columns``
    and ``rename``."""
    path = Path(entry["path"])
    if not path.exists() and "simulate" in entry:
        sim = dict(entry["simulate"])
        log(f"simulating {path} (semi-synthetic) ...")
        simulate_dataset(sim.pop("layouts"), path, seed=sim.pop("seed", seed), **sim)
    if not path.exists():
        raise S2SInputError(path, "training data not found")
    df = load_table(path, cache=entry.get("cache"))
    df = filter_rows(df, entry.get("include"), entry.get("exclude"))
    df = df.drop(columns=[c for c in entry.get("drop_columns", []) if c in df.columns])
    return df.rename(columns=entry["rename"]) if entry.get("rename") else df


def recipe_info(cfg: dict, entries: list[dict]) -> dict:
    """What the model card says about the model and its data."""
    info = {k: cfg[k] for k in ("name", "description", "notes") if k in cfg}
    info["data"] = [{k: v for k, v in e.items() if k in ("path", "include", "exclude", "description")}
                    for e in entries]
    return info


def evaluate_recipe(model, evaluations: list[dict], out: str | Path, log: Callable[[str], None] = print) -> dict:
    """The recipe's held-out evaluations, stored in the model's info and card (the model is saved
    again to ``out``); returns them by name."""
    results = {}
    for ev in evaluations:
        log(f"evaluating {ev['name']} ...")
        r = evaluate_folder(model, ev["path"], include=ev.get("include"), type_map=ev.get("type_map"))
        if ev.get("description"):
            r = {"data": ev["description"], **r}
        results[ev["name"]] = r
        log(json.dumps(r, indent=1, default=str))
    if results:
        model.info["evaluation"] = results
        model.save_pretrained(out, card=model_card(model))
    return results
