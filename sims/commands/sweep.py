"""``fish-fl sweep EXPERIMENT``: one command per experiment of the FISH Mask paper.

An experiment (``sims/experiments/<name>.toml``) names a base preset, a grid
of settings (the Cartesian product of its axes, each value a label and a few
run-config overrides), the seeds, and per-scale overrides: ``[scale.cpu]``
(the default, sized for a small CPU machine) and ``[scale.paper]`` (the
settings of Sung, Nair and Raffel, *Training Neural Networks with Fixed Sparse
Masks*, NeurIPS 2021, arXiv 2111.09839, for GPU machines).

A run's configuration is resolved in this order, later entries winning:

1. the base preset (``[experiment] preset``, or the scale's ``preset``);
2. the scale's run keys (``[scale.<scale>]``);
3. the setting's overrides, axis by axis;
4. the scale's per-label overrides (``[scale.<scale>.label.<value label>]``);
5. ``--set key=value`` from the command line;
6. ``seed``, one run per seed.

A setting may carry a learning-rate grid (``lr-grid = [...]``, wherever a run
key may stand): each rate becomes a run of its own, labelled
``<setting>-lr<rate>``, with a validation split carved from the training data
(``validation-examples``), and the summary reports each setting at the rate
whose final validation score, averaged over seeds, is highest: its dev-set
score, the rate and its validation score. The paper tuned the learning rate of
every method this way.

Every run's configuration is validated before any run starts. Each run writes
its folder ``OUT/<experiment>/<label>/seed-<s>``; a folder that already holds a
``summary.json`` is skipped, so an interrupted sweep continues where it
stopped. At the end the sweep writes ``OUT/<experiment>/summary.md`` and
``summary.json`` (per label: mean and sample standard deviation over seeds)
and, for experiments with ``plot = true``, ``accuracy_vs_communication.png``
(the mean curve of each label).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import re
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any

import typer

from fish_fl.config import RunConfig, parse_override
from fish_fl.fileio import dumps_strict, save_figure_atomic, write_text_atomic
from fish_fl.methods import method_class, trains
from fish_fl.plots import RunFolderError, RunRecord, load_run

from .run import preset_path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "EXPERIMENTS",
    "LR_GRID",
    "SCALES",
    "Experiment",
    "LabelSummary",
    "PickedRate",
    "PlannedRun",
    "Setting",
    "SweepError",
    "available_experiments",
    "expand_settings",
    "format_summary",
    "load_experiment",
    "lr_grid",
    "mean_std",
    "pick_rates",
    "plan_sweep",
    "rate_label",
    "resolve_overrides",
    "run_sweep",
    "summarise",
    "sweep_command",
    "write_summary",
]

#: Extra summary columns an experiment may ask for.
COLUMNS = ("checkpoint", "method")

logger = logging.getLogger(__name__)

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
SCALES = ("cpu", "paper")
SUMMARY_FILE = "summary.json"
_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SCALE_RESERVED = {"preset", "label"}
#: The sweep key of a setting's learning-rate grid (not a run key).
LR_GRID = "lr-grid"


class SweepError(ValueError):
    """An experiment file, a sweep option or one of the sweep's run configs is invalid."""


