"""``s2s simulate``: render semi-synthetic IMC images from real tissue layouts."""

from __future__ import annotations

import time

import click

from ..errors import S2SInputError


@click.command("simulate")
@click.option("--layouts", "layouts", required=True, type=click.Path(dir_okay=False),
              help="Layout table (Damond cells.csv.gz: imageID, x, y, cellType, case, stage).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output steinbock folder (img/, ome/, masks/, panel.csv, images.csv, labels.csv).")
@click.option("--images", default=None, help="Comma-separated image ids to render (default: all).")
@click.option("--n-images", type=int, default=None, help="Render the first N images (sorted ids).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--workers", type=int, default=1, show_default=True,
              help="Worker processes (the output does not depend on it).")
def simulate(layouts, out_dir, images, n_images, seed, workers):
    """Render semi-synthetic IMC images, masks and labels from real cell layouts.

    Cell positions, types, donors and stages come from the layout table; marker expression, pixel
    noise and optical spill are simulated. Same seed, same bytes.
    """
    # imported when the command runs, not when the CLI starts (scipy, tifffile)
    from ..bench.simulate import simulate_dataset

    if images is not None and n_images is not None:
        raise S2SInputError(None, "give --images or --n-images, not both")
    if workers < 1:
        raise S2SInputError(None, f"--workers must be >= 1 (got {workers})")
    sel = images.split(",") if images is not None else None
    t0 = time.perf_counter()
    labels = simulate_dataset(layouts, out_dir, images=sel, n_images=n_images, seed=seed,
                              workers=workers)
    n_img = labels["image"].nunique()
    click.echo(f"simulated {n_img} images, {len(labels)} cells -> {out_dir} "
               f"({time.perf_counter() - t0:.1f} s; semi-synthetic)")
