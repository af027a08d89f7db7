"""Regenerate the embedded SST-2 sample shipped in ``fish_fl/resources/sst2_sample``.

Run from the project root::

    python sims/make_sample.py                     # reads ../shared/data/glue/SST-2
    python sims/make_sample.py --source DIR --train-size 4000 --seed 0

The sample is 4,000 training sentences drawn with seed 0 plus the full
872-sentence dev set, in the official GLUE TSV layout; see
:func:`fish_fl.data.sample.make_sst2_sample`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from fish_fl.data.sample import SAMPLE_SEED, SAMPLE_TRAIN_SIZE, default_sample_dir, make_sst2_sample

DEFAULT_SOURCE = Path("..") / "shared" / "data" / "glue" / "SST-2"


def main(
    source: Annotated[
        Path, typer.Option(help="Folder with the full SST-2 train.tsv and dev.tsv.")
    ] = DEFAULT_SOURCE,
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: the package's resources).")
    ] = None,
    train_size: Annotated[
        int, typer.Option(help="Training sentences to keep.")
    ] = SAMPLE_TRAIN_SIZE,
    seed: Annotated[int, typer.Option(help="Seed of the draw.")] = SAMPLE_SEED,
) -> None:
    """Write a seeded SST-2 sample (JSON Lines) into the package resources."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        train, dev = make_sst2_sample(source, out or default_sample_dir(), train_size, seed)
    except (OSError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(code=1) from err
    for file in (train, dev):
        typer.echo(f"wrote {file} ({file.stat().st_size:,} bytes)")


app = typer.Typer(add_completion=False, context_settings={"help_option_names": ["-h", "--help"]})
app.command()(main)

if __name__ == "__main__":
    app()
