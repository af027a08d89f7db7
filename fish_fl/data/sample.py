"""The embedded SST-2 sample: a small real GLUE task inside the package.

``fish_fl/resources/sst2_sample/{train,dev}.tsv`` hold 4,000 training
sentences of GLUE SST-2 chosen with a fixed seed and the full 872-sentence
dev set, in the official TSV layout (header ``sentence<TAB>label``), so the
demo runs with neither network nor a local copy of GLUE:
``load_glue("sst2", source="embedded")``. :func:`make_sst2_sample`
regenerates the files from the full SST-2 files (``sims/make_sample.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from fish_fl.data.glue import get_task, read_glue_tsv

logger = logging.getLogger(__name__)

__all__ = ["SAMPLE_SEED", "SAMPLE_TRAIN_SIZE", "default_sample_dir", "make_sst2_sample"]

#: Training sentences in the embedded sample.
SAMPLE_TRAIN_SIZE = 4000
#: Seed of the draw of the embedded sample.
SAMPLE_SEED = 0


def default_sample_dir() -> Path:
    """Where the embedded sample lives in a source checkout of the package."""
    return Path(__file__).resolve().parent.parent / "resources" / "sst2_sample"


def _read_lines(path: Path) -> list[str]:
    with path.open("r", encoding="utf-8", newline="") as handle:
        return [line.rstrip("\r\n") for line in handle if line.strip()]


def _write_lines(path: Path, lines: list[str]) -> None:
    with path.open("w", encoding="utf-8", newline="") as handle:
        handle.writelines(line + "\n" for line in lines)


def make_sst2_sample(
    sst2_dir: str | Path,
    out_dir: str | Path | None = None,
    train_size: int = SAMPLE_TRAIN_SIZE,
    seed: int = SAMPLE_SEED,
) -> tuple[Path, Path]:
    """Write a seeded sample of SST-2 in the official GLUE layout.

    The chosen training lines are copied byte for byte, in their original
    order; the dev file is copied whole.

    Parameters
    ----------
    sst2_dir : str or pathlib.Path
        Folder with the full ``train.tsv`` and ``dev.tsv`` of SST-2 (e.g.
        ``../shared/data/glue/SST-2`` from the project root).
    out_dir : str or pathlib.Path, optional
        Output folder (default :func:`default_sample_dir`).
    train_size : int, default 4000
        Training sentences to keep.
    seed : int, default 0
        Seed of the draw.

    Returns
    -------
    tuple of pathlib.Path
        The written ``train.tsv`` and ``dev.tsv``.

    Raises
    ------
    FileNotFoundError
        If a source file is missing.
    ValueError
        If a source file is not SST-2, or ``train_size`` exceeds its rows.
    """
    src = Path(sst2_dir)
    spec = get_task("sst2")
    train_src, dev_src = src / "train.tsv", src / "dev.tsv"
    for file in (train_src, dev_src):
        read_glue_tsv(file, spec)  # checks existence and layout
    train_lines = _read_lines(train_src)
    header, rows = train_lines[0], train_lines[1:]
    if not 0 < train_size <= len(rows):
        raise ValueError(f"train_size must lie in [1, {len(rows)}], got {train_size}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(rows), size=train_size, replace=False))
    out = Path(out_dir) if out_dir is not None else default_sample_dir()
    out.mkdir(parents=True, exist_ok=True)
    train_out, dev_out = out / "train.tsv", out / "dev.tsv"
    _write_lines(train_out, [header, *(rows[i] for i in chosen)])
    _write_lines(dev_out, _read_lines(dev_src))
    logger.info("wrote %d train and the full dev set of SST-2 to %s", train_size, out)
    return train_out, dev_out
