"""``s2s train``: train a Spatial2Sentence model on a steinbock folder (+ labels.csv) or a cells CSV.

A JSON recipe (``--config``) holds every setting, the data (with optional row filters, a measurement
cache and a ``simulate`` block that renders the data first when it is missing) and held-out evaluations
written into the model card. Options given on the command line override the recipe. Relative paths in a
recipe are relative to the current directory (run recipes from the repository root).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from .predict import table_options


def _data_entries(cfg: dict, data: tuple[str, ...]) -> list[dict]:
    if data:
        return [{"path": d} for d in data]
    entries = cfg.get("data", [])
    return [e if isinstance(e, dict) else {"path": e} for e in entries]


def _read_recipe(config) -> dict:
    from ..errors import S2SInputError

    try:
        cfg = json.loads(Path(config).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise S2SInputError(config, f"not a JSON recipe ({str(err).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise S2SInputError(config, "a recipe is a JSON object (settings, data, evaluations)")
    for key in ("train", "sentence", "pairs", "prompt", "model"):
        if key in cfg and not isinstance(cfg[key], dict):
            raise S2SInputError(config, f"'{key}' must be a JSON object of settings")
    return cfg


# what --data accepts: a folder (steinbock + labels.csv) or a cells table
_TABLE_SUFFIXES = (".csv", ".csv.gz")


def _check_data_path(entry: dict) -> None:
    from ..errors import S2SInputError

    path = Path(entry.get("path", ""))
    if not path.exists():
        if "simulate" in entry:
            return  # rendered first
        raise S2SInputError(path, "training data not found")
    if path.is_file() and not path.name.lower().endswith(_TABLE_SUFFIXES):
        raise S2SInputError(path, "training data must be a steinbock folder with labels.csv or a cells "
                                  "table (.csv, .csv.gz); an image alone has no labels")


def _load(entry: dict, seed: int):
    from ..errors import S2SInputError
    from ..tables import filter_rows, load_table

    path = Path(entry["path"])
    if not path.exists() and "simulate" in entry:
        from ..bench.simulate import simulate_dataset

        sim = dict(entry["simulate"])
        click.echo(f"simulating {path} (semi-synthetic) ...")
        simulate_dataset(sim.pop("layouts"), path, seed=sim.pop("seed", seed), **sim)
    if not path.exists():
        raise S2SInputError(path, "training data not found")
    df = load_table(path, cache=entry.get("cache"))
    df = filter_rows(df, entry.get("include"), entry.get("exclude"))
    for col in entry.get("drop_columns", []):
        if col in df.columns:
            df = df.drop(columns=col)
    if entry.get("rename"):
        df = df.rename(columns=entry["rename"])
    return df


@click.command("train")
@click.option("--config", "config", type=click.Path(dir_okay=False, exists=True), default=None,
              help="JSON recipe (settings, data, evaluations).")
@click.option("--data", "data", multiple=True, help="Steinbock folder with labels.csv, or a cells CSV (repeatable).")
@click.option("--out", "out", type=click.Path(file_okay=False), default=None, help="Model directory to write.")
@click.option("--steps", type=click.IntRange(min=1, max=10_000_000), default=None,
              help="Training steps (overrides the recipe).")
@click.option("--seed", type=int, default=None, help="Random seed (overrides the recipe).")
@click.option("--format", "fmt", type=click.Choice(["multi", "single"]), default=None,
              help="multi: Spatial2Sentence prompts; single: one cell per prompt (Cell2Sentence).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cuda or cpu.")
@click.option("--threads", type=click.IntRange(min=1, max=256), default=None, help="torch threads on CPU.")
@click.option("--resume", is_flag=True, help="Continue from <out>/checkpoint/state.pt.")
@click.option("--no-eval", is_flag=True, help="Skip the recipe's held-out evaluations.")
@click.option("--evaluate-only", is_flag=True,
              help="Do not train: run the recipe's held-out evaluations on the model already in --out and "
                   "rewrite its card.")
@table_options
@click.option("--label-col", default=None, help="Cell-type column of the --table (the classes to learn).")
@click.option("--status-col", default=None, help="Clinical-status column of the --table (per image), optional.")
def train(config, data, out, steps, seed, fmt, device, threads, resume, no_eval, evaluate_only, table, x_col, y_col,
          object_col, image_col, markers, label_col, status_col):
    """Train a model (validation split by image, early stopping, resumable) and write MODEL_DIR."""
    from ..errors import S2SInputError
    from ..settings import ModelSettings, PairSettings, PromptSettings, SentenceSettings, TrainSettings
    from ..training import model_card, train as run_train

    from ..io import check_output_path
    from ..model import resolve_device

    cfg = _read_recipe(config) if config else {}
    out = out or cfg.get("out")
    if not out:
        raise S2SInputError(None, "give --out (or 'out' in the recipe)")
    check_output_path(out, folder=True)
    device = str(resolve_device(device))  # the one device check, before any data is read
    if evaluate_only:
        from ..model import S2SModel

        model = S2SModel.from_pretrained(out, device=device)
        _evaluate(model, cfg.get("evaluate", []), out, model_card)
        return
    try:
        ts = TrainSettings.from_dict(cfg.get("train"), strict=True)
        settings = dict(sentence=SentenceSettings.from_dict(cfg.get("sentence"), strict=True),
                        pairs=PairSettings.from_dict(cfg.get("pairs"), strict=True),
                        model_settings=ModelSettings.from_dict(cfg.get("model"), strict=True))
        prompt = PromptSettings.from_dict(cfg.get("prompt"), strict=True)
    except TypeError as err:
        raise S2SInputError(config, f"bad settings in the recipe ({err})") from None
    if steps is not None:
        ts.steps = steps
    if seed is not None:
        ts.seed = seed
    if threads is not None:
        ts.num_threads = threads
    if fmt:
        prompt.format = fmt
    if table is not None:
        from ..tables import read_cells_table

        if data:
            raise click.UsageError("give --data or --table, not both")
        if not label_col and not status_col:
            raise click.UsageError("--table needs --label-col (cell types) and/or --status-col")
        t0 = time.perf_counter()
        cells = read_cells_table(table, x_col, y_col, object_col, image_col,
                                 markers.split(",") if markers else None, label_col, status_col)
        if cells["image"].nunique() < 5 and "val_split" not in (cfg.get("train") or {}):
            # few images: validation (early stopping) holds out a spatial block of each image rather
            # than whole images (which would take a third or half of the training cells)
            ts.val_split = "blocks"
        tables = [cells]
        entries = [{"path": str(table), "description": f"cells table {Path(table).name}, labels from "
                                                      f"{label_col or status_col}"}]
    else:
        entries = _data_entries(cfg, data)
    if not entries:
        raise S2SInputError(None, "no training data: give --data or a recipe with 'data'")
    for e in entries if table is None else []:
        _check_data_path(e)
    t0 = time.perf_counter()
    if table is None:
        tables = [_load(e, ts.seed) for e in entries]
    click.echo(f"training data: {sum(len(t) for t in tables)} cells from {len(tables)} table(s) "
               f"({time.perf_counter() - t0:.1f} s to load)")
    info = {k: cfg[k] for k in ("name", "description", "notes") if k in cfg}
    info["data"] = [
        {k: v for k, v in e.items() if k in ("path", "include", "exclude", "description")} for e in entries
    ]
    if config:
        info["recipe"] = str(config)
    import sys

    info["command"] = "s2s " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else "s2s train"
    res = run_train(
        tables, out,
        prompt=prompt, train_settings=ts, **settings,
        type_labels=cfg.get("type_labels"), status_labels=cfg.get("status_labels"),
        resume=resume, device=device, info=info,
    )
    model = res.model
    click.echo(f"trained {res.steps_done} steps in {res.seconds:.0f} s; best validation: "
               + ", ".join(f"{k}={v:.3f}" for k, v in res.best.items() if k.endswith("acc") or k == "loss"))
    _evaluate(model, [] if no_eval else cfg.get("evaluate", []), out, model_card)
    click.echo(f"model written to {out}")


def _evaluate(model, evals: list[dict], out, model_card) -> None:
    """The recipe's held-out evaluations, stored in the model's info and card."""
    if not evals:
        return
    from ..evaluation import evaluate_folder

    results = {}
    for ev in evals:
        click.echo(f"evaluating {ev['name']} ...")
        r = evaluate_folder(model, ev["path"], include=ev.get("include"), type_map=ev.get("type_map"))
        if ev.get("description"):
            r = {"data": ev["description"], **r}
        results[ev["name"]] = r
        click.echo(json.dumps(r, indent=1, default=str))
    model.info["evaluation"] = results
    model.save_pretrained(out, card=model_card(model))
