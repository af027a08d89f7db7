"""Pre-flight: a run that cannot work fails in one line, before Ray and before its folder.

The command-line tests run ``fish-fl run`` in this process with Flower's
``run_simulation`` replaced by a function that fails the test: every error
here must be found before the simulation (and Ray) starts, and must leave no
run folder behind.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from fish_fl.config import RunConfig
from fish_fl.preflight import PreflightError
from strategies import server_app  # noqa: F401  (its RunRecorder binds sys.stdout on import)


def tiny_cifar(path: Path, n_train: int = 64, n_test: int = 32) -> Path:
    """A CIFAR-10-shaped ``.npz`` of random images (every class present)."""
    gen = np.random.default_rng(0)
    np.savez(
        path,
        x_train=gen.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(n_train) % 10,
        x_test=gen.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(n_test) % 10,
    )
    return path


def tiny_vision(data: Path, **changes: object) -> RunConfig:
    values: dict[str, object] = {
        "task": "cifar10",
        "model": "resnet18",
        "width": 4,
        "data-source": "local",
        "data-dir": str(data),
        "num-clients": 2,
        "rounds": 2,
        "local-steps": 1,
        "batch-size": 8,
        "fisher-samples": 8,
        "density": 0.05,
        "optimizer": "sgd",
        "lr": 0.05,
        "progress": False,
        "device": "cpu",
    }
    values.update(changes)
    return RunConfig.from_mapping(values)


def _sst2_folder(root: Path, train: str, dev: str = "sentence\tlabel\nfine\t1\n") -> Path:
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(train)
    (folder / "dev.tsv").write_text(dev)
    return root


@pytest.fixture
def no_simulation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything tries to start Flower's simulation (and Ray)."""
    import flwr.simulation

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the simulation started: this error was not caught in pre-flight")

    monkeypatch.setattr(flwr.simulation, "run_simulation", refuse)


