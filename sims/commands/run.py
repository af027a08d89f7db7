"""``fish-fl run PRESET``: run a federated simulation and write its run folder."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from fish_fl.config import RunConfig, parse_override

__all__ = ["load_preset", "preset_path", "resume_config", "run_command"]

PRESETS = Path(__file__).resolve().parent.parent / "presets"
#: What ``--resume`` may change: how long the run goes on, and where it runs.
_RESUME_KEYS = {"rounds", "ray-address"}


def preset_path(preset: str) -> Path:
    """A preset name (``sst2-minilm``) or a path to a TOML file."""
    candidate = Path(preset)
    if candidate.suffix == ".toml" or candidate.is_file():
        return candidate
    path = PRESETS / f"{preset}.toml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in PRESETS.glob("*.toml")))
        raise ValueError(f"unknown preset {preset!r}; presets: {names}")
    return path


def load_preset(preset: str, overrides: list[str] | None = None) -> RunConfig:
    values = dict(parse_override(o) for o in overrides or [])
    return RunConfig.from_toml(preset_path(preset), values)


def resume_config(run_dir: Path, overrides: list[str] | None) -> tuple[RunConfig, Path]:
    """The configuration of the run in ``run_dir``, checked to be resumable."""
    from strategies.state import CHECKPOINT, read_checkpoint_round

    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ValueError(f"cannot resume {run_dir}: not a run folder (no config.json)")
    if not (run_dir / CHECKPOINT).is_file():
        raise ValueError(f"cannot resume {run_dir}: no {CHECKPOINT} (no round completed)")
    values = dict(parse_override(o) for o in overrides or [])
    if set(values) - _RESUME_KEYS:
        bad = ", ".join(sorted(set(values) - _RESUME_KEYS))
        raise ValueError(
            "--resume keeps the run's configuration; only rounds and ray-address may be set, "
            f"not {bad}"
        )
    config = RunConfig.from_mapping({**json.loads(config_path.read_text()), **values})
    done = read_checkpoint_round(run_dir / CHECKPOINT)
    if done >= config.rounds:
        raise ValueError(
            f"cannot resume {run_dir}: all {config.rounds} rounds are done "
            "(--set rounds=N with a larger N extends it)"
        )
    return config, run_dir


def run_command(
    preset: Annotated[
        str, typer.Argument(help="Preset name (see sims/presets) or a TOML file.")
    ] = "sst2-minilm",
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", "-s", help="Override a config key: --set rounds=5 (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Run folder (default: runs/<name>-<time>).")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show Flower's and Ray's logs.")
    ] = False,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Continue the run in this folder after its last complete round "
            "(only --set rounds=N, to extend it, and --set ray-address=... may change).",
        ),
    ] = None,
) -> None:
    """Run a Flower simulation (Ray backend) of a preset; print a per-round table."""
    from fish_fl.preflight import footprint, preflight
    from strategies.server_app import default_run_dir

    from ..simulate import simulate

    if resume is not None:
        config, run_dir = resume_config(resume, set_)
        preset = f"resume of {resume}"
    else:
        config = load_preset(preset, set_)
        run_dir = out or default_run_dir(config, Path(preset).stem)
        if run_dir.exists() and any(run_dir.iterdir()):
            raise ValueError(f"run folder {run_dir} exists and is not empty; choose another --out")
    preflight(config)  # before anything is printed, written or started
    if not verbose:
        for name in ("flwr", "ray"):
            logging.getLogger(name).setLevel(logging.WARNING)
    typer.echo(f"fish-fl: {preset} -> {run_dir}")
    typer.echo(
        f"  {config.model} on {config.task}, {config.num_clients} clients, {config.rounds} rounds, "
        f"{config.mask_method} mask at density {config.density:g}"
    )
    shape = footprint(config)
    for line in shape.lines() if shape is not None else []:
        typer.echo(f"  {line}")
    summary = simulate(config, run_dir, verbose=verbose, resume=resume is not None)
    final = summary.get("final") or {}
    typer.echo(
        f"done in {summary.get('wall_time', 0):.0f}s: {final.get('metric', 'metric')} "
        f"{final.get('score', float('nan')):.4f} after round {final.get('round', '-')}; "
        f"run folder {run_dir}"
    )
    typer.echo(
        json.dumps(
            {"run_dir": str(run_dir), **{k: summary[k] for k in ("final", "best") if k in summary}}
        )
    )
