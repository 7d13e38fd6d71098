"""``s2s predict``: cell types and clinical status of one image with a Spatial2Sentence model."""

from __future__ import annotations

import time
from pathlib import Path

import click

from . import dtype_option


@click.command("predict")
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("mask", type=click.Path(dir_okay=False))
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Model directory (default: the embedded Damond-panel model).")
@click.option("--panel", type=click.Path(dir_okay=False), default=None, help="panel.csv naming the channels.")
@click.option("-o", "--out", "out", type=click.Path(dir_okay=False), required=True,
              help="Predictions CSV; the image's clinical status goes beside it as <name>.status.json.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cuda or cpu.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Prompts per model forward pass (default: 128).")
@dtype_option
@click.option("--threads", type=click.IntRange(min=1, max=256), default=None,
              help="Batches scored at once on the CPU, one torch thread each (default: the free cores); "
                   "the results do not depend on it.")
def predict(image, mask, model_dir, panel, out, device, batch_size, dtype, threads):
    """Annotate every cell of IMAGE (segmented by MASK): cell type with one probability column per class
    (p_<type>), per-cell clinical status probabilities, and the image's clinical status."""
    import warnings

    from ..io import check_image_inputs, check_output_path, read_image, read_mask, write_csv_atomic, write_json_atomic

    t0 = time.perf_counter()
    out = Path(out)
    status_path = out.with_name(out.name[: -len(out.suffix)] + ".status.json" if out.suffix else out.name + ".status.json")
    # every input and output checked before torch and the model are loaded (seconds)
    check_image_inputs(image, mask, panel, out)
    check_output_path(status_path, [image, mask, panel])
    from ..model import S2SModel, check_device_name, check_dtype

    check_device_name(device)
    check_dtype(dtype)
    model = S2SModel.from_pretrained(model_dir, device=device, dtype=dtype)
    img = read_image(image, panel=panel)
    m = read_mask(mask, shape=img.shape, image_path=image)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pred = model.predict_image(img, m, batch_size=batch_size, threads=threads)
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    cells = pred.cells.drop(columns=["image"])
    write_csv_atomic(cells, out)
    status = pred.status_of()
    status = {"image": img.name, **{k: v for k, v in status.items() if k != "image"},
              "markers_used": pred.used_markers, "markers_ignored": pred.unknown_markers,
              "model": str(model_dir or "default"), "note": "clinical status aggregated from per-cell "
              "log-probabilities (mean); per-cell values are in the CSV"}
    write_json_atomic(status, status_path)
    counts = cells["cell_type"].value_counts()
    click.echo(f"{img.name}: {len(cells)} cells in {time.perf_counter() - t0:.1f} s -> {out}")
    click.echo("cell types: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    click.echo(f"clinical status: {status.get('status')} (p={status.get('status_probability', float('nan')):.2f}) -> {status_path}")
