"""``s2s annotate``: annotate every image of a folder (in-process or on a Dask cluster), resumably."""

from __future__ import annotations

from pathlib import Path

import click

from . import dtype_option


@click.command("annotate")
@click.argument("input_dir", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created; a rerun continues in it).")
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Model directory (default: the embedded Damond-panel model).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: CUDA when available.")
@dtype_option
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="0: run in this process; N: start a local Dask cluster of N processes (1 thread each).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run on an existing Dask cluster, e.g. tcp://host:8786 (OUT must be on a shared disk).")
@click.option("--overwrite", is_flag=True, help="Redo images whose outputs already exist.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Batches scored at once in an in-process run, one torch thread each (default: every "
                   "available core; Dask workers use 1); the outputs do not depend on it.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Prompts per model forward pass (default: 128).")
@click.option("--allow-partial-panel", is_flag=True,
              help="Annotate images that carry fewer of the model's markers than it needs (unreliable).")
def annotate(input_dir, out_dir, model_dir, device, dtype, workers, scheduler, overwrite, threads, batch_size,
             allow_partial_panel):
    """Annotate every image of the folder INPUT: cell types, probabilities and clinical status.

    \b
    INPUT is one of (first match wins):
      steinbock folder   img/X.tiff + masks/X.tiff + panel.csv
      MCD folder         F.mcd files; acquisition A of F.mcd is image F_AAA (3 digits, as steinbock
                         names it) and its mask MUST be masks/F_AAA.tiff (e.g. masks/slide1_001.tiff);
                         acquisitions without a mask are reported as errors
      image folder       X.tiff (or .tif, .ome.tiff) with its mask X_mask.tiff beside it, else
                         masks/X.tiff; files named *_mask.tiff are masks, never images
    A panel.csv in INPUT names the channels (else OME / acquisition labels are used).

    \b
    OUT receives, per image X:
      cells/X.csv       Object, x, y (um), area, marker means, cell_type, cell_type_probability,
                        p_<type> for every type, per-cell status and p_status_<label>
      types/X.tiff      class-ID mask: 0 background, k = k-th class of the model + 1
      overlays/X.png    cell types over a grey DNA/H3 composite, with a legend
      done/X.json       written last: marks X as complete (status, counts, timings)
    and for the run: summary.csv (per image: cells, counts per type, clinical status and its
    probabilities), cells.h5ad (AnnData of every cell), errors.csv (image, file, reason), run.json
    (model, versions, settings, timings).

    \b
    A rerun skips the images that are complete (unless --overwrite) and rebuilds the run-level
    files; a killed run keeps every finished image and leaves no half-written file. A bad image
    (corrupt, missing or mismatched mask...) goes to errors.csv and the others go on. Exit code 0
    only when every image succeeded, else 1. Input files are never modified.
    """
    from tqdm import tqdm

    from ..batch import run_batch

    if workers and scheduler:
        raise click.UsageError("give --workers or --scheduler, not both")
    bar = None  # created once the images are found: no empty bar before an error

    def progress(rec, done, total):
        nonlocal bar
        if rec is None:
            bar = tqdm(total=total, desc="annotating", unit="image", dynamic_ncols=True)
            return
        bar.update(1)
        if rec["state"] == "error":
            bar.write(f"error: {rec['image']}: {rec['file']}: {rec['reason']}")
        bar.set_postfix_str(f"{rec['image']} {rec['state']}")

    try:
        result = run_batch(input_dir, out_dir, model=model_dir, device=device, dtype=dtype, workers=workers,
                           scheduler=scheduler, overwrite=overwrite, batch_size=batch_size, progress=progress,
                           threads=threads, allow_partial_panel=allow_partial_panel)
    finally:
        if bar is not None:
            bar.close()
    im, t = result.run["images"], result.run["timings"]
    rate = f", {t['images_per_minute']:.1f} images/min, {t['cells_per_second']:.0f} cells/s" \
        if t.get("images_per_minute") else ""
    click.echo(
        f"{im['annotated']} annotated, {im['skipped_already_done']} already done, {im['failed']} failed "
        f"of {im['total']} images ({result.kind} input); {im['cells_in_outputs']} cells in outputs; "
        f"{t['annotate_s']:.1f} s{rate} -> {out_dir}"
    )
    if im["failed"]:
        click.echo(f"errors: {out_dir / 'errors.csv'}", err=True)
    if not result.ok:
        raise SystemExit(1)
