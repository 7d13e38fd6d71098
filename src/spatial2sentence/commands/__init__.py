"""The ``s2s`` subcommands; options shared by several of them live here."""

from __future__ import annotations

import click

# spatial2sentence.model.DTYPES, spelled out: importing the model module here would load pandas for
# every `s2s --help` (tests/test_model.py checks the two lists agree)
DTYPE_CHOICES = ("auto", "float32", "bfloat16")

dtype_option = click.option(
    "--dtype", type=click.Choice(list(DTYPE_CHOICES)), default="auto", show_default=True,
    help="Weights' dtype: auto is bfloat16 on CUDA, float32 on CPU; bfloat16 on a CPU with AMX / "
         "AVX512-BF16 is ~1.5x faster with nearly the same answers (benchmarks/inference.py).")
