"""``fish-fl sweep``: experiment files, grids, scales, validation, resuming and summaries."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fish_fl.config import RunConfig
from fish_fl.plots import load_run
from sims.commands.sweep import (
    PlannedRun,
    SweepError,
    available_experiments,
    checkpoint_stats,
    expand_settings,
    load_experiment,
    mean_curve,
    mean_std,
    plan_sweep,
    resolve_overrides,
    run_sweep,
    summarise,
    write_summary,
)
from tests.flower_harness import tiny_scale_toml

SHIPPED = [
    "attacks",
    "checkpointing",
    "density",
    "disjoint",
    "fair",
    "fisher-kind",
    "from-scratch",
    "samples",
    "supermask",
    "table1",
]

GRID = """
[experiment]
title = "a grid"
paper = "Figure 0"
preset = "sst2-minilm"
seeds = [3, 5]
plot = true

[scale.cpu]
rounds = 4
lr = 0.01

[scale.cpu.label.b]
lr = 0.02

[scale.paper]
preset = "glue-bert-large"
rounds = 7

[scale.paper.label.y]
rounds = 9

[[axis]]
name = "method"
values = [
  { label = "a", mask-method = "fish", density = 0.01 },
  { label = "b", mask-method = "random", density = 0.02 },
]

[[axis]]
name = "clients"
values = [
  { label = "x", num-clients = 1 },
  { label = "y", num-clients = 2, density = 0.03 },
  { label = "z", num-clients = 3 },
]
"""


def _experiment(tmp_path: Path, text: str = GRID, name: str = "grid") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------
# Experiment files and the grid
# --------------------------------------------------------------------------
def test_grid_is_the_product_of_the_axes_first_axis_slowest(tmp_path: Path) -> None:
    exp = load_experiment(str(_experiment(tmp_path)))
    settings = expand_settings(exp)
    assert [s.label for s in settings] == ["a-x", "a-y", "a-z", "b-x", "b-y", "b-z"]
    assert settings[1].parts == ("a", "y")
    # Later axes win on a shared key: y sets density 0.03 over a's 0.01.
    assert settings[1].overrides == {"mask-method": "fish", "density": 0.03, "num-clients": 2}
    assert settings[3].overrides == {"mask-method": "random", "density": 0.02, "num-clients": 1}
    assert exp.seeds == (3, 5) and exp.plot and exp.paper == "Figure 0"


def test_overrides_resolve_scale_then_setting_then_label_then_set(tmp_path: Path) -> None:
    exp = load_experiment(str(_experiment(tmp_path)))
    by_label = {s.label: s for s in expand_settings(exp)}
    preset, values = resolve_overrides(exp, by_label["b-x"], "cpu", {"lr": "0.5"})
    assert preset == "sst2-minilm"
    assert values == {
        "rounds": 4,
        "lr": "0.5",  # --set wins over the label table's 0.02
        "mask-method": "random",
        "density": 0.02,
        "num-clients": 1,
    }
    assert resolve_overrides(exp, by_label["b-x"], "cpu")[1]["lr"] == 0.02  # label over scale
    assert resolve_overrides(exp, by_label["a-x"], "cpu")[1]["lr"] == 0.01
    preset, values = resolve_overrides(exp, by_label["a-y"], "paper")
    assert preset == "glue-bert-large" and values["rounds"] == 9  # per-label paper table
    assert resolve_overrides(exp, by_label["a-z"], "paper")[1]["rounds"] == 7
    with pytest.raises(SweepError, match="--scale='gpu' is not allowed"):
        resolve_overrides(exp, by_label["a-z"], "gpu")


def test_plan_builds_every_run_with_its_seed_and_folder(tmp_path: Path) -> None:
    exp = load_experiment(str(_experiment(tmp_path)))
    plan = plan_sweep(exp, tmp_path / "out", only=["b-y"])
    assert [(p.label, p.seed) for p in plan] == [("b-y", 3), ("b-y", 5)]
    config = plan[1].config
    assert config.seed == 5 and config.rounds == 4 and config.lr == 0.02
    assert config.mask_method == "random" and config.density == 0.03 and config.num_clients == 2
    assert config.model == "minilm" and config.local_steps == 20  # from the preset
    assert plan[1].run_dir == tmp_path / "out" / "grid" / "b-y" / "seed-5"
    # --only with a value label selects every setting holding it; --seeds extends the list.
    plan = plan_sweep(exp, tmp_path / "out", only=["x"], seeds=3)
    assert [(p.label, p.seed) for p in plan] == [
        ("a-x", 3),
        ("a-x", 5),
        ("a-x", 6),
        ("b-x", 3),
        ("b-x", 5),
        ("b-x", 6),
    ]
    assert [p.seed for p in plan_sweep(exp, tmp_path, seeds=1)][:2] == [3, 3]
    # --seed names the seeds exactly: the missing ones of a sweep, or new ones.
    plan = plan_sweep(exp, tmp_path / "out", only=["b-y"], seed_list=[5, 9])
    assert [(p.label, p.seed, p.config.seed) for p in plan] == [("b-y", 5, 5), ("b-y", 9, 9)]
    assert plan[1].run_dir == tmp_path / "out" / "grid" / "b-y" / "seed-9"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_experiments_are_valid_at_both_scales(name: str) -> None:
    assert name in available_experiments()
    exp = load_experiment(name)
    cpu = plan_sweep(exp, Path("unused"), seeds=1, check_paths=False)
    paper = plan_sweep(exp, Path("unused"), scale="paper", seeds=1, check_paths=False)
    # One run per setting, or per rate of a setting's lr grid.
    assert len(cpu) == len(paper) >= len(expand_settings(exp))
    assert [*dict.fromkeys(p.setting for p in cpu)] == [s.label for s in expand_settings(exp)]
    assert len(exp.seeds) >= 3
    assert all(p.config.data_source == "hub" for p in paper)


def test_paper_scale_overrides_table1() -> None:
    exp = load_experiment("table1")
    only = ["cola-fish-0.5pc-fed2", "sst2-dense-single", "stsb-bitfit-fed2"]
    paper = {
        (p.label, p.seed): p.config for p in plan_sweep(exp, Path("x"), scale="paper", only=only)
    }
    only = ["stsb-fish-0.08pc-single", "sst2-dense-fed2"]
    cpu = {
        (p.label, p.seed): p.config
        for p in plan_sweep(exp, Path("x"), only=only, check_paths=False)
    }
    fish = paper[("cola-fish-0.5pc-fed2", 0)]
    assert fish.model == "bert-large-cased-whole-word-masking" and fish.data_source == "hub"
    assert (fish.fisher_samples, fish.lr, fish.batch_size) == (1024, 5e-5, 16)
    assert (fish.task, fish.rounds, fish.num_clients, fish.local_steps) == ("cola", 19, 2, 100)
    single = paper[("sst2-dense-single", 2)]
    assert (single.num_clients, single.local_steps, single.rounds, single.lr) == (1, 200, 147, 5e-5)
    assert single.mask_method == "dense" and single.seed == 2
    assert paper[("stsb-bitfit-fed2", 1)].rounds == 13
    # CPU scale: MiniLM on the local GLUE subsets; dense fine-tuning at its own lr.
    c = cpu[("stsb-fish-0.08pc-single", 0)]
    assert (c.model, c.data_source, c.train_examples) == ("minilm", "local", 4000)
    assert (c.density, c.num_clients, c.local_steps, c.lr) == (0.0008, 1, 40, 2e-3)
    assert cpu[("sst2-dense-fed2", 0)].lr == 1e-4


def test_paper_scale_overrides_from_scratch() -> None:
    exp = load_experiment("from-scratch")
    paper = {p.label: p.config for p in plan_sweep(exp, Path("x"), scale="paper", seeds=1)}
    cpu = {p.label: p.config for p in plan_sweep(exp, Path("x"), seeds=1, check_paths=False)}
    assert paper["ls20-fish-10pc"].width == 64 and cpu["ls20-fish-10pc"].width == 16
    assert (paper["ls10-fish-2pc"].local_steps, paper["ls10-fish-2pc"].rounds) == (25, 784)
    assert paper["ls10-fish-2pc"].warmup_rounds == 40 and paper["ls10-dense"].warmup_rounds == 0
    single = cpu["ls40-single"]
    assert (single.num_clients, single.batch_size, single.warmup_rounds) == (1, 128, 0)
    # Every CPU setting takes the same number of local steps per worker.
    assert {c.local_steps * c.rounds for c in cpu.values()} == {240}


# --------------------------------------------------------------------------
# Validation: every run checked before any starts
# --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GRID.replace("lr = 0.02", "lr = -1.0"), r"grid/b-x/seed-3: lr=-1.0 must be > 0.0"),
        (GRID.replace('"random"', '"nonsense"'), r"grid/b-x/seed-3: mask-method='nonsense'"),
        (GRID.replace("rounds = 4", "colour = 4"), r"grid/a-x/seed-3: unknown config key 'colour'"),
        (GRID.replace('preset = "sst2-minilm"', ""), "needs preset"),
        (GRID.replace('label = "z"', 'label = "y"'), "repeats a label"),
        (GRID.replace('label = "z"', 'label = "z z"'), "label must be"),
        (GRID.replace("seeds = [3, 5]", "seeds = [3, 3]"), "distinct"),
        (GRID.replace("[scale.paper]", "[scale.gpu]"), "unknown scale 'gpu'"),
        (GRID.replace("[experiment]", "[experiment"), "not valid TOML"),
    ],
)
def test_bad_experiments_fail_before_any_run(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        plan_sweep(load_experiment(str(_experiment(tmp_path, text))), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_sweep_options(tmp_path: Path) -> None:
    exp = load_experiment(str(_experiment(tmp_path)))
    with pytest.raises(SweepError, match="--only 'c' matches no setting"):
        plan_sweep(exp, tmp_path, only=["c"])
    with pytest.raises(SweepError, match="use --seeds"):
        plan_sweep(exp, tmp_path, overrides=["seed=4"])
    with pytest.raises(SweepError, match="--seeds=0 must be >= 1"):
        plan_sweep(exp, tmp_path, seeds=0)
    with pytest.raises(SweepError, match="give --seeds N or --seed S, not both"):
        plan_sweep(exp, tmp_path, seeds=2, seed_list=[1])
    with pytest.raises(SweepError, match="--seed lists a seed twice"):
        plan_sweep(exp, tmp_path, seed_list=[1, 1])
    with pytest.raises(SweepError, match="--seed must be an integer >= 0"):
        plan_sweep(exp, tmp_path, seed_list=[-1])
    with pytest.raises(SweepError, match="grid/a-x/seed-3: rounds=0 must be >= 1"):
        plan_sweep(exp, tmp_path, overrides=["rounds=0"])
    with pytest.raises(SweepError, match="unknown experiment 'nope'"):
        load_experiment("nope")
    missing = GRID.replace(
        "rounds = 4\n", 'rounds = 4\ndata-source = "local"\ndata-dir = "no/such"\n'
    )
    with pytest.raises(SweepError, match="data-dir='no/such' does not exist"):
        plan_sweep(load_experiment(str(_experiment(tmp_path, missing))), tmp_path)


def test_cli_bad_sweep_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sims.cli",
            "sweep",
            str(_experiment(tmp_path)),
            "--set",
            "density=2",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("fish-fl: error:")]
    assert len(lines) == 1 and "grid/a-x/seed-3: density=2.0 must be <= 1" in lines[0]
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------
# Synthetic run folders: resuming and the summary maths
# --------------------------------------------------------------------------
def _write_run(
    config: RunConfig,
    run_dir: Path,
    scores: Sequence[float | None],
    *,
    round_bytes: tuple[int, int] = (1000, 3000),
    full: int = 40_000,
    wall_time: float = 10.0,
    k: int = 100,
    phases: Sequence[str] | None = None,
    versions: Sequence[int] | None = None,
    summary: bool = True,
) -> Path:
    """A run folder as the server writes it: scores[0] is round 0 (before training)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict()))
    rows, cum_up, cum_down = [], 0, 0
    for rnd, score in enumerate(scores):
        up, down = round_bytes if rnd else (0, 0)
        cum_up, cum_down = cum_up + up, cum_down + down
        rows.append(
            {
                "round": rnd,
                "phase": "init" if rnd == 0 else (phases[rnd - 1] if phases else "sparse"),
                "metric": "accuracy",
                "score": score,
                "eval": None if score is None else {"accuracy": score},
                "k": k if rnd else 0,
                "mask_version": (versions[rnd - 1] if versions else 1) if rnd else 0,
                "bytes_up": up,
                "bytes_down": down,
                "cum_bytes_up": cum_up,
                "cum_bytes_down": cum_down,
                "cum_fme": (cum_up + cum_down) / full,
                "wall_time": wall_time * rnd / max(len(scores) - 1, 1),
            }
        )
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if summary:
        (run_dir / "summary.json").write_text(
            json.dumps({"full_model_bytes": full, "wall_time": wall_time, "rounds": len(rows) - 1})
        )
    return run_dir


