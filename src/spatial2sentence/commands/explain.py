"""``s2s explain``: why the model called one cell what it did (integrated-gradients token attributions)."""

from __future__ import annotations

import json
import shutil

import click


def _fmt(v: float) -> str:
    return f"{v:+.2f}"


def format_prompt(tokens: list[dict], width: int = 100) -> list[str]:
    """The prompt, one segment (``;``-terminated) per block, with each word's score in the column
    under it; long segments wrap at ``width`` characters."""
    segments, cur = [], []
    for t in tokens:
        cur.append(t)
        if t["token"] == ";":
            segments.append(cur)
            cur = []
    if cur:
        segments.append(cur)
    lines: list[str] = []
    for seg in segments:
        w_line, s_line = "", ""
        for t in seg:
            s = _fmt(t["score"])
            col = max(len(t["token"]), len(s)) + 1
            if w_line and len(w_line) + col > width:
                lines += [w_line.rstrip(), s_line.rstrip()]
                w_line, s_line = "    ", "    "
            w_line += t["token"].ljust(col)
            s_line += s.ljust(col)
        lines += [w_line.rstrip(), s_line.rstrip(), ""]
    return lines


# integration steps double up to 256 until completeness holds; more only cost memory (steps x prompt
# length x vocabulary per pass)
MAX_STEPS = 256


@click.command("explain")
@click.argument("image", type=click.Path(dir_okay=False))
@click.argument("mask", type=click.Path(dir_okay=False))
@click.option("--model", "model_dir", type=click.Path(file_okay=False), default=None,
              help="Model directory (default: the embedded Damond-panel model).")
@click.option("--panel", type=click.Path(dir_okay=False), default=None, help="panel.csv naming the channels.")
@click.option("--cell", "cell", required=True, help="Object id (mask value) of the cell to explain.")
@click.option("--target", default=None, help="Class to explain (default: the predicted one).")
@click.option("--task", type=click.Choice(["type", "status"]), default="type", show_default=True,
              help="Explain the cell type or the (per-cell) clinical status.")
@click.option("--steps", "n_steps", type=int, default=16, show_default=True,
              help="Integration steps to start with (doubled, up to 256, until the completeness error "
                   "is below 5% of f(x) - f(baseline)).")
@click.option("--baseline", type=click.Choice(["pad", "unk", "zeros"]), default="pad", show_default=True,
              help="Embedding that replaces every content word in the baseline prompt.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cuda or cpu.")
@click.option("--json", "as_json", is_flag=True, help="Print the explanation as JSON.")
def explain(image, mask, model_dir, panel, cell, target, task, n_steps, baseline, device, as_json):
    """Explain the prediction for one cell of IMAGE (segmented by MASK): the contribution of every word
    of its prompt (integrated gradients of the class's log-probability over the label set), summed per
    marker of the cell and per partner cell."""
    import warnings

    from ..errors import S2SInputError
    from ..explain import explain_image
    from ..io import check_image_inputs, read_image, read_mask

    if not 1 <= n_steps <= MAX_STEPS:
        raise S2SInputError("--steps", f"must be between 1 and {MAX_STEPS} (got {n_steps})")
    check_image_inputs(image, mask, panel)  # before the model is loaded
    from ..model import S2SModel, check_device_name

    check_device_name(device)
    model = S2SModel.from_pretrained(model_dir, device=device)
    img = read_image(image, panel=panel)
    m = read_mask(mask, shape=img.shape, image_path=image)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (ex,) = explain_image(model, img, m, object_ids=[cell], target=target, task=task, n_steps=n_steps,
                              baseline=baseline, max_steps=max(256, n_steps))
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    if as_json:
        click.echo(json.dumps(ex, indent=1, default=lambda v: v.item() if hasattr(v, "item") else str(v)))
        return
    width = max(60, min(120, shutil.get_terminal_size((100, 20)).columns))
    p_pred = ex["probabilities"][ex["predicted"]]
    click.echo(f"{img.name}, cell {ex['object']}: predicted {ex['predicted']} (p={p_pred:.3f}); "
               f"explaining {ex['target']} (p={ex['probabilities'][ex['target']]:.3f})")
    click.echo(f"score = contribution to log p({ex['target']}) over the {task} labels; "
               f"f(x) = {ex['f_input']:.3f}, f(baseline) = {ex['f_baseline']:.3f}, scores sum to "
               f"{sum(t['score'] for t in ex['tokens']):.3f} (completeness error {ex['completeness_error']:.4f}, "
               f"{ex['n_steps']} steps, baseline: {ex['baseline']})")
    click.echo("")
    for line in format_prompt(ex["tokens"], width):
        click.echo(line)
    click.echo("top markers of the cell: " + (", ".join(
        f"{d['marker']} {_fmt(d['score'])}" for d in ex["markers"][:5]) or "none"))
    if ex["partners"]:
        click.echo("partners (by score):")
        for p in sorted(ex["partners"], key=lambda d: -d["score"]):
            click.echo(f"  cell {p['object']!s:>6}  {p['role']:<8}  {p['distance_um']:7.1f} um  "
                       f"{p['direction']:<10}  {_fmt(p['score'])}")
    else:
        click.echo("partners: none")
    parts: dict[str, float] = {}
    for t in ex["tokens"]:
        key = "partners" if t["part"].startswith("partner:") else t["part"]
        parts[key] = parts.get(key, 0.0) + t["score"]
    click.echo("by part: " + ", ".join(f"{k} {_fmt(v)}" for k, v in parts.items()))