# ------------------------------------------------------------------------------
# The experiment file
# ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    """One point of an experiment's grid.

    Attributes
    ----------
    label
        The value labels of every axis joined by ``-`` (``sst2-fish-0.5pc-fed2``);
        also the run folder's name.
    parts
        The value label of each axis, in axis order.
    overrides
        Run-config overrides of this setting (the axis values' keys, merged in
        axis order).
    """

    label: str
    parts: tuple[str, ...]
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """An experiment file, parsed.

    Attributes
    ----------
    name
        File stem (``density``).
    title
        One line: what the experiment reproduces.
    paper
        Where in the paper (``Figure 2``).
    preset
        Base preset name or TOML path.
    seeds
        The seeds every setting runs with.
    plot
        Whether the sweep draws accuracy against communication, one line per label.
    axes
        ``(axis name, [(value label, overrides), ...])`` in file order.
    scales
        Per scale, its table: run keys, optional ``preset`` and ``label`` sub-tables.
    columns
        Extra summary columns: ``"checkpoint"`` adds the sparse delta's size,
        ``"method"`` the figures the run's method reports (``report_columns``
        of its wire; a supermask: the final mask's sparsity, the sampled
        masks' score and the bits sent up per masked weight).
    """

    name: str
    title: str
    paper: str
    preset: str
    seeds: tuple[int, ...]
    plot: bool
    axes: tuple[tuple[str, tuple[tuple[str, dict[str, Any]], ...]], ...]
    scales: dict[str, dict[str, Any]]
    columns: tuple[str, ...] = ()


def available_experiments(folder: Path = EXPERIMENTS) -> list[str]:
    """Names of the experiment files in ``folder`` (sorted)."""
    return sorted(p.stem for p in folder.glob("*.toml"))


def experiment_path(name: str, folder: Path = EXPERIMENTS) -> Path:
    """An experiment name (``density``) or a path to a TOML file."""
    candidate = Path(name)
    if candidate.suffix == ".toml":
        if not candidate.is_file():
            raise SweepError(f"experiment file not found: {candidate}")
        return candidate
    path = folder / f"{name}.toml"
    if not path.is_file():
        names = ", ".join(available_experiments(folder)) or "none"
        raise SweepError(f"unknown experiment {name!r}; experiments: {names}")
    return path


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SweepError(f"{where} must be a table, got {value!r}")
    return value


def _label(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise SweepError(
            f"{where}: label must be letters, digits, '.', '_' or '-' (not first), got {value!r}"
        )
    return value


def _is_seed(value: Any) -> bool:
    """A seed is an integer >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def load_experiment(name: str, folder: Path = EXPERIMENTS) -> Experiment:
    """Read and check an experiment file (the structure; run keys are checked by :func:`plan_sweep`).

    Raises
    ------
    SweepError
        For a missing file, invalid TOML, a missing or mistyped field, a bad or
        repeated label, or an unknown scale.
    """
    path = experiment_path(name, folder)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SweepError(f"{path}: not valid TOML ({e})") from None
    head = _table(data.get("experiment"), f"{path}: [experiment]")
    preset = head.get("preset")
    if not isinstance(preset, str) or not preset:
        raise SweepError(f"{path}: [experiment] needs preset, a preset name or TOML path")
    seeds = head.get("seeds", [0])
    if (
        not isinstance(seeds, list)
        or not seeds
        or not all(_is_seed(s) for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        raise SweepError(f"{path}: seeds must be a non-empty list of distinct integers >= 0")
    axes = []
    raw_axes = data.get("axis", [])
    if not isinstance(raw_axes, list) or not raw_axes:
        raise SweepError(f"{path}: needs at least one [[axis]] with values")
    for i, axis in enumerate(raw_axes):
        axis = _table(axis, f"{path}: axis {i + 1}")
        axis_name = str(axis.get("name", f"axis-{i + 1}"))
        raw_values = axis.get("values")
        if not isinstance(raw_values, list) or not raw_values:
            raise SweepError(f"{path}: axis {axis_name!r} needs a non-empty list of values")
        values = []
        for value in raw_values:
            value = dict(_table(value, f"{path}: a value of axis {axis_name!r}"))
            label = _label(value.pop("label", None), f"{path}: axis {axis_name!r}")
            values.append((label, value))
        labels = [v[0] for v in values]
        if len(set(labels)) != len(labels):
            raise SweepError(f"{path}: axis {axis_name!r} repeats a label: {labels}")
        axes.append((axis_name, tuple(values)))
    raw_scales = _table(data.get("scale", {}), f"{path}: [scale]")
    unknown = sorted(set(raw_scales) - set(SCALES))
    if unknown:
        raise SweepError(f"{path}: unknown scale {unknown[0]!r}; scales: {', '.join(SCALES)}")
    scales = {s: dict(_table(raw_scales.get(s, {}), f"{path}: [scale.{s}]")) for s in SCALES}
    known = [label for _, values in axes for label, _ in values]
    for s, table in scales.items():
        for label in _table(table.get("label", {}), f"{path}: [scale.{s}.label]"):
            if label not in known:
                raise SweepError(
                    f"{path}: [scale.{s}.label.{label}] names no value label of the axes; "
                    f"labels: {', '.join(known)}"
                )
    columns = head.get("columns", [])
    if not isinstance(columns, list) or not set(columns) <= set(COLUMNS):
        raise SweepError(
            f"{path}: columns may only list {', '.join(map(repr, COLUMNS))}, got {columns!r}"
        )
    return Experiment(
        name=path.stem,
        title=str(head.get("title", path.stem)),
        paper=str(head.get("paper", "")),
        preset=preset,
        seeds=tuple(seeds),
        plot=bool(head.get("plot", False)),
        axes=tuple(axes),
        scales=scales,
        columns=tuple(columns),
    )


def expand_settings(experiment: Experiment) -> list[Setting]:
    """The grid: the Cartesian product of the axes, first axis slowest."""
    settings = []
    for combo in itertools.product(*(values for _, values in experiment.axes)):
        overrides: dict[str, Any] = {}
        for _, value in combo:
            overrides.update(value)
        parts = tuple(label for label, _ in combo)
        settings.append(Setting(label="-".join(parts), parts=parts, overrides=overrides))
    return settings


def resolve_overrides(
    experiment: Experiment,
    setting: Setting,
    scale: str = "cpu",
    extra: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The preset and the merged overrides of one setting at one scale (no seed).

    Order, later winning: the scale's run keys, the setting, the scale's
    per-label tables (for each of the setting's value labels, in axis order),
    then ``extra``.
    """
    if scale not in SCALES:
        raise SweepError(f"--scale={scale!r} is not allowed; choose one of {', '.join(SCALES)}")
    table = experiment.scales.get(scale, {})
    preset = str(table.get("preset", experiment.preset))
    values = {k: v for k, v in table.items() if k not in _SCALE_RESERVED}
    values.update(setting.overrides)
    per_label = table.get("label", {})
    for part in setting.parts:
        if part in per_label:
            values.update(_table(per_label[part], f"[scale.{scale}.label.{part}]"))
    values.update(extra or {})
    return preset, values


# ------------------------------------------------------------------------------
# Planning: every run's config, validated before any starts
# ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: a setting (at one rate of its lr grid) at one seed.

    Attributes
    ----------
    label
        The run's label and folder name: the setting's label, with
        ``-lr<rate>`` for one rate of its lr grid.
    seed, config, run_dir
        The run's seed, configuration and folder.
    setting
        The setting's label (the label without the rate).
    lr
        The rate of the setting's lr grid this run trains at; None for a
        setting without a grid.
    """

    label: str
    seed: int
    config: RunConfig
    run_dir: Path
    setting: str = ""
    lr: float | None = None

    @property
    def done(self) -> bool:
        """True when the folder already holds a finished run (``summary.json``)."""
        return (self.run_dir / SUMMARY_FILE).is_file()


def choose_seeds(
    experiment: Experiment, count: int | None, chosen: Sequence[int] = ()
) -> tuple[int, ...]:
    """The seeds to run: ``chosen`` if given, else the first ``count`` seeds of the
    experiment, extended by consecutive integers."""
    if chosen:
        if count is not None:
            raise SweepError("give --seeds N or --seed S, not both")
        if not all(_is_seed(s) for s in chosen):
            raise SweepError(f"--seed must be an integer >= 0, got {list(chosen)!r}")
        if len(set(chosen)) != len(chosen):
            raise SweepError(f"--seed lists a seed twice: {list(chosen)!r}")
        return tuple(chosen)
    if count is None:
        return experiment.seeds
    if count < 1:
        raise SweepError(f"--seeds={count} must be >= 1")
    seeds = list(experiment.seeds[:count])
    nxt = max(experiment.seeds) + 1
    while len(seeds) < count:
        seeds.append(nxt)
        nxt += 1
    return tuple(seeds)


def _check_paths(config: RunConfig) -> None:
    if config.data_source == "local" and not Path(config.data_dir).exists():
        raise SweepError(
            f"data-dir={config.data_dir!r} does not exist (relative paths are read from "
            f"the current folder, {Path.cwd()})"
        )


def lr_grid(value: Any, where: str) -> tuple[float, ...]:
    """A setting's ``lr-grid``: distinct rates > 0, in the file's order (empty: none)."""
    if value is None:
        return ()
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) and v > 0 for v in value)
        or len(set(value)) != len(value)
    ):
        raise SweepError(
            f"{where}: {LR_GRID} must be a non-empty list of distinct rates > 0, got {value!r}"
        )
    return tuple(float(v) for v in value)


def rate_label(setting: str, lr: float) -> str:
    """The label of one rate of a setting's grid: ``dense-lr5e-05`` (the rate exactly, as repr)."""
    return f"{setting}-lr{lr!r}"


def plan_sweep(
    experiment: Experiment,
    out: Path,
    *,
    scale: str = "cpu",
    seeds: int | None = None,
    seed_list: Sequence[int] = (),
    only: Sequence[str] = (),
    overrides: Sequence[str] = (),
    check_paths: bool = True,
) -> list[PlannedRun]:
    """Every run of the sweep, each config built and validated.

    Parameters
    ----------
    experiment
        The parsed experiment.
    out
        Sweep root; runs go to ``out/<experiment>/<label>/seed-<s>``.
    scale
        ``cpu`` or ``paper``.
    seeds
        Run the first ``seeds`` seeds (default: the experiment's list).
    seed_list
        Run exactly these seeds instead (``--seed``, repeatable), e.g. the
        seeds a sweep still lacks.
    only
        Run only these setting labels (or value labels: ``fish-0.5pc`` selects
        every setting with that part, or the label of one rate of a grid:
        ``dense-lr5e-05``).
    overrides
        ``key=value`` strings applied to every run (``seed`` is not allowed:
        use ``seeds``).
    check_paths
        Also check that local data folders exist.

    Raises
    ------
    SweepError
        Naming the first run (label and seed) whose config is invalid, an
        unknown ``only`` label, a bad override, a bad ``lr-grid``, a grid
        without a validation split or with ``--set lr``.
    """
    run_seeds = choose_seeds(experiment, seeds, seed_list)
    extra: dict[str, Any] = {}
    for text in overrides:
        key, value = parse_override(text)
        if key.replace("_", "-") == "seed":
            raise SweepError("--set seed=... is not allowed in a sweep; use --seeds")
        if key.replace("_", "-") == LR_GRID:
            raise SweepError(f"--set {LR_GRID}=... is not a run key; set it in the experiment file")
        extra[key] = value
    # Every setting's points: (label, rate or None), its preset and run keys.
    points: list[tuple[Setting, str, float | None, str, dict[str, Any]]] = []
    for setting in expand_settings(experiment):
        preset, values = resolve_overrides(experiment, setting, scale, extra)
        grid = lr_grid(values.pop(LR_GRID, None), f"{experiment.name}/{setting.label}")
        if not grid:
            points.append((setting, setting.label, None, preset, values))
        for rate in grid:
            points.append((setting, rate_label(setting.label, rate), rate, preset, values))
    labels = [label for _, label, _, _, _ in points]
    repeated = sorted({x for x in labels if labels.count(x) > 1})
    if repeated:
        raise SweepError(f"{experiment.name}: two runs would share the label {repeated[0]!r}")
    if only:
        known = (
            set(labels) | {s.label for s, *_ in points} | {p for s, *_ in points for p in s.parts}
        )
        missing = [o for o in only if o not in known]
        if missing:
            raise SweepError(
                f"--only {missing[0]!r} matches no setting of {experiment.name}; "
                f"settings: {', '.join(dict.fromkeys(s.label for s, *_ in points))}"
            )
        points = [
            p for p in points if p[1] in only or p[0].label in only or set(p[0].parts) & set(only)
        ]
    set_lr = any(k.replace("_", "-") == "lr" for k in extra)
    plan = []
    for setting, label, lr, preset, values in points:
        if lr is not None and set_lr:
            raise SweepError(
                f"{experiment.name}/{setting.label}: --set lr=... conflicts with its {LR_GRID}; "
                "drop one"
            )
        for seed in run_seeds:
            where = f"{experiment.name}/{label}/seed-{seed}"
            run_values = (
                {**values, "seed": seed} if lr is None else {**values, "lr": lr, "seed": seed}
            )
            try:
                config = RunConfig.from_toml(preset_path(preset), run_values)
                if check_paths:
                    _check_paths(config)
            except ValueError as e:
                raise SweepError(f"{where}: {e}") from None
            if lr is not None and config.validation_examples == 0:
                raise SweepError(
                    f"{where}: an {LR_GRID} picks its rate on a validation split; "
                    "set validation-examples > 0 (in [scale.<scale>] or the setting)"
                )
            run_dir = out / experiment.name / label / f"seed-{seed}"
            item = PlannedRun(label, seed, config, run_dir, setting=setting.label, lr=lr)
            if item.done:
                _check_same_config(item, where)
            plan.append(item)
    return plan


# Keys that do not change what a run computes.
_COSMETIC = {"out-dir", "progress"}


def _check_same_config(item: PlannedRun, where: str) -> None:
    """A finished run is reused only if it ran the planned config."""
    path = item.run_dir / "config.json"
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SweepError(f"{where}: cannot read {path} of the finished run ({e})") from None
    planned = json.loads(item.config.to_json())
    # A key the finished run's config lacks was added to RunConfig later; new
    # keys default to what the code did before them.
    defaults = json.loads(RunConfig().to_json())
    done = {**{k: v for k, v in defaults.items() if k not in done}, **done}
    for key in sorted(set(planned) | set(done)):
        if key not in _COSMETIC and planned.get(key) != done.get(key):
            raise SweepError(
                f"{where}: {item.run_dir} holds a finished run with {key}={done.get(key)!r}, "
                f"the sweep plans {key}={planned.get(key)!r}; use another --out or remove it"
            )


# ------------------------------------------------------------------------------
# Running
# ------------------------------------------------------------------------------
Runner = Callable[[RunConfig, Path], dict[str, Any]]


def _simulate(config: RunConfig, run_dir: Path) -> dict[str, Any]:
    from ..simulate import simulate

    return simulate(config, run_dir)


def run_sweep(plan: Sequence[PlannedRun], runner: Runner | None = None) -> list[str]:
    """Run every planned run that has no ``summary.json`` yet; return the failures.

    A folder left without a summary by an interrupted run is emptied and run
    again. A run that raises is logged and the sweep goes on with the next.

    Returns
    -------
    list of str
        ``"<label>/seed-<s>: <error>"`` for every run that failed.
    """
    run = runner or _simulate
    failures = []
    for i, item in enumerate(plan, start=1):
        name = f"{item.label}/seed-{item.seed}"
        if item.done:
            logger.info("[%d/%d] %s: finished before, skipped", i, len(plan), name)
            continue
        if item.run_dir.exists():
            logger.info("[%d/%d] %s: unfinished folder, starting again", i, len(plan), name)
            shutil.rmtree(item.run_dir)
        logger.info("[%d/%d] %s: running", i, len(plan), name)
        t0 = time.monotonic()
        try:
            run(item.config, item.run_dir)
        except Exception as e:  # one failed run must not end the sweep
            logger.error("%s failed: %s", name, e)
            failures.append(f"{name}: {e}")
            continue
        logger.info("[%d/%d] %s: done in %.0fs", i, len(plan), name, time.monotonic() - t0)
    return failures


# ------------------------------------------------------------------------------
# Summary
# ------------------------------------------------------------------------------
def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); ``std`` is ``None`` for one value."""
    if not values:
        return None, None
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else None)


@dataclass(frozen=True)
class LabelSummary:
    """One label of a sweep, over its finished seeds.

    Each statistic is a ``(mean, std)`` pair; ``std`` is ``None`` with one seed.
    """

    label: str
    method: str
    density: float | None
    metric: str
    seeds: tuple[int, ...]
    final: tuple[float | None, float | None]
    best: tuple[float | None, float | None]
    total_mb: tuple[float | None, float | None]
    fme: tuple[float | None, float | None]
    wall_time: tuple[float | None, float | None]
    extra: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    #: The final validation score (``val_score`` of the last evaluated round), if the runs had one.
    val_final: tuple[float | None, float | None] = (None, None)
    #: The setting the label belongs to, and the rate of its lr grid (None: no grid).
    setting: str = ""
    lr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: every statistic as ``{"mean": ..., "std": ...}``."""

        def pair(p: tuple[float | None, float | None]) -> dict[str, float | None]:
            return {"mean": p[0], "std": p[1]}

        return {
            "label": self.label,
            "method": self.method,
            "density": self.density,
            "metric": self.metric,
            "seeds": list(self.seeds),
            "final": pair(self.final),
            "best": pair(self.best),
            "total_mb": pair(self.total_mb),
            "fme": pair(self.fme),
            "wall_time": pair(self.wall_time),
            **{k: pair(v) for k, v in self.extra.items()},
            **({"val_final": pair(self.val_final)} if self.val_final[0] is not None else {}),
            **({"setting": self.setting, "lr": self.lr} if self.lr is not None else {}),
        }