def _run_cli(
    args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str]:
    from sims.cli import main

    monkeypatch.setattr(sys, "argv", ["fish-fl", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), capsys.readouterr().err


# -- hole 9: the command line --------------------------------------------------------


def _unseen(data: Path) -> Path:
    path = data / "unseen.csv"
    path.write_text("review,stars\nok,4\n", encoding="utf-8")
    return path


def _cases(data: Path) -> dict[str, tuple[list[str], str]]:
    """``--set`` overrides of the default preset, and what the one-line error must say."""
    bad_glue = _sst2_folder(data / "bad-glue", "text\tpolarity\nfine\t1\n")
    cifar = tiny_cifar(data / "cifar.npz")
    vision = [f"data-dir={cifar}", "data-source=local", "task=cifar10", "model=resnet18"]
    user = data / "user.csv"
    user.write_text("review,stars\ngood,5\nbad,1\nfine,3\n", encoding="utf-8")
    mine = ["task=text-classification", f"train-file={user}", f"eval-file={user}"]
    return {
        "task-unknown": (["task=agnews"], "agnews"),
        "user-file-missing": (
            ["task=text-classification", "train-file=/nonexistent.csv", f"eval-file={user}"],
            "train-file='/nonexistent.csv' does not exist",
        ),
        "user-columns": (
            mine,
            "lacks the columns asked for (text-column='text', label-column='label')",
        ),
        "user-label-unseen": (
            [*mine[:2], f"eval-file={_unseen(data)}", "text-column=review", "label-column=stars"],
            "label '4' (row 1) does not occur in the training data",
        ),
        "data-dir-missing": (["data-source=local", "data-dir=/nonexistent"], "/nonexistent"),
        "glue-columns": (
            ["data-source=local", f"data-dir={bad_glue}"],
            "lacks columns ['sentence', 'label']",
        ),
        "embedded-other-task": (["task=cola"], "data-source=embedded holds only sst2"),
        "fisher-samples-all-data": (["fisher-samples=4000"], "fisher-samples=4000"),
        "model-folder-missing": (["model=/nonexistent/model"], "/nonexistent/model"),
        "vision-task": (
            [*vision, "task=sst2"],
            "task=sst2 is a text task and model='resnet18' an image model",
        ),
        "text-model-cifar": (
            ["task=cifar10"],
            "task=cifar10 is an image task and model='minilm' a text encoder",
        ),
        "layers-preset-for-model": (
            [*vision, "mask-method=layers", "layers-preset=no-deepest-2"],
            "numbered blocks",
        ),
        "layers-preset-unknown": (
            ["mask-method=layers", "layers-preset=bogus"],
            "bogus",
        ),
        "gpus-absent": ([f"client-num-gpus={torch.cuda.device_count() + 1}"], "client-num-gpus"),
        "cpus-absent": ([f"client-num-cpus={(os.cpu_count() or 1) + 1}"], "client-num-cpus"),
        # Value checks of the configuration itself (fish_fl/config), before pre-flight.
        "head-patterns-regex": (["head-patterns=["], "head-patterns"),
        "seed-range": (["seed=99999999999999"], "seed"),
        "layers-preset-name": (["layers-preset=bogus"], "layers-preset"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "task-unknown",
        "user-file-missing",
        "user-columns",
        "user-label-unseen",
        "data-dir-missing",
        "glue-columns",
        "embedded-other-task",
        "fisher-samples-all-data",
        "model-folder-missing",
        "vision-task",
        "text-model-cifar",
        "layers-preset-for-model",
        "layers-preset-unknown",
        "gpus-absent",
        "cpus-absent",
        "head-patterns-regex",
        "seed-range",
        "layers-preset-name",
    ],
)
def test_cli_refuses_before_the_simulation_without_a_run_folder(
    case: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_simulation: None,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "data"
    data.mkdir()
    overrides, message = _cases(data)[case]
    out = tmp_path / "out"
    args = ["run", "sst2-minilm", "--out", str(out / "run"), "--set", f"out-dir={out}"]
    for item in overrides:
        args += ["--set", item]
    code, err = _run_cli(args, monkeypatch, capsys)
    errors = [line for line in err.splitlines() if line.startswith("fish-fl: error:")]
    assert code == 1, err
    assert len(errors) == 1 and "Traceback" not in err, err
    assert message in errors[0], err
    assert not out.exists()  # no run folder, not even an empty one


def test_default_preset_passes_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded default reads its sample whole and still costs a fraction of a second."""
    from fish_fl.preflight import preflight
    from sims.commands.run import load_preset

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = load_preset("sst2-minilm")
    preflight(config)  # imports what the run imports anyway
    t0 = time.perf_counter()
    preflight(config)
    assert time.perf_counter() - t0 < 1.0


def test_local_data_is_read_only_in_part(tmp_path: Path) -> None:
    """A bad row past the rows pre-flight reads is the loader's business, not pre-flight's."""
    from fish_fl.data.glue import read_glue_tsv
    from fish_fl.preflight import SAMPLE_ROWS, preflight

    rows = "".join(f"sentence {i}\t{i % 2}\n" for i in range(SAMPLE_ROWS + 50))
    root = _sst2_folder(tmp_path, "sentence\tlabel\n" + rows)
    assert len(read_glue_tsv(root / "SST-2" / "train.tsv", "sst2", max_rows=7)) == 7
    config = RunConfig.from_mapping(
        {"data-source": "local", "data-dir": str(root), "fisher-samples": 8}
    )
    preflight(config, simulation=False)
    # A bad row among those read says nothing about the size of a longer file.
    longer = "sentence\tlabel\nbad\tlabel\n" + rows
    preflight(
        config.replace(data_dir=str(_sst2_folder(tmp_path / "long", longer)), fisher_samples=210),
        simulation=False,
    )
    # A short file is read whole, so its size is known: too few rows for the Fisher sample.
    small = _sst2_folder(tmp_path / "small", "sentence\tlabel\nok\t1\nbad\t0\n")
    with pytest.raises(PreflightError, match="fisher-samples=8 leaves no training data among 2"):
        preflight(config.replace(data_dir=str(small)), simulation=False)


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x_train": np.zeros((4, 32, 32), np.uint8)}, "x_train has shape (4, 32, 32)"),
        ({"y_train": np.zeros(3, np.int64)}, "3 labels for 4 train images"),
        ({"y_test": np.full(2, 10)}, "test labels outside [0, 10)"),
    ],
)
def test_cifar_npz_is_checked_from_its_headers(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    from fish_fl.preflight import preflight

    good = {
        "x_train": np.zeros((4, 32, 32, 3), np.uint8),
        "y_train": np.arange(4),
        "x_test": np.zeros((2, 32, 32, 3), np.uint8),
        "y_test": np.arange(2),
    }
    np.savez(tmp_path / "good.npz", **good)
    preflight(tiny_vision(tmp_path / "good.npz", fisher_samples=1), simulation=False)
    np.savez(tmp_path / "bad.npz", **{**good, **arrays})
    with pytest.raises(PreflightError) as info:
        preflight(tiny_vision(tmp_path / "bad.npz", fisher_samples=1), simulation=False)
    assert message in str(info.value)


def test_image_folder_needs_images_in_both_splits(tmp_path: Path) -> None:
    from fish_fl.preflight import preflight

    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
    (tmp_path / "train" / "cat" / "a.png").write_bytes(b"")
    with pytest.raises(PreflightError, match="test/ holds no <class>"):
        preflight(tiny_vision(tmp_path), simulation=False)
    (tmp_path / "test" / "cat" / "b.PNG").write_bytes(b"")
    preflight(tiny_vision(tmp_path), simulation=False)


# -- hole 6 (a): resources the machine cannot give ------------------------------------


@pytest.mark.parametrize(
    ("gpus", "cpus", "changes", "message"),
    [
        (0, 2, {"client-num-gpus": 0.5}, "client-num-gpus=0.5 but no CUDA GPU is visible"),
        (1, 2, {"client-num-gpus": 2.0}, "client-num-gpus=2 exceeds the 1 CUDA GPU(s)"),
        (2, 2, {"client-num-cpus": 2.5}, "client-num-cpus=2.5 exceeds the 2 CPUs"),
        (1, 2, {"client-num-gpus": 1.0, "client-num-cpus": 2.0}, None),
        (1, 2, {"client-num-gpus": 0.25}, None),
        (0, 2, {"client-num-gpus": 0.0}, None),
    ],
)
def test_client_resources_must_exist_on_this_machine(
    monkeypatch: pytest.MonkeyPatch,
    gpus: int,
    cpus: int,
    changes: dict[str, float],
    message: str | None,
) -> None:
    from fish_fl.preflight import check_resources

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    config = RunConfig.from_mapping(changes)
    if message is None:
        check_resources(config)
    else:
        with pytest.raises(PreflightError) as info:
            check_resources(config)
        assert message in str(info.value)


def test_server_app_leaves_client_resources_to_the_federation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ServerApp started by `flwr run` does not host the clients: their resources are not its."""
    from fish_fl.preflight import preflight

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    config = RunConfig.from_mapping({"client-num-gpus": 1.0})
    preflight(config, simulation=False)
    with pytest.raises(PreflightError, match="client-num-gpus"):
        preflight(config)


# -- hole 9: nothing half-written ----------------------------------------------------


def _crash_in_round(monkeypatch: pytest.MonkeyPatch, crash: int) -> None:
    from strategies.fish_strategy import FishMaskStrategy

    prepare = FishMaskStrategy.prepare_round

    def prepare_or_crash(self: FishMaskStrategy, rnd: int, grid: object) -> None:
        if rnd == crash:
            raise KeyError(f"crash in round {rnd}")
        prepare(self, rnd, grid)  # type: ignore[arg-type]

    monkeypatch.setattr(FishMaskStrategy, "prepare_round", prepare_or_crash)


@pytest.mark.parametrize("existing", [False, True])
def test_run_failing_before_round_one_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    from strategies.server_app import run_server
    from tests.flower_harness import InProcessGrid

    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))
    config = tiny_vision(tiny_cifar(tmp_path / "cifar.npz"))
    run_dir = tmp_path / "out" / "run"
    if existing:
        run_dir.mkdir(parents=True)  # `--out` may name an empty folder
    _crash_in_round(monkeypatch, 1)
    with pytest.raises(KeyError, match="crash in round 1"):
        run_server(InProcessGrid(2), config, run_dir)
    if existing:
        assert run_dir.is_dir() and not any(run_dir.iterdir())
    else:
        assert not run_dir.exists()


