"""``fish-fl sweep`` with learning-rate grids: expansion, checks, the pick, a real sweep."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fish_fl.config import RunConfig
from sims.commands.sweep import (
    PlannedRun,
    SweepError,
    load_experiment,
    pick_rates,
    plan_sweep,
    run_sweep,
    summarise,
    write_summary,
)
from tests.flower_harness import tiny_scale_toml

GRID = """
[experiment]
title = "an lr grid"
preset = "sst2-minilm"
seeds = [0, 1]

[scale.cpu]
rounds = 3
validation-examples = 300

[scale.paper]
preset = "glue-bert-large"
validation-examples = 1000

[scale.paper.label.dense]
lr-grid = [5e-5, 1e-5]

[[axis]]
name = "method"
values = [
  { label = "dense", mask-method = "dense", density = 1.0, lr-grid = [1e-4, 5e-5, 1e-5] },
  { label = "fish", mask-method = "fish", density = 0.005, lr-grid = [2e-3, 1e-3] },
  { label = "bitfit", mask-method = "bitfit", lr = 3e-3 },
]
"""


def _experiment(tmp_path: Path, text: str = GRID, name: str = "grid") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def _plan(tmp_path: Path, **kwargs: Any) -> list[PlannedRun]:
    return plan_sweep(load_experiment(str(_experiment(tmp_path))), tmp_path / "out", **kwargs)


# --------------------------------------------------------------------------
# Expansion
# --------------------------------------------------------------------------
def test_an_lr_grid_expands_into_one_run_per_rate_and_seed(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    assert [(p.label, p.seed) for p in plan] == [
        ("dense-lr0.0001", 0),
        ("dense-lr0.0001", 1),
        ("dense-lr5e-05", 0),
        ("dense-lr5e-05", 1),
        ("dense-lr1e-05", 0),
        ("dense-lr1e-05", 1),
        ("fish-lr0.002", 0),
        ("fish-lr0.002", 1),
        ("fish-lr0.001", 0),
        ("fish-lr0.001", 1),
        ("bitfit", 0),
        ("bitfit", 1),
    ]
    assert [p.config.lr for p in plan[::2]] == [1e-4, 5e-5, 1e-5, 2e-3, 1e-3, 3e-3]
    assert [p.lr for p in plan[::2]] == [1e-4, 5e-5, 1e-5, 2e-3, 1e-3, None]
    assert [p.setting for p in plan[::2]] == ["dense"] * 3 + ["fish"] * 2 + ["bitfit"]
    assert all(p.config.validation_examples == 300 and p.config.rounds == 3 for p in plan)
    assert plan[3].config.seed == 1 and plan[3].config.mask_method == "dense"
    assert plan[3].run_dir == tmp_path / "out" / "grid" / "dense-lr5e-05" / "seed-1"
    # A per-label table of the scale replaces the axis value's grid.
    paper = _plan(tmp_path, scale="paper", only=["dense"], seeds=1)
    assert [(p.label, p.config.lr, p.config.validation_examples) for p in paper] == [
        ("dense-lr5e-05", 5e-5, 1000),
        ("dense-lr1e-05", 1e-5, 1000),
    ]
    # --only takes a setting (every rate of it) or one rate's label.
    assert [p.label for p in _plan(tmp_path, only=["fish"], seeds=1)] == [
        "fish-lr0.002",
        "fish-lr0.001",
    ]
    assert [p.label for p in _plan(tmp_path, only=["dense-lr5e-05"], seeds=1)] == ["dense-lr5e-05"]


def _grid_text(value: str, validation: int = 300) -> str:
    return f"""
[experiment]
preset = "sst2-minilm"

[scale.cpu]
validation-examples = {validation}