def _trained_scores(record: RunRecord) -> list[float]:
    """Scores of the evaluated training rounds (round 0, before training, left out)."""
    return [v for row, v in record.evaluated() if int(row.get("round", 0)) > 0]


def _final_val_score(record: RunRecord) -> float | None:
    """``val_score`` of the last trained round that has one (the validation split's score)."""
    for row in reversed(record.rows):
        value = row.get("val_score")
        if int(row.get("round", 0)) > 0 and isinstance(value, (int, float)):
            return float(value)
    return None


def _wall_time(record: RunRecord) -> float | None:
    value = (record.summary or {}).get("wall_time")
    if isinstance(value, (int, float)):
        return float(value)
    times = [r["wall_time"] for r in record.rows if isinstance(r.get("wall_time"), (int, float))]
    return float(times[-1]) if times else None


def checkpoint_stats(record: RunRecord, run_dir: Path | None = None) -> dict[str, float]:
    """Storage of one checkpoint after every round, sparse against dense, in MB.

    Sparse: a round of the dense phase (warm-up) stores the whole float32
    model; a sparse round stores the k float32 values of its mask; every new
    mask version also stores the mask once, at its measured encoded size
    (``mask_stats.json``). Dense: every round stores the whole model. The
    initial model, common to both, is not counted.
    """
    full = record.full_model_bytes
    if full is None:
        return {}
    encoded: dict[int, int] = {}
    if run_dir is not None and (run_dir / "mask_stats.json").is_file():
        stats = json.loads((run_dir / "mask_stats.json").read_text(encoding="utf-8"))
        encoded = {int(v): int(s.get("encoded_bytes", 0)) for v, s in stats.items()}
    sparse = dense = 0
    seen: set[int] = set()
    for row in record.rows:
        if int(row.get("round", 0)) <= 0:
            continue
        dense += full
        if row.get("phase") == "sparse" and isinstance(row.get("k"), int) and row["k"] > 0:
            sparse += 4 * row["k"]
            version = row.get("mask_version")
            if isinstance(version, int) and version not in seen:
                seen.add(version)
                sparse += encoded.get(version, 0)
        else:
            sparse += full
    return {"sparse_ckpt_mb": sparse / 1e6, "dense_ckpt_mb": dense / 1e6}


