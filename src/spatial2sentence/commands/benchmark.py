"""``s2s benchmark``: train and evaluate every method (Spatial2Sentence, Cell2Sentence-style, ablations,
classical baselines) over several seeds, split by donor / image / spatial block, on the built-in real
datasets or on any cells table; writes ``accuracy.json`` and ``accuracy.md``."""

from __future__ import annotations

import sys

import click

from ..errors import S2SInputError


@click.command("benchmark")
@click.option("--datasets", default=None,
              help="Built-in datasets, comma-separated, or 'all' (damond_pancreas_toy, scimap_cycif, "
                   "damond_diabetes_layouts, damond_semisynthetic).")
@click.option("--table", type=click.Path(dir_okay=False, exists=True), default=None, help="Any cells CSV.")
@click.option("--image-col", default=None, help="Image column (absent: one image, split into 4 strips).")
@click.option("--x-col", default="x", show_default=True)
@click.option("--y-col", default="y", show_default=True)
@click.option("--object-col", default=None, help="Cell id column (default: row number).")
@click.option("--markers", default=None, help="Comma-separated marker columns (default: numeric columns not named).")
@click.option("--phenotype-col", default=None, help="Phenotype column for tables without intensities.")
@click.option("--label-col", default=None, help="Cell-type label column (benchmarks cell type).")
@click.option("--clinical-col", default=None, help="Clinical status column (benchmarks clinical status per image).")
@click.option("--group-col", default=None, help="Donor / patient column: split by it (else by image).")
@click.option("--seeds", type=int, default=None, help="Seeds (default 3).")
@click.option("--steps", type=int, default=None, help="Training steps per language model.")
@click.option("--batch-size", type=int, default=None, help="Prompts per training step.")
@click.option("--max-train-cells", type=int, default=None, help="Training images sampled up to this many cells.")
@click.option("--test-cells-per-image", type=int, default=None,
              help="Evaluate this many cells per test image (0: all; default: all, 50 for the large built-ins).")
@click.option("--methods", default=None, help="Comma-separated subset of methods (default: all).")
@click.option("--threads", type=int, default=None, help="torch CPU threads per worker (default 1).")
@click.option("--workers", type=int, default=None, help="Processes running folds in parallel (default 2).")
@click.option("--budget", "budget_items", multiple=True, metavar="KEY=VALUE",
              help="Set any training-budget field, e.g. --budget refit=true --budget anchor_alone=0.3 "
                   "(repeatable; printed with the results).")
@click.option("--data-root", default="../shared/data", show_default=True, help="Folder of the built-in datasets.")
@click.option("--sim-cells", default="out/damond_sim_cells.csv.gz", show_default=True,
              help="Measured semi-synthetic cells table; when missing, a sample of images is simulated.")
@click.option("--out", "out", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--merge", "merge", multiple=True, type=click.Path(file_okay=False, exists=True),
              help="Folder of an earlier run: the methods this run does not do are taken from its accuracy.json "
                   "for the same dataset when its budget is the same (else skipped, saying why). --out's own "
                   "accuracy.json is always read this way.")
def benchmark(datasets, table, image_col, x_col, y_col, object_col, markers, phenotype_col, label_col,
              clinical_col, group_col, seeds, steps, batch_size, max_train_cells, test_cells_per_image, methods,
              threads, workers, budget_items, data_root, sim_cells, out, merge):
    """Accuracy benchmark: every method, several seeds, never split by random cells."""
    # imported when the command runs, not when the CLI starts: the benchmark loads torch and sklearn
    import pandas as pd

    from ..bench.datasets import BUILTIN, standard_table
    from ..bench.methods import ALL_METHODS, Budget
    from ..bench.runner import run_benchmark

    if bool(datasets) == bool(table):
        raise S2SInputError(None, "give either --datasets or --table")
    if table and merge:
        raise S2SInputError(None, "--merge takes methods of built-in datasets from earlier runs; not with --table")
    budget = Budget()
    for k, v in (("seeds", seeds), ("steps", steps), ("batch_size", batch_size), ("max_train_cells", max_train_cells),
                 ("test_cells_per_image", test_cells_per_image), ("threads", threads), ("workers", workers)):
        if v is not None:
            setattr(budget, k, v)
    for item in budget_items:
        key, value = parse_budget_item(item, budget)
        setattr(budget, key, value)
    meth = ALL_METHODS
    if methods:
        meth = tuple(m.strip() for m in methods.split(",") if m.strip())
        bad = [m for m in meth if m not in ALL_METHODS]
        if bad:
            raise S2SInputError(None, f"unknown methods {bad} (known: {', '.join(ALL_METHODS)})")
    command = "s2s " + " ".join(sys.argv[1:]) if sys.argv[1:2] == ["benchmark"] else "s2s benchmark"
    if table:
        df = pd.read_csv(table)
        mk = [m.strip() for m in markers.split(",")] if markers else None
        ds = standard_table(df, image_col, x_col, y_col, mk, phenotype_col, label_col, clinical_col, group_col,
                            object_col, name=str(table).rsplit("/", 1)[-1])
        run_benchmark([ds], out, budget, meth, command=command, log=click.echo)
    else:
        names = list(BUILTIN) if datasets.strip() == "all" else [d.strip() for d in datasets.split(",")]
        bad = [d for d in names if d not in BUILTIN]
        if bad:
            raise S2SInputError(None, f"unknown datasets {bad} (built in: {', '.join(BUILTIN)})")
        run_benchmark(names, out, budget, meth, data_root=data_root, sim_cells=sim_cells, command=command,
                      log=click.echo, merge=merge)


def parse_budget_item(item: str, budget) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--budget``: a Budget field and its value, converted to the field's type; a clear
    error for an unknown key or a value of the wrong kind."""
    from dataclasses import fields

    key, sep, raw = item.partition("=")
    known = [f.name for f in fields(budget)]
    if not sep or key.strip() not in known:
        raise S2SInputError(None, f"--budget {item!r}: expected KEY=VALUE with KEY one of {', '.join(known)}")
    key, raw = key.strip(), raw.strip()
    current = getattr(budget, key)
    try:
        if isinstance(current, bool):
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return key, raw.lower() in ("true", "1", "yes")
        if current is None or isinstance(current, int):
            return key, None if raw.lower() == "none" else int(raw)
        if isinstance(current, float):
            return key, float(raw)
        return key, raw
    except ValueError:
        raise S2SInputError(None, f"--budget {item!r}: {raw!r} is not a valid {type(current).__name__} "
                                  f"for {key}") from None