def _plan(tmp_path: Path, **kwargs: Any) -> list[PlannedRun]:
    exp = load_experiment(str(_experiment(tmp_path)))
    return plan_sweep(exp, tmp_path / "out", only=["a-x", "b-x"], **kwargs)


def test_finished_runs_are_skipped_and_unfinished_ones_run_again(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert [(p.label, p.seed) for p in plan] == [("a-x", 3), ("a-x", 5), ("b-x", 3), ("b-x", 5)]
    _write_run(plan[0].config, plan[0].run_dir, [0.5, 0.6])  # finished
    _write_run(plan[2].config, plan[2].run_dir, [0.5, 0.6], summary=False)  # interrupted
    (plan[2].run_dir / "stale.txt").write_text("left over")
    calls: list[tuple[int, Path]] = []
    failed: list[int] = []

    def runner(config: RunConfig, run_dir: Path) -> dict[str, Any]:
        assert not run_dir.exists()  # an interrupted folder is emptied first
        calls.append((config.seed, run_dir))
        if config.mask_method == "random" and config.seed == 5 and not failed:
            failed.append(config.seed)
            _write_run(config, run_dir, [0.5], summary=False)
            raise RuntimeError("out of memory")
        _write_run(config, run_dir, [0.5, 0.7])
        return {}

    plan = _plan(tmp_path)  # planned again, as a resumed sweep would be
    assert [p.done for p in plan] == [True, False, False, False]
    failures = run_sweep(plan, runner)
    assert [c[1] for c in calls] == [plan[1].run_dir, plan[2].run_dir, plan[3].run_dir]
    assert failures == ["b-x/seed-5: out of memory"]
    assert not (plan[2].run_dir / "stale.txt").exists()
    calls.clear()
    assert run_sweep(_plan(tmp_path), runner) == []  # only the run that failed is run again
    assert [c[1] for c in calls] == [plan[3].run_dir]


def test_a_finished_run_of_another_config_is_refused(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _write_run(plan[0].config.replace(lr=0.3), plan[0].run_dir, [0.5, 0.6])
    with pytest.raises(SweepError, match=r"grid/a-x/seed-3: .* lr=0.3, the sweep plans lr=0.01"):
        _plan(tmp_path)
    # Cosmetic keys do not count.
    _write_run(plan[0].config.replace(progress=False, out_dir="elsewhere"), plan[0].run_dir, [0.5])
    assert _plan(tmp_path)[0].done
    # A key the finished run does not know (added to RunConfig since) counts as
    # its default; a planned value other than the default is refused.
    config_file = plan[0].run_dir / "config.json"
    older = json.loads(config_file.read_text())
    del older["supermask-downlink"], older["lr"]
    config_file.write_text(json.dumps(older))
    with pytest.raises(SweepError, match=r"lr=0.001, the sweep plans lr=0.01"):
        _plan(tmp_path)
    older["lr"] = 0.01
    config_file.write_text(json.dumps(older))
    assert _plan(tmp_path)[0].done


def test_mean_std_by_hand() -> None:
    assert mean_std([]) == (None, None)
    assert mean_std([0.25]) == (0.25, None)
    mean, std = mean_std([0.7, 0.8, 0.9])
    assert mean == pytest.approx(0.8) and std == pytest.approx(0.1)  # sqrt((0.01 + 0 + 0.01) / 2)
    mean, std = mean_std([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and std == pytest.approx(math.sqrt(7 / 3))


def test_summary_means_and_stds_over_seeds(tmp_path: Path) -> None:
    plan = plan_sweep(
        load_experiment(str(_experiment(tmp_path))), tmp_path / "out", only=["a-x", "b-x"], seeds=3
    )
    runs = {(p.label, p.seed): p for p in plan}
    # a-x: finals 0.8, 0.7, 0.9 (mean 0.8, std 0.1); bests 0.8, 0.75, 0.9 (mean 0.8167).
    # Round 0 (0.95, before training) counts for neither; round 2 of seed 5 was not evaluated.
    for seed, scores, wall in ((3, [0.95, 0.6, 0.8], 10.0), (5, [0.95, 0.75, None, 0.7], 20.0)):
        p = runs[("a-x", seed)]
        _write_run(p.config, p.run_dir, scores, wall_time=wall)
    p = runs[("a-x", 6)]
    _write_run(p.config, p.run_dir, [0.1, 0.9], round_bytes=(2000, 6000), wall_time=60.0)
    # b-x: one finished seed (no std), one unfinished run (ignored).
    p = runs[("b-x", 3)]
    _write_run(p.config, p.run_dir, [0.5, 0.55, 0.6])
    p = runs[("b-x", 5)]
    _write_run(p.config, p.run_dir, [0.5, 0.99], summary=False)

    summaries, missing = summarise(plan)
    assert missing == []
    a, b = summaries
    assert a.label == "a-x" and a.seeds == (3, 5, 6) and a.method == "fish"
    assert a.final[0] == pytest.approx(0.8) and a.final[1] == pytest.approx(0.1)
    assert a.best[0] == pytest.approx((0.8 + 0.75 + 0.9) / 3)
    assert a.best[1] == pytest.approx(0.07637626, rel=1e-6)
    # MB up + down: seed 3 two rounds x 4000 B, seed 5 three rounds, seed 6 one round of 8000 B.
    assert a.total_mb[0] == pytest.approx((0.008 + 0.012 + 0.008) / 3)
    assert a.fme[0] == pytest.approx((0.2 + 0.3 + 0.2) / 3)
    assert a.wall_time[0] == pytest.approx(30.0) and a.wall_time[1] == pytest.approx(26.457513)
    assert b.seeds == (3,) and b.final == (0.6, None) and b.best == (0.6, None)

    write_summary(load_experiment(str(tmp_path / "grid.toml")), plan, tmp_path / "s", scale="cpu")
    text = (tmp_path / "s" / "summary.md").read_text()
    assert "| a-x | fish | 1% | 3,5,6 | accuracy | 0.8000 ± 0.1000 | 0.8167 ± 0.0764 |" in text
    assert "| b-x | random | 2% | 3 | accuracy | 0.6000 | 0.6000 |" in text
    assert "![accuracy vs communication](accuracy_vs_communication.png)" in text
    assert "Wall time of the 4 finished runs, summed: 100 s." in text  # 10 + 20 + 60 + 10
    data = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert data["run_seconds"] == pytest.approx(100.0)
    assert data["labels"][0]["final"] == {"mean": pytest.approx(0.8), "std": pytest.approx(0.1)}
    assert data["labels"][1]["final"]["std"] is None
    assert (tmp_path / "s" / "accuracy_vs_communication.png").read_bytes()[:4] == b"\x89PNG"


def test_summary_lists_labels_without_finished_runs(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _write_run(plan[0].config, plan[0].run_dir, [0.5, 0.6])
    summaries, missing = summarise(plan)
    assert [s.label for s in summaries] == ["a-x"] and missing == ["b-x"]


def test_mean_curve_averages_rounds_every_seed_evaluated(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    _write_run(plan[0].config, plan[0].run_dir, [0.5, 0.6, 0.8])
    _write_run(plan[1].config, plan[1].run_dir, [0.3, None, 0.6], round_bytes=(3000, 5000))
    records = [(p.seed, load_run(p.run_dir), p.run_dir) for p in plan[:2]]
    curve = mean_curve("a-x", records)
    assert curve.name == "a-x" and [r["round"] for r in curve.rows] == [0, 2]
    assert curve.rows[1]["score"] == pytest.approx(0.7)
    assert curve.rows[1]["cum_fme"] == pytest.approx((8000 / 40_000 + 16_000 / 40_000) / 2)


def test_checkpoint_storage_by_hand(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    run_dir = _write_run(
        plan[0].config,
        plan[0].run_dir,
        [0.1, 0.2, 0.3, 0.4, 0.5],
        k=100,
        full=40_000,
        phases=["dense", "sparse", "sparse", "sparse"],
        versions=[1, 2, 2, 3],
    )
    (run_dir / "mask_stats.json").write_text(
        json.dumps(
            {"1": {"encoded_bytes": 0}, "2": {"encoded_bytes": 70}, "3": {"encoded_bytes": 90}}
        )
    )
    stats = checkpoint_stats(load_run(run_dir), run_dir)
    # One dense round (40,000 B), three sparse rounds of 400 B, masks 2 and 3 once each.
    assert stats["sparse_ckpt_mb"] == pytest.approx((40_000 + 3 * 400 + 70 + 90) / 1e6)
    assert stats["dense_ckpt_mb"] == pytest.approx(4 * 40_000 / 1e6)


# --------------------------------------------------------------------------
# A real sweep
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_real_sweep_two_settings_one_seed(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))
    scale = tiny_scale_toml(shared_data, "lr")
    text = f"""
[experiment]
title = "tiny"
preset = "cifar10-resnet34"
seeds = [0]
plot = true

[scale.cpu]
{scale}
warmup-rounds = 0
progress = false

[[axis]]
name = "method"
values = [
  {{ label = "fish", mask-method = "fish", density = 0.05 }},
  {{ label = "random", mask-method = "random", density = 0.05 }},
]
"""
    exp = load_experiment(str(_experiment(tmp_path, text, "tiny")))
    plan = plan_sweep(exp, tmp_path / "out")
    assert [p.label for p in plan] == ["fish", "random"]
    assert run_sweep(plan) == []
    summaries = write_summary(exp, plan, tmp_path / "out" / "tiny", scale="cpu")
    assert [s.label for s in summaries] == ["fish", "random"]
    for s, p in zip(summaries, plan, strict=True):
        run = json.loads((p.run_dir / "summary.json").read_text())
        assert s.final == (run["final"]["score"], None)
        assert s.method == p.config.mask_method and s.total_mb[0] is not None and s.total_mb[0] > 0
    data = json.loads((tmp_path / "out" / "tiny" / "summary.json").read_text())
    assert [entry["label"] for entry in data["labels"]] == ["fish", "random"]
    assert (tmp_path / "out" / "tiny" / "accuracy_vs_communication.png").stat().st_size > 1000

    def never(config: RunConfig, run_dir: Path) -> dict[str, Any]:
        raise AssertionError(f"{run_dir} ran again")

    assert run_sweep(plan_sweep(exp, tmp_path / "out"), never) == []


def test_command_summary_only_and_dry_run_run_nothing(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from sims.commands.sweep import sweep_command

    app = typer.Typer()
    app.command()(sweep_command)
    path = str(_experiment(tmp_path))
    plan = _plan(tmp_path)
    _write_run(plan[0].config, plan[0].run_dir, [0.5, 0.6])
    common = [path, "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*common, "--dry-run", "--only", "a-x"])
    assert result.exit_code == 0, result.output
    assert "2 runs, 1 finished before" in result.output
    assert "done  a-x/seed-3" in result.output and "todo  a-x/seed-5" in result.output
    result = CliRunner().invoke(app, [*common, "--dry-run", "--only", "a-x", "--seed", "5"])
    assert result.exit_code == 0, result.output
    assert "1 runs, 0 finished before" in result.output and "todo  a-x/seed-5" in result.output
    result = CliRunner().invoke(app, [*common, "--dry-run", "--seed", "5", "--seeds", "2"])
    assert result.exit_code == 1 and "not both" in result.output
    assert not (tmp_path / "out" / "grid" / "summary.md").exists()
    result = CliRunner().invoke(app, [*common, "--summary-only"])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "out" / "grid" / "summary.md").read_text()
    assert "| a-x | fish | 1% | 3 |" in text
    assert "No finished run yet: a-y, a-z, b-x, b-y, b-z." in text
    assert not plan[1].run_dir.exists()
    result = CliRunner().invoke(app, [*common, "--only", "q"])
    assert result.exit_code == 1 and "--only 'q' matches no setting" in result.output