def summarise_label(
    label: str,
    records: Sequence[tuple[int, RunRecord, Path]],
    columns: Sequence[str] = (),
    *,
    setting: str = "",
    lr: float | None = None,
) -> LabelSummary:
    """Mean and std over seeds of one label's finished runs ``(seed, record, folder)``."""
    finals, bests, vals, mbs, fmes, walls = [], [], [], [], [], []
    extra: dict[str, list[float]] = {}
    for _, rec, run_dir in records:
        scores = _trained_scores(rec)
        if scores:
            finals.append(scores[-1])
            bests.append(max(scores))
        val = _final_val_score(rec)
        if val is not None:
            vals.append(val)
        mbs.append((rec.total_bytes("up") + rec.total_bytes("down")) / 1e6)
        if rec.cum_fme is not None:
            fmes.append(rec.cum_fme)
        wall = _wall_time(rec)
        if wall is not None:
            walls.append(wall)
        if "checkpoint" in columns:
            for key, value in checkpoint_stats(rec, run_dir).items():
                extra.setdefault(key, []).append(value)
        if "method" in columns:
            for key, value in method_class(rec.method).report_stats(rec.rows, run_dir).items():
                extra.setdefault(key, []).append(value)
    first = records[0][1]
    return LabelSummary(
        label=label,
        method=first.method,
        density=first.density,
        metric=first.metric_name(),
        seeds=tuple(seed for seed, _, _ in records),
        final=mean_std(finals),
        best=mean_std(bests),
        total_mb=mean_std(mbs),
        fme=mean_std(fmes),
        wall_time=mean_std(walls),
        extra={k: mean_std(v) for k, v in extra.items()},
        val_final=mean_std(vals),
        setting=setting or label,
        lr=lr,
    )


