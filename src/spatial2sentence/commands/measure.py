"""``s2s measure``: per-cell marker means, centroids and areas."""

from __future__ import annotations

import warnings
from pathlib import Path

import click


@click.command()
@click.argument("image", type=click.Path(path_type=Path))
@click.argument("mask", required=False, type=click.Path(path_type=Path))
@click.option("--panel", type=click.Path(path_type=Path), help="steinbock panel.csv naming the channels.")
@click.option("-o", "--out", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="Output CSV (IMAGE MASK) or output folder (STEINBOCK_DIR).")
@click.option("--pixel-size", "pixel_size_um", type=float, default=None,
              help="Pixel size in um (default: from OME metadata, else 1.0 as for IMC).")
@click.option("--axes", type=click.Choice(["CYX", "YXC"], case_sensitive=False), default=None,
              help="Axis order of a 3-D TIFF whose channel axis is ambiguous.")
@click.option("--mask-dir", default="masks", show_default=True,
              help="Mask subfolder of a steinbock folder.")
def measure(image, mask, panel, output, pixel_size_um, axes, mask_dir):
    """Measure every cell: Object, x, y (um), area and the mean of each marker.

    \b
    s2s measure IMAGE MASK [--panel panel.csv] -o cells.csv
    s2s measure STEINBOCK_DIR -o OUT_DIR        (one CSV per image)

    IMAGE is a multi-channel TIFF, an OME-TIFF or an IMC .txt file; MASK a 2-D integer TIFF (0 =
    background). A steinbock folder holds img/, masks/ and panel.csv. Bad input stops with a one-line
    message naming the file and exit code 1, and writes nothing; in a steinbock folder a bad image is
    reported and the others are measured (exit code 1 if any failed).
    """
    from ..errors import S2SInputError
    from ..io import check_image_inputs, check_output_path, read_image, read_mask, read_steinbock, write_csv_atomic
    from ..measure import NonFiniteWarning, measure_cells

    def measure_one(image_path, mask_path, panel_arg):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NonFiniteWarning)
            img = read_image(image_path, panel_arg, pixel_size_um, axes)
            cells = measure_cells(img, read_mask(mask_path, img.shape, image_path))
        for w in caught:
            if issubclass(w.category, NonFiniteWarning):
                click.echo(f"warning: {w.message}", err=True)
        return cells

    if image.is_dir():
        if mask is not None:
            raise click.UsageError("a steinbock folder takes no MASK argument")
        check_output_path(output, [image], folder=True)
        if output.resolve() == image.resolve():
            raise S2SInputError(output, "the output folder must differ from the steinbock folder")
        folder = read_steinbock(image, mask_dir=mask_dir)
        panel_arg = panel if panel is not None else folder.panel
        failures = 0
        for entry in folder.entries:
            try:
                if entry.mask_path is None:
                    raise S2SInputError(entry.image_path, f"no mask in {mask_dir}/")
                cells = measure_one(entry.image_path, entry.mask_path, panel_arg)
            except S2SInputError as err:
                failures += 1
                click.echo(f"error: {err}", err=True)
                continue
            write_csv_atomic(cells, output / f"{entry.name}.csv")
            click.echo(f"{entry.name}: {len(cells)} cells")
        click.echo(f"measured {len(folder.entries) - failures} of {len(folder.entries)} images into {output}")
        if failures:
            raise SystemExit(1)
        return
    if mask is None:
        raise click.UsageError("MASK is required unless IMAGE is a steinbock folder")
    check_image_inputs(image, mask, panel, output)
    cells = measure_one(image, mask, panel)
    write_csv_atomic(cells, output)
    click.echo(f"{len(cells)} cells -> {output}")
