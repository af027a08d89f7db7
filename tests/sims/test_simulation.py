"""End to end: real Flower simulations (Ray) and the command line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from fish_fl.masks import Mask
from sims.commands.run import load_preset
from tests.flower_harness import tiny_vision_config


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _delta_within_mask(run_dir: Path) -> None:
    """Every entry the delta changes lies inside the mask (parameters), bit-exact elsewhere."""
    mask = Mask.load(run_dir / "mask.safetensors")
    with safe_open(str(run_dir / "delta.safetensors"), framework="pt") as f:
        names = {k.split("/", 1)[1] for k in f.keys() if k.startswith("indices/")}  # noqa: SIM118
        for name in names:
            if name not in mask.shapes:
                continue  # a buffer (BatchNorm statistics), averaged every round
            changed = f.get_tensor(f"indices/{name}").long()
            assert bool(torch.isin(changed, mask.indices[name]).all()), (
                f"{name}: change outside the mask"
            )


@pytest.mark.slow
def test_ray_simulation_two_clients(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sims.simulate import simulate

    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))
    config = tiny_vision_config(shared_data, rounds=2, out_dir=str(tmp_path))
    run_dir = tmp_path / "run"
    summary = simulate(config, run_dir)
    rows = _rows(run_dir)
    assert [r["round"] for r in rows] == [0, 1, 2]
    for row in rows[1:]:
        assert row["replies"] == 2 and row["rejected"] == 0
        # The server's ledger against the nodes' own measure of the serialised messages.
        assert abs(row["node_bytes_received"] - row["bytes_down"]) < 2 * 64
    assert rows[1]["mask_bytes"] > 0 and rows[2]["mask_bytes"] == 0
    _delta_within_mask(run_dir)
    assert summary["final"]["round"] == 2
    assert (run_dir / "accuracy_vs_communication.png").stat().st_size > 1000
    _export_and_apply(run_dir, tmp_path)


def _export_and_apply(run_dir: Path, tmp_path: Path) -> None:
    """`fish-fl export` and `fish-fl apply` on a finished run."""
    from fish_fl.checkpoint import read_delta_info
    from sims.commands.export import apply_command, export_command

    export_command(run_dir, out=tmp_path / "d32.safetensors", index_dtype="int32")
    small, large = (
        read_delta_info(tmp_path / "d32.safetensors"),
        read_delta_info(run_dir / "delta.safetensors"),
    )
    assert small.changed == large.changed and small.file_bytes < large.file_bytes
    apply_command(tmp_path / "d32.safetensors", out=tmp_path / "model")
    from safetensors.torch import load_file

    from fish_fl.config import RunConfig
    from fish_fl.task import build_task_model

    config = RunConfig.from_json((run_dir / "config.json").read_text())
    state = load_file(str(tmp_path / "model" / "model.safetensors"))
    base = build_task_model(config)
    mask = Mask.load(run_dir / "mask.safetensors")
    for name, p in base.named_parameters():
        keep = mask.to_bool(name)
        assert torch.equal(state[name][~keep], p.detach()[~keep]), name
    with pytest.raises(ValueError, match="fingerprint"):
        apply_command(run_dir / "delta.safetensors", out=tmp_path / "wrong", base="resnet34")


@pytest.mark.slow
def test_default_preset_offline_shortened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's main job on the real MiniLM, shortened: traffic and sparsity hold."""
    from sims.simulate import simulate

    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_preset(
        "sst2-minilm",
        [
            "rounds=2",
            "local-steps=2",
            "fisher-samples=32",
            "eval-examples=128",
            f"out-dir={tmp_path}",
        ],
    )
    run_dir = tmp_path / "run"
    summary = simulate(config, run_dir)
    rows = _rows(run_dir)
    full = summary["full_model_bytes"]
    assert summary["model_numel"] == 22_713_986 and summary["k"] == round(0.005 * 22_713_986)
    # Round 2 (mask already sent): each message is > 150x smaller than a dense float32 model.
    per_message = (rows[2]["bytes_up"] + rows[2]["bytes_down"]) / (
        rows[2]["messages_up"] + rows[2]["messages_down"]
    )
    assert full / per_message > 150
    assert rows[2]["score"] is not None
    _delta_within_mask(run_dir)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sims.cli", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "sst2-minilm", "--set", "rounds=0"], "rounds=0 must be >= 1"),
        (["run", "sst2-minilm", "--set", "colour=blue"], "unknown config key 'colour'"),
        (["run", "nope"], "unknown preset 'nope'"),
        (["run", "sst2-minilm", "--set", "density"], "--set expects key=value"),
        (
            ["run", "sst2-minilm", "--set", "warmup-rounds=20"],
            "warmup-rounds=20 must be smaller than rounds=10",
        ),
    ],
)
def test_cli_bad_config_one_line_error(args: list[str], message: str, tmp_path: Path) -> None:
    result = _cli(*args, "--out", str(tmp_path / "never"))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.startswith("fish-fl: error:")]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "never").exists()  # nothing half-written


@pytest.mark.parametrize(
    "preset",
    [
        "sst2-minilm",
        "sst2-minilm-supermask",
        "sst2-minilm-lora",
        "cifar10-resnet34",
        "cifar10-resnet34-paper",
        "glue-bert-large",
    ],
)
def test_presets_are_valid(preset: str) -> None:
    config = load_preset(preset)
    assert config.rounds > config.warmup_rounds


def test_flower_app_config_is_a_valid_run_config(project_root: Path) -> None:
    """`flwr run .` hands [tool.flwr.app.config] to the ServerApp as run_config."""
    import tomllib

    from fish_fl.config import RunConfig

    pyproject = tomllib.loads((project_root / "pyproject.toml").read_text())
    app = pyproject["tool"]["flwr"]["app"]
    assert app["components"] == {
        "serverapp": "strategies.server_app:app",
        "clientapp": "clients.client_app:app",
    }
    config = RunConfig.from_mapping(app["config"])
    assert config == load_preset("sst2-minilm").replace(out_dir=config.out_dir)


def test_flower_app_bundle_carries_the_embedded_sample(project_root: Path) -> None:
    """`flwr run` ships a FAB to every node: it must hold the code and the sample."""
    import io
    import zipfile

    from flwr.cli.build import build_fab_from_disk

    fab = build_fab_from_disk(project_root)
    names = set(zipfile.ZipFile(io.BytesIO(fab)).namelist())
    assert {
        "fish_fl/resources/sst2_sample/train.jsonl",
        "fish_fl/resources/sst2_sample/dev.jsonl",
    } <= names
    assert {"strategies/server_app.py", "clients/client_app.py", "fish_fl/fisher.py"} <= names
    assert len(fab) < 10 * 2**20


def test_fish_fl_tasks_lists_every_registered_task(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    from fish_fl.tasks import task_names
    from sims.cli import main

    monkeypatch.setattr(sys, "argv", ["fish-fl", "tasks"])
    try:
        main()
    except SystemExit as stop:
        assert stop.code in (0, None)
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line and not line.startswith("Your")}
    assert listed == set(task_names())
    rows = {
        line.split()[0]: line.split()[1]
        for line in out.splitlines()
        if line and not line.startswith("Your")
    }
    assert rows["text-classification"] == "text" and rows["cifar10"] == "image"