def collect(plan: Sequence[PlannedRun]) -> dict[str, list[tuple[int, RunRecord, Path]]]:
    """The finished runs of a plan, ``(seed, record, folder)`` per label in plan order."""
    by_label: dict[str, list[tuple[int, RunRecord, Path]]] = {}
    for item in plan:
        by_label.setdefault(item.label, [])
        if not item.done:
            continue
        try:
            by_label[item.label].append((item.seed, load_run(item.run_dir), item.run_dir))
        except RunFolderError as e:
            logger.warning("skipping %s/seed-%d: %s", item.label, item.seed, e)
    return by_label


def summarise(
    plan: Sequence[PlannedRun], columns: Sequence[str] = ()
) -> tuple[list[LabelSummary], list[str]]:
    """Per-label summaries of the finished runs, and the labels with no finished run."""
    summaries, missing = [], []
    points = {item.label: (item.setting, item.lr) for item in plan}
    for label, records in collect(plan).items():
        if records:
            setting, lr = points[label]
            summaries.append(summarise_label(label, records, columns, setting=setting, lr=lr))
        else:
            missing.append(label)
    return summaries, missing


@dataclass(frozen=True)
class PickedRate:
    """A setting of an lr grid at the rate its validation split picked.

    Attributes
    ----------
    setting
        The setting's label.
    picked
        The summary of the picked rate's runs (its dev-set scores, its
        ``val_final``), or None when no rate has a finished run with a
        validation score.
    tried
        Every rate of the grid with a finished run, in grid order:
        ``(rate, mean final validation score or None, seeds)``.
    rates
        How many rates the grid has.
    """

    setting: str
    picked: LabelSummary | None
    tried: tuple[tuple[float, float | None, int], ...]
    rates: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "lr": None if self.picked is None else self.picked.lr,
            "picked": None if self.picked is None else self.picked.to_dict(),
            "tried": [{"lr": lr, "val_final": v, "seeds": n} for lr, v, n in self.tried],
            "rates": self.rates,
        }


