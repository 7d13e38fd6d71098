"""``s2s sentences``: print the prompts (cell sentences + spatial context) of chosen cells."""

from __future__ import annotations

import json

import click


@click.command("sentences")
@click.argument("cells_or_image", type=click.Path(dir_okay=False))
@click.argument("mask", type=click.Path(dir_okay=False), required=False)
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Model directory whose settings write the prompts (default: the embedded model).")
@click.option("--panel", type=click.Path(dir_okay=False), default=None, help="panel.csv for an image.")
@click.option("--cells", "objects", default=None, help="Comma-separated Object ids (default: the first --n).")
@click.option("-n", "n", type=int, default=5, show_default=True, help="How many cells when --cells is not given.")
@click.option("--task", type=click.Choice(["type", "status"]), default="type", show_default=True)
@click.option("--image", "image_name", default=None, help="Only cells of this image (cells CSV with an image column).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (text, token ids, partners).")
def sentences(cells_or_image, mask, model_dir, panel, objects, n, task, image_name, as_json):
    """Print the prompts of cells of a cells CSV (Object, x, y, markers), or of IMAGE + MASK."""
    import pandas as pd

    from ..errors import S2SInputError
    from ..io import check_image_inputs, check_input_file, read_image, read_mask
    from ..measure import measure_cells

    if mask is not None:
        check_image_inputs(cells_or_image, mask, panel)  # before the model is loaded
    else:
        check_input_file(cells_or_image)
    from ..model import S2SModel

    model = S2SModel.from_pretrained(model_dir, device="cpu")
    if mask is not None:

        img = read_image(cells_or_image, panel=panel)
        df = measure_cells(img, read_mask(mask, shape=img.shape, image_path=cells_or_image))
        df.insert(0, "image", img.name)
        markers = img.channels
    else:
        try:
            df = pd.read_csv(cells_or_image)
        except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise S2SInputError(cells_or_image, f"not a readable cells CSV ({str(err).splitlines()[0]})") from None
        markers = None
    if image_name is not None:
        if "image" not in df.columns:
            raise S2SInputError(cells_or_image, "no image column")
        df = df[df["image"].astype(str) == image_name]
    if len(df) == 0:
        raise S2SInputError(cells_or_image, "no cells")
    ids = _chosen_ids(objects, df, cells_or_image) if objects else \
        list(df["Object"].head(n)) if "Object" in df.columns else None
    prompts = model.prompts_for(df, ids, task=task, markers=markers)
    for p in prompts:
        if as_json:
            click.echo(json.dumps(p, default=str))
        else:
            click.echo(f"# Object {p['Object']} ({p['image']})")
            click.echo(p["text"])
            for q in p["partners"]:
                click.echo(f"    {q['role']}: Object {q['Object']}, {q['distance_um']} um {q['direction']}")


def _chosen_ids(objects: str, df, source) -> list:
    """The ``--cells`` ids, as the table's Object values; ids that are not there stop with one line
    naming the input and the ids that exist (a sample's ids need not start at 1: E34's run 824-1312)."""
    from ..errors import S2SInputError

    if "Object" not in df.columns:
        raise S2SInputError(source, "no Object column: --cells needs cell ids")
    have = df["Object"].tolist()
    numeric = all(isinstance(v, (int, float)) for v in have[:100])
    wanted, unknown = [], []
    for part in (p.strip() for p in objects.split(",")):
        if not part:
            continue
        try:
            value = int(part) if numeric else part
        except ValueError:
            unknown.append(part)
            continue
        (wanted if value in set(have) else unknown).append(value)
    if unknown or not wanted:
        lo, hi = (min(have), max(have)) if numeric and have else (have[0], have[-1]) if have else ("", "")
        first = ", ".join(str(v) for v in have[:5])
        asked = ", ".join(map(str, unknown)) or objects
        raise S2SInputError(source, f"no cell with Object {asked}: its "
                                    f"{len(have)} cells have Object ids {lo} to {hi} (the first: {first})")
    return wanted
