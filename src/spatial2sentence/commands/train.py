"""``s2s train``: train a Spatial2Sentence model on a steinbock folder (+ labels.csv) or a cells CSV,
by a JSON recipe (:mod:`spatial2sentence.recipe`, ``--config``) and/or options; options given on the
command line override the recipe."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from .predict import table_options


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
    # the library is imported once the command runs: `s2s --help` must not wait for torch and pandas
    from ..errors import S2SInputError
    from ..io import check_output_path
    from ..model import S2SModel, resolve_device
    from ..recipe import (check_data_entry, data_entries, evaluate_recipe, load_data_entry, read_recipe,
                          recipe_info, recipe_settings)
    from ..tables import read_cells_table
    from ..training import train as run_train

    cfg = read_recipe(config) if config else {}
    out = out or cfg.get("out")
    if not out:
        raise S2SInputError(None, "give --out (or 'out' in the recipe)")
    check_output_path(out, folder=True)
    device = str(resolve_device(device))  # the one device check, before any data is read
    if evaluate_only:
        evaluate_recipe(S2SModel.from_pretrained(out, device=device), cfg.get("evaluate", []), out, click.echo)
        return
    settings = recipe_settings(cfg, config)
    ts, prompt = settings["train_settings"], settings["prompt"]
    for name, value in (("steps", steps), ("seed", seed), ("num_threads", threads)):
        if value is not None:
            setattr(ts, name, value)
    if fmt:
        prompt.format = fmt
    t0 = time.perf_counter()
    if table is not None:
        if data:
            raise click.UsageError("give --data or --table, not both")
        if not label_col and not status_col:
            raise click.UsageError("--table needs --label-col (cell types) and/or --status-col")
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
        entries = data_entries(cfg, data)
        if not entries:
            raise S2SInputError(None, "no training data: give --data or a recipe with 'data'")
        for e in entries:
            check_data_entry(e)
        tables = [load_data_entry(e, ts.seed, click.echo) for e in entries]
    click.echo(f"training data: {sum(len(t) for t in tables)} cells from {len(tables)} table(s) "
               f"({time.perf_counter() - t0:.1f} s to load)")
    info = recipe_info(cfg, entries)
    if config:
        info["recipe"] = str(config)
    info["command"] = "s2s " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["train"] else "s2s train"
    res = run_train(tables, out, **settings, type_labels=cfg.get("type_labels"),
                    status_labels=cfg.get("status_labels"), resume=resume, device=device, info=info)
    click.echo(f"trained {res.steps_done} steps in {res.seconds:.0f} s; best validation: "
               + ", ".join(f"{k}={v:.3f}" for k, v in res.best.items() if k.endswith("acc") or k == "loss"))
    evaluate_recipe(res.model, [] if no_eval else cfg.get("evaluate", []), out, click.echo)
    click.echo(f"model written to {out}")
