"""The embedded SST-2 sample: a small real GLUE task inside the package.

``fish_fl/resources/sst2_sample/{train,dev}.jsonl`` hold 4,000 training
sentences of GLUE SST-2 chosen with a fixed seed and the full 872-sentence
dev set, one JSON object ``{"sentence": ..., "label": ...}`` per line, so the
demo runs with neither network nor a local copy of GLUE:
``load_glue("sst2", source="embedded")``. :func:`make_sst2_sample`
regenerates the files from the full SST-2 files (``sims/make_sample.py``).

JSON Lines rather than the GLUE TSV layout because a Flower App Bundle (what
``flwr run`` ships to every node) carries ``.json``/``.jsonl`` files but not
``.tsv`` ones.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from fish_fl.data.glue import get_task, read_glue_tsv
from fish_fl.fileio import atomic_write

logger = logging.getLogger(__name__)

__all__ = ["SAMPLE_SEED", "SAMPLE_TRAIN_SIZE", "default_sample_dir", "make_sst2_sample"]

#: Training sentences in the embedded sample.
SAMPLE_TRAIN_SIZE = 4000
#: Seed of the draw of the embedded sample.
SAMPLE_SEED = 0


def default_sample_dir() -> Path:
    """Where the embedded sample lives in a source checkout of the package."""
    return Path(__file__).resolve().parent.parent / "resources" / "sst2_sample"


def _write_jsonl(path: Path, sentences: list[str], labels: list[int]) -> None:
    with atomic_write(path, "w", encoding="utf-8") as handle:
        for sentence, label in zip(sentences, labels, strict=True):
            handle.write(
                json.dumps({"sentence": sentence, "label": int(label)}, ensure_ascii=False) + "\n"
            )


def make_sst2_sample(
    sst2_dir: str | Path,
    out_dir: str | Path | None = None,
    train_size: int = SAMPLE_TRAIN_SIZE,
    seed: int = SAMPLE_SEED,
) -> tuple[Path, Path]:
    """Write a seeded sample of SST-2 as JSON Lines.

    The chosen training sentences keep their original order and text; the
    dev set is copied whole.

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
        The written ``train.jsonl`` and ``dev.jsonl``.

    Raises
    ------
    FileNotFoundError
        If a source file is missing.
    ValueError
        If a source file is not SST-2, or ``train_size`` exceeds its rows.
    """
    src = Path(sst2_dir)
    spec = get_task("sst2")
    train = read_glue_tsv(src / "train.tsv", spec)
    dev = read_glue_tsv(src / "dev.tsv", spec)
    if not 0 < train_size <= len(train):
        raise ValueError(f"train_size must lie in [1, {len(train)}], got {train_size}")
    chosen = np.sort(np.random.default_rng(seed).choice(len(train), size=train_size, replace=False))
    out = Path(out_dir) if out_dir is not None else default_sample_dir()
    out.mkdir(parents=True, exist_ok=True)
    train_out, dev_out = out / "train.jsonl", out / "dev.jsonl"
    _write_jsonl(
        train_out, [train.text_a[i] for i in chosen], [int(train.labels[i]) for i in chosen]
    )
    _write_jsonl(dev_out, list(dev.text_a), [int(v) for v in dev.labels])
    logger.info("wrote %d train and the full dev set of SST-2 to %s", train_size, out)
    return train_out, dev_out