[[axis]]
values = [{{ label = "dense", mask-method = "dense", density = 1.0, lr-grid = {value} }}]
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_grid_text("[1e-4, 5e-5]", validation=0), "bad/dense-lr0.0001/seed-0: an lr-grid picks "),
        (_grid_text("[]"), r"bad/dense: lr-grid must be a non-empty list of distinct rates > 0"),
        (_grid_text("[1e-4, -1e-4]"), r"got \[0.0001, -0.0001\]"),
        (_grid_text("[1e-4, 1e-4]"), "distinct rates"),
        (_grid_text("'1e-4'"), "got '1e-4'"),
        (
            _grid_text("[1e-4]") + "\n[scale.cpu.label.fish]\nlr-grid = [1e-3]\n",
            r"\[scale.cpu.label.fish\] names no value label of the axes; labels: dense",
        ),
    ],
)
def test_bad_lr_grids_fail_before_any_run(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(SweepError, match=message):
        plan_sweep(load_experiment(str(_experiment(tmp_path, text, "bad"))), tmp_path / "out")


def test_set_lr_conflicts_with_a_grid(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=r"grid/dense: --set lr=... conflicts with its lr-grid"):
        _plan(tmp_path, overrides=["lr=0.1"])
    # A setting without a grid takes it.
    assert [p.config.lr for p in _plan(tmp_path, only=["bitfit"], overrides=["lr=0.1"])] == [
        0.1
    ] * 2
    with pytest.raises(SweepError, match="--set lr-grid=... is not a run key"):
        _plan(tmp_path, overrides=["lr-grid=[1]"])


# --------------------------------------------------------------------------
# The pick: by validation score, never by the dev score
# --------------------------------------------------------------------------
def _write_run(item: PlannedRun, scores: Sequence[float], vals: Sequence[float]) -> None:
    """A finished run folder: per round (0 first) its dev score and validation score."""
    item.run_dir.mkdir(parents=True, exist_ok=True)
    (item.run_dir / "config.json").write_text(json.dumps(item.config.to_dict()))
    rows = [
        {
            "round": rnd,
            "metric": "accuracy",
            "score": score,
            "eval": {"accuracy": score},
            "val_score": val,
            "val_eval": {"accuracy": val},
            "cum_bytes_up": 100 * rnd,
            "cum_bytes_down": 300 * rnd,
            "bytes_up": 100 if rnd else 0,
            "bytes_down": 300 if rnd else 0,
            "cum_fme": rnd / 10,
        }
        for rnd, (score, val) in enumerate(zip(scores, vals, strict=True))
    ]
    (item.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (item.run_dir / "summary.json").write_text(json.dumps({"full_model_bytes": 4000}))


def test_the_rate_is_picked_by_validation_score_not_dev_score(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    runs = {(p.label, p.seed): p for p in plan}
    # dense: 1e-4 has the best dev scores but the worst validation scores; 5e-5 the
    # best mean final validation score (0.80), so it is picked and reported at its
    # dev scores (final 0.70 and 0.72, best 0.75 and 0.72). A rate's best round on
    # validation (1e-5 reaches 0.95 in round 1) does not count: the final round does.
    finals = {
        "dense-lr0.0001": ([0.5, 0.9, 0.95], [0.5, 0.6, 0.55], [0.5, 0.9, 0.93], [0.5, 0.6, 0.65]),
        "dense-lr5e-05": ([0.5, 0.75, 0.70], [0.5, 0.7, 0.78], [0.5, 0.6, 0.72], [0.5, 0.7, 0.82]),
        "dense-lr1e-05": ([0.5, 0.6, 0.6], [0.5, 0.95, 0.70], [0.5, 0.6, 0.6], [0.5, 0.95, 0.70]),
    }
    for label, (s0, v0, s1, v1) in finals.items():
        _write_run(runs[(label, 0)], s0, v0)
        _write_run(runs[(label, 1)], s1, v1)
    # fish: equal validation scores; the rate listed first wins. Only seed 0 finished.
    _write_run(runs[("fish-lr0.002", 0)], [0.5, 0.6], [0.5, 0.8])
    _write_run(runs[("fish-lr0.001", 0)], [0.5, 0.9], [0.5, 0.8])
    summaries, missing = summarise(plan)
    assert missing == ["bitfit"]
    picks = {p.setting: p for p in pick_rates(plan, summaries)}
    assert set(picks) == {"dense", "fish"}  # bitfit has no grid
    dense = picks["dense"]
    assert dense.picked is not None and dense.picked.lr == 5e-5
    assert dense.picked.label == "dense-lr5e-05"
    assert dense.picked.val_final[0] == pytest.approx(0.80)
    assert dense.picked.final[0] == pytest.approx(0.71)  # its dev-set score
    assert dense.picked.best[0] == pytest.approx((0.75 + 0.72) / 2)
    assert [(lr, round(v or 0, 4), n) for lr, v, n in dense.tried] == [
        (1e-4, 0.6, 2),
        (5e-5, 0.8, 2),
        (1e-5, 0.7, 2),
    ]
    fish = picks["fish"]
    assert fish.picked is not None and fish.picked.lr == 2e-3 and fish.picked.final[0] == 0.6

    exp = load_experiment(str(tmp_path / "grid.toml"))
    write_summary(exp, plan, tmp_path / "s", scale="cpu")
    text = (tmp_path / "s" / "summary.md").read_text()
    assert "## Learning rate picked on the validation split" in text
    assert (
        "| dense | dense | 100% | 5e-05 | 0.0001: 0.6000, **5e-05**: 0.8000, 1e-05: 0.7000 | 0,1 "
        "| accuracy | 0.8000 ± 0.0283 | 0.7100 ± 0.0141 | 0.7350 ± 0.0212 |"
    ) in text
    assert "| fish | fish | 0.5% | 0.002 | **0.002**: 0.8000, 0.001: 0.8000 | 0 |" in text
    # Every run is listed too, its validation score beside its dev scores.
    assert (
        "| dense-lr0.0001 | dense | 100% | 0,1 | accuracy | 0.6000 ± 0.0707 | 0.9400 ± 0.0141 |"
        in (text)
    )
    data = json.loads((tmp_path / "s" / "summary.json").read_text())
    picked = {p["setting"]: p for p in data["picked"]}
    assert picked["dense"]["lr"] == 5e-5 and picked["dense"]["picked"]["label"] == "dense-lr5e-05"
    assert picked["dense"]["picked"]["final"]["mean"] == pytest.approx(0.71)
    assert [t["lr"] for t in picked["fish"]["tried"]] == [2e-3, 1e-3] and picked["fish"][
        "rates"
    ] == 2


def test_an_experiment_without_grids_has_no_pick(tmp_path: Path) -> None:
    text = GRID.replace(", lr-grid = [1e-4, 5e-5, 1e-5]", "").replace(
        ", lr-grid = [2e-3, 1e-3]", ""
    )
    exp = load_experiment(str(_experiment(tmp_path, text, "plain")))
    plan = plan_sweep(exp, tmp_path / "out", seeds=1)
    assert [p.label for p in plan] == ["dense", "fish", "bitfit"]
    assert all(p.lr is None and p.setting == p.label for p in plan)
    assert pick_rates(plan, summarise(plan)[0]) == []
    write_summary(exp, plan, tmp_path / "s", scale="cpu")
    assert "picked" not in (tmp_path / "s" / "summary.md").read_text()
    assert "picked" not in json.loads((tmp_path / "s" / "summary.json").read_text())


def test_fair_experiment_grids_every_method() -> None:
    exp = load_experiment("fair")
    assert exp.seeds == (0, 1, 2)
    for scale in ("cpu", "paper"):
        plan = plan_sweep(exp, Path("unused"), scale=scale, seeds=1, check_paths=False)
        settings = [*dict.fromkeys(p.setting for p in plan)]
        assert settings == [
            "dense",
            "fish-0.5pc",
            "fish-0.08pc",
            "lora-ffa",
            "lora-fedit",
            "bitfit",
            "random-0.5pc",
        ]
        assert all(p.lr is not None and p.config.lr == p.lr for p in plan)
        assert all(p.config.validation_examples > 0 and p.config.num_clients == 2 for p in plan)
        assert len(plan) == 7 * 3
        lora = {p.setting: p.config for p in plan if p.config.mask_method == "lora"}
        assert lora["lora-ffa"].lora_variant == "ffa" and lora["lora-fedit"].lora_variant == "fedit"
        assert all(c.lora_r == 0 and c.density == 0.005 for c in lora.values())
    dense = [p.lr for p in plan_sweep(exp, Path("unused"), scale="paper", seeds=1, only=["dense"])]
    assert dense == [1e-4, 5e-5, 1e-5]  # the paper's grid for dense fine-tuning


# --------------------------------------------------------------------------
# A real sweep with a 2-point grid
# --------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_real_sweep_with_a_two_point_grid(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))
    scale = tiny_scale_toml(shared_data)
    text = f"""
[experiment]
title = "tiny grid"
preset = "cifar10-resnet34"
seeds = [0]
plot = true

[scale.cpu]
{scale}
warmup-rounds = 0
validation-examples = 60
progress = false

[[axis]]
name = "method"
values = [{{ label = "fish", mask-method = "fish", density = 0.05, lr-grid = [0.05, 0.001] }}]
"""
    exp = load_experiment(str(_experiment(tmp_path, text, "tiny")))
    plan = plan_sweep(exp, tmp_path / "out")
    assert [p.label for p in plan] == ["fish-lr0.05", "fish-lr0.001"]
    assert run_sweep(plan) == []
    vals = []
    for p in plan:
        rows = [json.loads(line) for line in (p.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [r["round"] for r in rows] == [0, 1, 2]
        assert all(isinstance(r["val_score"], float) and "accuracy" in r["val_eval"] for r in rows)
        run = json.loads((p.run_dir / "summary.json").read_text())
        assert run["validation"]["final"]["score"] == rows[-1]["val_score"]
        assert json.loads((p.run_dir / "config.json").read_text())["lr"] == p.lr
        vals.append((rows[-1]["val_score"], rows[-1]["score"], p.lr))
    write_summary(exp, plan, tmp_path / "out" / "tiny", scale="cpu")
    data = json.loads((tmp_path / "out" / "tiny" / "summary.json").read_text())
    (pick,) = data["picked"]
    best = max(vals, key=lambda v: v[0])  # ties: the first rate, as max keeps the first
    assert pick["lr"] == best[2] and pick["picked"]["final"]["mean"] == best[1]
    assert (tmp_path / "out" / "tiny" / "accuracy_vs_communication.png").stat().st_size > 1000

    def never(config: RunConfig, run_dir: Path) -> dict[str, Any]:
        raise AssertionError(f"{run_dir} ran again")

    assert run_sweep(plan_sweep(exp, tmp_path / "out"), never) == []
