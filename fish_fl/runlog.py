"""The run folder: resolved config, one metrics line per round, a summary.

Layout::

    config.json         the resolved RunConfig (flat kebab-case keys)
    metrics.jsonl       one JSON object per round (round 0: before training)
    mask_stats.json     kept entries per parameter and per block, per mask version
    mask.safetensors    the last mask
    summary.json        final and best metric, totals, wall time
    accuracy_vs_communication.png
    delta.safetensors   the trained model as a sparse delta from the base

Each metrics line is flushed as soon as its round ends, so a crashed run keeps
every completed round. Every file is strict JSON (a NaN or infinite metric is
written as ``null``) and every file but ``metrics.jsonl``, which is appended
to, is replaced atomically (:mod:`fish_fl.fileio`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .config import RunConfig
from .fileio import dumps_strict, finite_or_none, write_json_atomic, write_text_atomic
from .masks import Mask
from .methods import method_class

if TYPE_CHECKING:
    from .data.partition import PartitionReport
    from .tasks import LabelSpace

__all__ = ["TENSORBOARD", "board_scalars", "RunRecorder", "format_bytes"]

logger = logging.getLogger(__name__)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


#: Folder of the run's TensorBoard event files.
TENSORBOARD = "tensorboard"

_TRAFFIC = ("bytes", "fme", "messages", "mask_broadcasts")


def board_scalars(row: dict[str, Any]) -> dict[str, float]:
    """The TensorBoard scalars of one ``metrics.jsonl`` row, by tag.

    ``eval/<metric>`` for every held-out metric (and ``eval/score``, the
    task's primary one), ``train/loss``, ``traffic/<key>`` for bytes,
    messages and full-model equivalents (per round and cumulative),
    ``privacy/epsilon`` once a run reports it, and ``round/<key>`` for every
    other number of the row (replies, rejections, times, a method's own).
    """
    out: dict[str, float] = {}
    for key, value in (row.get("eval") or {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"eval/{key}"] = float(value)
    for key, value in row.items():
        if key in ("round", "eval") or isinstance(value, bool):
            continue
        if not isinstance(value, (int, float)):
            continue
        if key == "score":
            out["eval/score"] = float(value)
        elif key == "train_loss":
            out["train/loss"] = float(value)
        elif key == "epsilon":
            out["privacy/epsilon"] = float(value)
        elif any(part in key for part in _TRAFFIC):
            out[f"traffic/{key}"] = float(value)
        else:
            out[f"round/{key}"] = float(value)
    return out


#: Short headers of the table's score column.
_SHORT_METRIC = {
    "matthews_correlation": "matthews",
    "f1_accuracy_mean": "f1/acc",
    "pearson_spearman_mean": "pear/spear",
}


class RunRecorder:
    """Writes a run folder and prints a per-round table.

    Parameters
    ----------
    run_dir
        Created if missing.
    config
        Written to ``config.json`` at once.
    stream
        Where the per-round table goes (``None``: no table).
    """

    COLUMNS = (
        ("round", 5),
        ("phase", 6),
        ("metric", 9),
        ("loss", 7),
        ("train", 7),
        ("ok", 4),
        ("up", 10),
        ("down", 10),
        ("cum FME", 9),
        ("time", 7),
    )

    def __init__(
        self,
        run_dir: str | Path,
        config: RunConfig,
        stream: TextIO | None | str = "stdout",
        *,
        resume: bool = False,
    ) -> None:
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config = config
        # "stdout": the process's stdout when the recorder is made (not when
        # this module was imported; tests and callers may have replaced it).
        self.stream: TextIO | None = sys.stdout if stream == "stdout" else stream  # type: ignore[assignment]
        self.rows: list[dict[str, Any]] = []
        self.mask_stats: dict[str, Any] = {}
        write_json_atomic(self.dir / "config.json", config.to_dict())
        self.metrics_path = self.dir / "metrics.jsonl"
        if not resume:
            write_text_atomic(self.metrics_path, "")
        self._header_printed = False
        # TensorBoard events (``tensorboard --logdir runs``); a resumed run drops
        # the events of rounds after its checkpoint, as metrics.jsonl does.
        self._board: Any = None
        self._board_from = 0
        # A method may add columns of its own (see SparseMethod.log_columns).
        self.method = method_class(config.mask_method)
        self.columns = self.COLUMNS + self.method.log_columns
        from .methods import trains

        self._trains_all = trains(config.mask_method) == "all"

    def restore(self, rnd: int, mask: Mask | None, mask_version: int) -> None:
        """Continue a run folder after round ``rnd``: drop anything logged later.

        A run that crashed may have logged a round (or a new mask) after its
        last checkpoint; those lines are removed so the resumed run writes
        them again.
        """
        rows = []
        if self.metrics_path.is_file():
            for line in self.metrics_path.read_text().splitlines():
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:  # a line cut short by the crash
                        continue
                    if row.get("round", rnd + 1) <= rnd:
                        rows.append(row)
        self.rows = rows
        self._board_from = rnd + 1
        write_text_atomic(
            self.metrics_path, "".join(dumps_strict(r, sort_keys=True) + "\n" for r in rows)
        )
        stats_path = self.dir / "mask_stats.json"
        if stats_path.is_file():
            try:
                stats = json.loads(stats_path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{stats_path} is not valid JSON ({e})") from None
            self.mask_stats = {v: s for v, s in stats.items() if int(v) <= mask_version}
            write_json_atomic(stats_path, self.mask_stats)
        if mask is not None and str(mask_version) in self.mask_stats:
            method = self.mask_stats[str(mask_version)]["method"]
            mask.save(
                self.dir / "mask.safetensors",
                metadata={"version": str(mask_version), "method": method},
            )
        for row in rows:
            self._print_row(row)

    # -- before training -----------------------------------------------------
    def record_data(self, report: PartitionReport, labels: LabelSpace) -> None:
        """Print the clients' sizes and label histograms, and any non-IID warning.

        Writes ``labels.json``: the label set the head's outputs stand for
        (taken from the training data for a user's own files).
        """
        write_json_atomic(self.dir / "labels.json", labels.as_dict())
        if self.stream is None:
            return
        for line in report.lines:
            print(f"  {line}", file=self.stream)
        for warning in report.warnings:
            print(f"warning: {warning}", file=self.stream)
        self.stream.flush()

    # -- per round -----------------------------------------------------------
    def log_round(self, row: dict[str, Any]) -> None:
        """Append one round's metrics line and print its table row.

        A non-finite number (a diverged loss) is logged as ``null``.
        """
        row = finite_or_none(row)
        self.rows.append(row)
        with self.metrics_path.open("a") as f:
            f.write(dumps_strict(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._print_row(row)
        self._board_row(row)

    def _board_row(self, row: dict[str, Any]) -> None:
        """Every per-round number as a TensorBoard scalar, at the round as step."""
        if self._board is None:
            from torch.utils.tensorboard import SummaryWriter

            self._board = SummaryWriter(
                log_dir=str(self.dir / TENSORBOARD),
                purge_step=self._board_from or None,
            )
            self._board.add_text("config", "    " + self.config.to_json().replace("\n", "\n    "))
        step = int(row["round"])
        for name, value in board_scalars(row).items():
            self._board.add_scalar(name, value, step)
        self._board.flush()

    def _print_row(self, row: dict[str, Any]) -> None:
        if self.stream is None:
            return
        if not self._header_printed:
            # The score column is headed by the metric it holds (accuracy, matthews, ...).
            metric = _SHORT_METRIC.get(str(row.get("metric")), str(row.get("metric") or "metric"))
            names = [(metric if name == "metric" else name, w) for name, w in self.columns]
            head = " ".join(f"{name[: max(w, 10)]:>{w}}" for name, w in names)
            print(head, file=self.stream)
            print("-" * len(head), file=self.stream)
            self._header_printed = True
        score = row.get("score")
        ev = row.get("eval") or {}
        phase = row.get("phase", "")
        if phase == "sparse" and self._trains_all:
            phase = "dense"  # a dense run trains through the same masked path
        cells = [
            str(row["round"]),
            phase,
            "-" if score is None else f"{score:.4f}",
            "-" if "loss" not in ev else f"{ev['loss']:.4f}",
            "-" if row.get("train_loss") is None else f"{row['train_loss']:.4f}",
            f"{row.get('replies', 0)}",
            format_bytes(row.get("bytes_up", 0)),
            format_bytes(row.get("bytes_down", 0)),
            f"{row.get('cum_fme', 0.0):.3f}",
            f"{row.get('wall_time', 0.0):.0f}s",
        ]
        cells += self.method.log_cells(row)
        print(
            " ".join(f"{c:>{w}}" for c, (_, w) in zip(cells, self.columns, strict=True)),
            file=self.stream,
            flush=True,
        )

    # -- masks and the end ---------------------------------------------------
    def record_mask(self, version: int, mask: Mask, method: str) -> None:
        """Per-parameter and per-block statistics of a mask version; the mask file."""
        self.mask_stats[str(version)] = {
            "method": method,
            "k": mask.k,
            "total": mask.total,
            "density": mask.density,
            "fingerprint": mask.fingerprint,
            "encoded_bytes": len(mask.to_bytes()),
            "parameters": [
                {"name": s.name, "numel": s.numel, "kept": s.kept, "fraction": s.fraction}
                for s in mask.parameter_stats()
            ],
            "blocks": [
                {"name": s.name, "numel": s.numel, "kept": s.kept, "fraction": s.fraction}
                for s in mask.block_stats()
            ],
        }
        write_json_atomic(self.dir / "mask_stats.json", self.mask_stats)
        mask.save(
            self.dir / "mask.safetensors", metadata={"version": str(version), "method": method}
        )

    def close(self) -> None:
        """Close the TensorBoard writer (``finish`` does; a failed run calls it too)."""
        if self._board is not None:
            self._board.close()
            self._board = None

    def finish(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Write ``summary.json`` (adds final and best evaluated metric, the traffic totals)."""
        self.close()
        evaluated = [r for r in self.rows if r.get("score") is not None and r["round"] > 0]
        if evaluated:
            final = evaluated[-1]
            best = max(evaluated, key=lambda r: r["score"])
            summary["final"] = {
                "round": final["round"],
                "metric": final["metric"],
                "score": final["score"],
                **(final.get("eval") or {}),
            }
            summary["best"] = {
                "round": best["round"],
                "metric": best["metric"],
                "score": best["score"],
            }
            # The validation split's score (validation-examples), apart from the dev set's.
            validated = [r for r in evaluated if r.get("val_score") is not None]
            if validated:
                top = max(validated, key=lambda r: r["val_score"])
                summary["validation"] = {
                    "final": {"round": validated[-1]["round"], "score": validated[-1]["val_score"]},
                    "best": {"round": top["round"], "score": top["val_score"]},
                }
        summary["rounds"] = max((r["round"] for r in self.rows), default=0)
        # The run's traffic: the cumulative totals of its last logged round.
        last = next((r for r in reversed(self.rows) if "cum_bytes_up" in r), None)
        if last is not None:
            summary["traffic"] = {
                key: last.get(key)
                for key in (
                    "cum_bytes_up",
                    "cum_bytes_down",
                    "cum_mask_bytes",
                    "cum_fme",
                    "cum_fme_up",
                    "cum_fme_down",
                    "cum_paper_fme",
                )
            }
        summary = finite_or_none(summary)
        write_json_atomic(self.dir / "summary.json", summary)
        return summary