def pick_rates(plan: Sequence[PlannedRun], summaries: Sequence[LabelSummary]) -> list[PickedRate]:
    """Each lr-grid setting at the rate with the highest mean final validation score.

    The dev-set score never enters the choice. A rate without a finished run or
    without a validation score is not a candidate; on a tie the rate listed
    first in the grid wins. Settings without a grid are left out.
    """
    by_label = {s.label: s for s in summaries}
    grids: dict[str, list[str]] = {}
    for item in plan:
        if item.lr is not None:
            labels = grids.setdefault(item.setting, [])
            if item.label not in labels:
                labels.append(item.label)
    picks = []
    for setting, labels in grids.items():
        done = [by_label[label] for label in labels if label in by_label]
        candidates = [s for s in done if s.val_final[0] is not None]
        best = None
        for s in candidates:  # strictly greater: the first of equal rates stays
            if best is None or s.val_final[0] > best.val_final[0]:  # type: ignore[operator]
                best = s
        tried = tuple((float(s.lr or 0.0), s.val_final[0], len(s.seeds)) for s in done)
        picks.append(PickedRate(setting, best, tried, len(labels)))
    return picks


def _cell(pair: tuple[float | None, float | None], spec: str) -> str:
    mean, std = pair
    if mean is None:
        return "n/a"
    return f"{mean:{spec}}" if std is None else f"{mean:{spec}} ± {std:{spec}}"


def _density(s: LabelSummary) -> str:
    kind = trains(s.method)
    if kind == "tensors":
        return "(whole tensors)"
    if kind == "learned":
        return "(learned mask)"
    if kind == "all":
        return "100%"
    return "n/a" if s.density is None else f"{100 * s.density:.3g}%"