def test_run_failing_after_a_checkpoint_keeps_its_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    from strategies.server_app import run_server
    from strategies.state import CHECKPOINT
    from tests.flower_harness import InProcessGrid

    monkeypatch.setenv("FISH_FL_CACHE", str(tmp_path / "cache"))
    config = tiny_vision(tiny_cifar(tmp_path / "cifar.npz"), rounds=3)
    run_dir = tmp_path / "run"
    _crash_in_round(monkeypatch, 2)
    with pytest.raises(KeyError, match="crash in round 2"):
        run_server(InProcessGrid(2), config, run_dir)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [0, 1]
    assert (run_dir / CHECKPOINT).is_file()


def test_server_app_of_flwr_run_runs_preflight_first(tmp_path: Path) -> None:
    """The ServerApp `flwr run` starts refuses a missing data folder before it touches the grid."""
    from flwr.app import Context, RecordDict

    from strategies.server_app import app

    class UntouchableGrid:
        def __getattr__(self, name: str) -> object:
            raise AssertionError(f"the ServerApp used the grid ({name}) before pre-flight")

    context = Context(
        run_id=1,
        node_id=0,
        node_config={},
        state=RecordDict(),
        run_config={
            "data-source": "local",
            "data-dir": str(tmp_path / "nowhere"),
            "out-dir": str(tmp_path / "runs"),
        },
    )
    with pytest.raises(PreflightError, match="nowhere' does not exist"):
        app(grid=UntouchableGrid(), context=context)  # type: ignore[arg-type]
    assert not (tmp_path / "runs").exists()
