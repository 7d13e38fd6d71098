"""The ``s2s`` command line: a thin click layer over the library's functions.

Every subcommand lives in ``spatial2sentence.commands.<name>`` and imports its heavy dependencies
(torch, transformers...) inside the command, so that ``s2s --help`` stays fast. Errors caused by the
user's input (:class:`~spatial2sentence.errors.S2SInputError`) are printed as one line on stderr with
exit code 1, never as a traceback.
"""

from __future__ import annotations

import sys

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


@click.group(cls=_S2SGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="s2s")
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