def _picked_table(picks: Sequence[PickedRate]) -> list[str]:
    """Each lr-grid setting at its picked rate: the rates tried, the pick, its dev scores."""
    lines = [
        "## Learning rate picked on the validation split",
        "",
        "Each setting runs every rate of its lr grid; the rate picked (in bold) is the one "
        "with the highest final validation score, averaged over its seeds. The held-out "
        "(dev) split plays no part in the choice; final and best are that rate's dev-set "
        "scores.",
        "",
        "| setting | method | density | lr | rates tried: val final | seeds | metric "
        "| val final | final | best | MB up+down |",
        "|---|---|---|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for pick in picks:
        best = pick.picked
        tried = ", ".join(
            (f"**{lr:g}**" if best is not None and lr == best.lr else f"{lr:g}")
            + (": n/a" if v is None else f": {v:.4f}")
            for lr, v, _ in pick.tried
        )
        if len(pick.tried) < pick.rates:
            tried += f" ({len(pick.tried)} of {pick.rates} rates finished)"
        if best is None:
            lines.append(f"| {pick.setting} | | | n/a | {tried or 'none finished'} | | | | | | |")
            continue
        row = [
            pick.setting,
            best.method,
            _density(best),
            f"{best.lr:g}",
            tried,
            ",".join(str(x) for x in best.seeds),
            best.metric,
            _cell(best.val_final, ".4f"),
            _cell(best.final, ".4f"),
            _cell(best.best, ".4f"),
            _cell(best.total_mb, ".2f"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def format_summary(
    experiment: Experiment,
    summaries: Sequence[LabelSummary],
    *,
    scale: str,
    command: str = "",
    missing: Sequence[str] = (),
    plot: str | None = None,
    run_seconds: float | None = None,
    picks: Sequence[PickedRate] = (),
) -> str:
    """The sweep's Markdown summary: one row per label, and with lr grids first
    a table of each grid's setting at the rate its validation split picked."""
    extra_cols = [
        ("sparse_ckpt_mb", "sparse ckpt MB", ".2f"),
        ("dense_ckpt_mb", "dense ckpt MB", ".2f"),
    ]
    methods = [method_class(m) for m in dict.fromkeys(s.method for s in summaries)]
    for method in methods:
        extra_cols += [c for c in method.report_columns if c not in extra_cols]
    extra_cols = [c for c in extra_cols if any(c[0] in s.extra for s in summaries)]
    validated = any(s.val_final[0] is not None for s in summaries)
    head = [
        "label",
        "method",
        "density",
        "seeds",
        "metric",
        *(["val final"] if validated else []),
        "final",
        "best",
        "MB up+down",
        "FME",
        "wall time (s)",
        *[title for _, title, _ in extra_cols],
    ]
    lines = [
        f"# {experiment.name}: {experiment.title}",
        "",
        f"Paper: {experiment.paper}. Scale: {scale}."
        + (f" Command: `{command}`." if command else ""),
        "",
        "Mean ± sample standard deviation over seeds (no ± with one seed). "
        "final: the metric after the last round; best: the highest over the rounds; "
        "MB up+down: bytes on the wire, both directions; FME: the same in full-model "
        "equivalents (dense float32 model sizes); wall time: per run."
        + (
            " val final: the metric on the validation split (training examples no client "
            "trains on) after the last round; final and best are the held-out (dev) split's."
            if validated
            else ""
        ),
        "",
    ]
    if picks:
        lines += _picked_table(picks)
        lines += ["## Every run", ""]
    lines += [
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" if i < 5 else "---:" for i in range(len(head))) + "|",
    ]
    for s in summaries:
        row = [
            s.label,
            s.method,
            _density(s),
            ",".join(str(x) for x in s.seeds),
            s.metric,
            *([_cell(s.val_final, ".4f")] if validated else []),
            _cell(s.final, ".4f"),
            _cell(s.best, ".4f"),
            _cell(s.total_mb, ".2f"),
            _cell(s.fme, ".3g"),
            _cell(s.wall_time, ".0f"),
            *[_cell(s.extra.get(key, (None, None)), spec) for key, _, spec in extra_cols],
        ]
        lines.append("| " + " | ".join(row) + " |")
    for method in methods:
        if method.report_note and any(c in extra_cols for c in method.report_columns):
            lines += ["", method.report_note]
    if any(key.endswith("ckpt_mb") for key, _, _ in extra_cols):
        lines += [
            "",
            "Checkpoint storage of a checkpoint after every round (the initial model not "
            "counted): sparse = the whole model for each dense warm-up round, the k float32 "
            "values for each sparse round, and each new mask once at its encoded size; "
            "dense = the whole model every round.",
        ]
    if run_seconds is not None:
        runs = sum(len(x.seeds) for x in summaries)
        lines += ["", f"Wall time of the {runs} finished runs, summed: {run_seconds:.0f} s."]
    if missing:
        lines += ["", f"No finished run yet: {', '.join(missing)}."]
    if plot:
        lines += ["", f"![accuracy vs communication]({plot})"]
    return "\n".join(lines) + "\n"


def mean_curve(label: str, records: Sequence[tuple[int, RunRecord, Path]]) -> RunRecord:
    """A record whose rows are the per-round means over seeds (rounds every seed evaluated)."""
    per_seed = [
        {int(row["round"]): (row, v) for row, v in rec.evaluated()} for _, rec, _ in records
    ]
    rounds = sorted(set.intersection(*(set(d) for d in per_seed)))
    rows = []
    for rnd in rounds:
        points = [d[rnd] for d in per_seed]
        fmes = [p[0].get("cum_fme") for p in points]
        rows.append(
            {
                "round": rnd,
                "metric": points[0][0].get("metric"),
                "score": statistics.fmean(p[1] for p in points),
                "cum_fme": statistics.fmean(f for f in fmes if isinstance(f, (int, float)))
                if all(isinstance(f, (int, float)) for f in fmes)
                else None,
            }
        )
    first = records[0][1]
    return replace(first, name=label, rows=rows)


def write_summary(
    experiment: Experiment,
    plan: Sequence[PlannedRun],
    root: Path,
    *,
    scale: str,
    command: str = "",
    sweep_seconds: float | None = None,
) -> list[LabelSummary]:
    """Write ``summary.md``, ``summary.json`` and, if the experiment plots, the figure."""
    root.mkdir(parents=True, exist_ok=True)
    summaries, missing = summarise(plan, experiment.columns)
    picks = pick_rates(plan, summaries)
    walls = [_wall_time(rec) for recs in collect(plan).values() for _, rec, _ in recs]
    run_seconds = sum(w for w in walls if w is not None) if summaries else None
    plot_name = None
    if experiment.plot and summaries:
        from fish_fl.plots import accuracy_vs_communication_figure

        # With lr grids, each grid's setting is drawn at its picked rate only.
        unpicked = {item.label for item in plan if item.lr is not None} - {
            p.picked.label for p in picks if p.picked is not None
        }
        curves = [
            mean_curve(label, recs)
            for label, recs in collect(plan).items()
            if recs and label not in unpicked
        ]
        try:
            fig = accuracy_vs_communication_figure(curves)
            fig.axes[0].set_title(f"{experiment.name}: {fig.axes[0].get_title()} (mean over seeds)")
            save_figure_atomic(fig, root / "accuracy_vs_communication.png", dpi=150)
            plot_name = "accuracy_vs_communication.png"
        except ValueError as e:
            logger.warning("no plot: %s", e)
    write_text_atomic(
        root / "summary.md",
        format_summary(
            experiment,
            summaries,
            scale=scale,
            command=command,
            missing=missing,
            plot=plot_name,
            run_seconds=run_seconds,
            picks=picks,
        ),
        encoding="utf-8",
    )
    data = {
        "experiment": experiment.name,
        "title": experiment.title,
        "paper": experiment.paper,
        "scale": scale,
        "command": command,
        "sweep_seconds": None if sweep_seconds is None else round(sweep_seconds, 1),
        "run_seconds": run_seconds,
        "labels": [s.to_dict() for s in summaries],
        "missing": missing,
    }
    if picks:
        data["picked"] = [p.to_dict() for p in picks]
    # Strict JSON: a non-finite number is null; anything not JSON is written as text.
    write_text_atomic(root / "summary.json", dumps_strict(data, indent=2, default=str))
    return summaries


# ------------------------------------------------------------------------------
# The command
# ------------------------------------------------------------------------------
def _list_experiments() -> str:
    lines = []
    for name in available_experiments():
        try:
            exp = load_experiment(name)
        except SweepError as e:
            lines.append(f"{name:<15} (invalid: {e})")
            continue
        n = len(expand_settings(exp))
        lines.append(
            f"{name:<15} {exp.paper:<22} {n:>3} settings x {len(exp.seeds)} seeds  {exp.title}"
        )
    return "\n".join(lines)


def sweep_command(
    experiment: Annotated[
        str | None,
        typer.Argument(help="Experiment name (see --list) or a TOML file.", show_default=False),
    ] = None,
    scale: Annotated[
        str, typer.Option("--scale", help="cpu (small, this machine) or paper (GPU).")
    ] = "cpu",
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds", help="Run the first N seeds of the experiment.", show_default=False
        ),
    ] = None,
    seed: Annotated[
        list[int] | None,
        typer.Option(
            "--seed",
            help="Run exactly this seed (repeatable), instead of --seeds.",
            show_default=False,
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option("--only", help="Run only this setting or value label (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Sweep root folder (default: runs/sweeps, or runs/sweeps-paper at paper scale).",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Validate and list the runs; run nothing.")
    ] = False,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config key in every run (repeatable)."),
    ] = None,
    summary_only: Annotated[
        bool,
        typer.Option("--summary-only", help="Write the summary of the finished runs; run nothing."),
    ] = False,
    list_: Annotated[bool, typer.Option("--list", help="List the experiments and exit.")] = False,
) -> None:
    """Run one experiment of the paper: every setting x seed, then a summary table.

    Runs go to OUT/EXPERIMENT/LABEL/seed-S; finished runs are skipped, so an
    interrupted sweep continues. Writes OUT/EXPERIMENT/summary.md and summary.json.
    """
    if list_:
        typer.echo(_list_experiments())
        return
    if experiment is None:
        typer.echo("fish-fl: error: name an experiment (see fish-fl sweep --list)", err=True)
        raise typer.Exit(1)
    if out is None:
        out = Path("runs/sweeps" if scale == "cpu" else f"runs/sweeps-{scale}")
    try:
        exp = load_experiment(experiment)
        chosen = seed or ()
        plan = plan_sweep(
            exp,
            out,
            scale=scale,
            seeds=seeds,
            seed_list=chosen,
            only=only or (),
            overrides=set_ or [],
        )
        # The summary covers every setting of the experiment, not only those run now.
        everything = (
            plan_sweep(exp, out, scale=scale, seeds=seeds, seed_list=chosen, overrides=set_ or [])
            if only
            else plan
        )
    except ValueError as e:
        typer.echo(f"fish-fl: error: {e}", err=True)
        raise typer.Exit(1) from None
    todo = [p for p in plan if not p.done]
    typer.echo(
        f"fish-fl sweep {exp.name} ({exp.paper}, scale {scale}): {len(plan)} runs, "
        f"{len(plan) - len(todo)} finished before -> {out / exp.name}"
    )
    if dry_run:
        for item in plan:
            c = item.config
            typer.echo(
                f"  {'done' if item.done else 'todo'}  {item.label}/seed-{item.seed}: "
                f"{c.model} {c.task} {c.mask_method} density={c.density:g} "
                f"clients={c.num_clients} rounds={c.rounds} local-steps={c.local_steps} "
                f"lr={c.lr:g}"
                + (f" validation-examples={c.validation_examples}" if c.validation_examples else "")
            )
        return
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.WARNING)
    command = " ".join(
        ["fish-fl sweep", exp.name]
        + ([f"--scale {scale}"] if scale != "cpu" else [])
        + ([f"--seeds {seeds}"] if seeds is not None else [])
        + [f"--seed {s}" for s in seed or []]
        + [f"--only {o}" for o in only or []]
        + [f"--set {s}" for s in set_ or []]
    )
    t0 = time.monotonic()
    failures = [] if summary_only else run_sweep(plan)
    summaries = write_summary(
        exp,
        everything,
        out / exp.name,
        scale=scale,
        command=command,
        sweep_seconds=None if summary_only else time.monotonic() - t0,
    )
    typer.echo((out / exp.name / "summary.md").read_text(encoding="utf-8"))
    logger.info("summary of %d labels in %s", len(summaries), out / exp.name)
    if failures:
        typer.echo(
            f"fish-fl: error: {len(failures)} of {len(todo)} runs failed; first: {failures[0]}",
            err=True,
        )
        raise typer.Exit(1)
