"""``s2s predict``: cell types and clinical status of one image (or a cells table) with a
Spatial2Sentence model."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click

from . import dtype_option

TABLE_HELP = "Cells table (.csv, .csv.gz or AnnData .h5ad) instead of IMAGE MASK."


def table_options(fn):
    """Column options of a cells table (shared by predict and train)."""
    for opt in reversed([
        click.option("--table", type=click.Path(dir_okay=False), default=None, help=TABLE_HELP),
        click.option("--x-col", default=None, help="x column (um); default: x, X_centroid, X_position, ..."),
        click.option("--y-col", default=None, help="y column (um); default: y, Y_centroid, Y_position, ..."),
        click.option("--object-col", default=None, help="Cell id column; default: Object, CellID, ..."),
        click.option("--image-col", default=None, help="Image (sample) column; default: image, ImageNumber..."),
        click.option("--markers", default=None,
                     help="Comma-separated marker columns (default: every numeric column that is not an id, "
                          "position, label or shape; for .h5ad the var_names)."),
    ]):
        fn = opt(fn)
    return fn


def _status_path(out: Path) -> Path:
    return out.with_name(out.name[: -len(out.suffix)] + ".status.json" if out.suffix else out.name + ".status.json")


@click.command("predict")
@click.argument("image", type=click.Path(dir_okay=False), required=False)
@click.argument("mask", type=click.Path(dir_okay=False), required=False)
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Model directory (default: the embedded Damond-panel model).")
@click.option("--panel", type=click.Path(dir_okay=False), default=None, help="panel.csv naming the channels.")
@table_options
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="Predictions CSV (or .h5ad for an .h5ad table: the input with prediction columns in obs); "
                   "the clinical status per image goes beside it as <name>.status.json.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cuda or cpu.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Prompts per model forward pass (default: 128).")
@dtype_option
@click.option("--allow-partial-panel", is_flag=True,
              help="Predict even when the input carries fewer of the model's markers than it needs "
                   "(the calls are then unreliable; see the README, 'Use your own panel').")
@click.option("--threads", type=click.IntRange(min=1, max=256), default=None,
              help="Batches scored at once on the CPU, one torch thread each (default: every available core); "
                   "the results do not depend on it.")
def predict(image, mask, model_dir, panel, table, x_col, y_col, object_col, image_col, markers, out, device,
            batch_size, dtype, allow_partial_panel, threads):
    """Annotate every cell of IMAGE (segmented by MASK), or of a cells table (--table): cell type with one
    probability column per class (p_<type>), per-cell clinical status probabilities, and the clinical
    status of each image."""
    t0 = time.perf_counter()
    out = Path(out)
    status_path = _status_path(out)
    _check_files(image, mask, panel, table, out, status_path)
    # the core is imported once the inputs are checked: a missing file is reported at once
    # (benchmarks/cold_start.py), importing the model and its dependencies takes seconds
    from ..annotate import annotate_image, load_model
    from ..io import read_image, read_mask, write_csv_atomic
    from ..model import check_device_name, check_dtype
    from ..tables import read_cells_table

    check_device_name(device)
    check_dtype(dtype)
    if table is not None:
        cells = read_cells_table(table, x_col, y_col, object_col, image_col,
                                 markers.split(",") if markers else None)
        names = [c for c in cells.columns if c not in ("image", "Object", "x", "y")]
        name = Path(table).name
    model = load_model(model_dir, device, dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if table is not None:
            pred = model.predict_cells(cells, markers=names, batch_size=batch_size, threads=threads,
                                       source=name, allow_partial_panel=allow_partial_panel)
        else:
            img = read_image(image, panel=panel)
            m = read_mask(mask, shape=img.shape, image_path=image)
            name = img.name
            pred = annotate_image(model, img, m, batch_size=batch_size, threads=threads,
                                  allow_partial_panel=allow_partial_panel).predictions
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    if table is not None and out.name.lower().endswith(".h5ad"):
        from ..anndata_io import write_predictions_h5ad

        write_predictions_h5ad(table, pred, out, model)
        cells_out = pred.cells
    else:
        cells_out = pred.cells.drop(columns=["image"]) if table is None else pred.cells
        write_csv_atomic(cells_out, out)
    _write_status(pred, name if table is None else None, model_dir, status_path)
    click.echo(f"{name}: {len(cells_out)} cells in {time.perf_counter() - t0:.1f} s -> {out}")
    _report(pred, cells_out, status_path)


def _check_files(image, mask, panel, table, out: Path, status_path: Path) -> None:
    """Every input and output checked before torch and the model are loaded (seconds)."""
    from ..errors import S2SInputError
    from ..io import check_image_inputs, check_input_file, check_output_path

    if table is not None:
        if image is not None or mask is not None:
            raise click.UsageError("give IMAGE MASK or --table, not both")
        check_input_file(table)
        check_output_path(out, [table])
        if out.name.lower().endswith(".h5ad") and not str(table).lower().endswith(".h5ad"):
            raise S2SInputError(out, "an .h5ad output needs an .h5ad --table (write a .csv instead)")
    elif image is None or mask is None:
        raise click.UsageError("give IMAGE and MASK, or --table CELLS")
    else:
        check_image_inputs(image, mask, panel, out)
    check_output_path(status_path, [image, mask, panel, table])


def _write_status(pred, image_name: str | None, model_dir, status_path: Path) -> None:
    """``<out>.status.json``: the clinical status of each image (one image: at the top level)."""
    from ..io import write_json_atomic

    per_image = pred.image_status.to_dict(orient="records")
    status = {"images": per_image, "markers_used": pred.used_markers, "markers_ignored": pred.unknown_markers,
              "panel_coverage": pred.coverage.to_dict() if pred.coverage else None,
              "model": str(model_dir or "default"), "note": "clinical status aggregated from per-cell "
              "log-probabilities (mean); per-cell values are in the predictions; 'status_confident' is false "
              "where the probability does not beat chance by the model's margin"}
    if image_name is not None and per_image:
        status = {"image": image_name, **{k: v for k, v in per_image[0].items() if k != "image"}, **status}
    write_json_atomic(status, status_path)


def _report(pred, cells_out, status_path: Path) -> None:
    counts = cells_out["cell_type"].value_counts()
    click.echo("cell types: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if pred.coverage is not None:
        click.echo(f"panel: {pred.coverage.summary()}" + ("" if pred.coverage.ok else " (PARTIAL: allowed)"))
    for row in pred.image_status.to_dict(orient="records")[:20]:
        call = row.get("status") if row.get("status_confident") else f"uncertain (most likely {row.get('status')})"
        click.echo(f"clinical status of {row['image']}: {call} (p={row.get('status_probability', float('nan')):.2f})")
    click.echo(f"clinical status -> {status_path}")
