"""The ``s2s`` command line: a thin click layer over the library's functions.

Every subcommand lives in ``spatial2sentence.commands.<name>`` and imports its heavy dependencies
(torch, transformers...) inside the command, so that ``s2s --help`` stays fast. Errors caused by the
user's input (:class:`~spatial2sentence.errors.S2SInputError`) are printed as one line on stderr with
exit code 1, never as a traceback.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import click

from . import __version__
from .errors import S2SInputError


class _S2SGroup(click.Group):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """As click's, but every error, usage errors included, exits with code 1 (the README's
        promise: bad input gives one line and exit code 1)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as err:
            err.show()
            sys.exit(1)
        except click.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except S2SInputError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)


def version_text() -> str:
    """``s2s --version``: the package version and the embedded default model (name, version: its
    ``info.version`` or the weights' SHA-256, training recipe), read from the model folder's
    ``s2s_config.json`` without importing torch."""
    lines = [f"s2s (napari-s2s) {__version__}"]
    model_dir = Path(__file__).resolve().parent / "data" / "default_model"
    try:
        info = json.loads((model_dir / "s2s_config.json").read_text(encoding="utf-8")).get("info", {})
        digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    except (OSError, ValueError) as err:
        return "\n".join(lines + [f"default model: not readable ({type(err).__name__}: {err})"])
    version = info.get("version") or f"sha256:{digest[:12]} (model.safetensors)"
    lines.append(f"default model: {info.get('name', 'unnamed')}")
    lines.append(f"  version: {version}")
    recipe = info.get("recipe", "unknown")
    steps = (info.get("training") or {}).get("steps_done")
    lines.append(f"  recipe: {recipe}" + (f", {steps} steps" if steps else ""))
    if info.get("command"):
        lines.append(f"  trained by: {info['command']}")
    lines.append(f"  folder: {model_dir}")
    return "\n".join(lines)


def _print_version(ctx: click.Context, _param, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(version_text())
        ctx.exit()


@click.group(cls=_S2SGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--version", is_flag=True, expose_value=False, is_eager=True, callback=_print_version,
              help="Show the version of napari-s2s and of its default model (and its recipe), then exit.")
def main():
    """napari-s2s: annotate cells of imaging mass cytometry (IMC) images with Spatial2Sentence.

    Read IMC images and segmentation masks, measure every cell, and (with the other subcommands) turn
    cells into sentences, train and run the Spatial2Sentence model, and annotate whole folders.
    """

# Subcommands, each a click command named like its module in spatial2sentence.commands.
_COMMANDS = (
    "measure", "simulate", "train", "predict", "sentences", "explain", "annotate", "benchmark",
)


def _register() -> None:
    from importlib import import_module

    for name in _COMMANDS:
        module = import_module(f".commands.{name}", __package__)
        main.add_command(getattr(module, name))


_register()

if __name__ == "__main__":  # pragma: no cover
    main()
