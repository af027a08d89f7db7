"""RunConfig: defaults, coercion of command-line strings, every kind of bad input, files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from fish_fl.config import ConfigError, RunConfig, parse_override


def _error(values: dict[str, Any]) -> str:
    """The message of the ConfigError that ``values`` raise; checks it is one line."""
    with pytest.raises(ConfigError) as err:
        RunConfig.from_mapping(values)
    message = str(err.value)
    assert "\n" not in message, message
    return message


# --------------------------------------------------------------------------
# Defaults and reading
# --------------------------------------------------------------------------
def test_defaults_are_valid() -> None:
    config = RunConfig()
    assert config.sampled_clients == config.num_clients  # clients-per-round 0: all
    spec = config.mask_spec()
    assert (spec.method, spec.density, spec.seed) == ("fish", 0.005, 0)
    assert config.optimizer_config().name == "adamw"
    assert RunConfig.from_mapping({}) == config
    keys = RunConfig.keys()
    assert all("_" not in key for key in keys)


def test_from_mapping_takes_kebab_and_snake_keys() -> None:
    kebab = RunConfig.from_mapping(
        {"num-clients": 4, "clients-per-round": 3, "mask-method": "random"}
    )
    snake = RunConfig.from_mapping(
        {"num_clients": 4, "clients_per_round": 3, "mask_method": "random"}
    )
    assert kebab == snake
    assert (kebab.num_clients, kebab.clients_per_round, kebab.sampled_clients) == (4, 3, 3)
    assert kebab.mask_method == "random"


def test_from_mapping_on_a_base() -> None:
    base = RunConfig(rounds=7, lr=0.01)
    config = RunConfig.from_mapping({"lr": "0.5"}, base=base)
    assert (config.rounds, config.lr) == (7, 0.5)


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("rounds", "25", 25),
        ("rounds", " 25 ", 25),
        ("seed", "0", 0),
        ("lr", "1e-3", 1e-3),
        ("lr", "2", 2.0),
        ("density", "0.01", 0.01),
        ("amp", "true", True),
        ("amp", "Yes", True),
        ("amp", "on", True),
        ("amp", "1", True),
        ("progress", "false", False),
        ("progress", "NO", False),
        ("progress", "off", False),
        ("progress", "0", False),
        ("head-patterns", "classifier, pooler,,", ("classifier", "pooler")),
        ("head-patterns", "", ()),
        ("task", "cola", "cola"),
    ],
)
def test_strings_from_set_are_coerced(key: str, text: str, expected: Any) -> None:
    name, value = parse_override(f"{key}={text}")
    config = RunConfig.from_mapping({name: value})
    got = getattr(config, key.replace("-", "_"))
    assert got == expected and type(got) is type(expected)


def test_native_values_are_accepted() -> None:
    config = RunConfig.from_mapping(
        {"rounds": 4.0, "lr": 1, "amp": True, "head-patterns": ["fc", "head"]}
    )
    assert config.rounds == 4 and type(config.rounds) is int
    assert config.lr == 1.0 and type(config.lr) is float
    assert config.amp is True and config.head_patterns == ("fc", "head")


def test_parse_override() -> None:
    assert parse_override(" rounds = 5 ") == ("rounds", "5")
    assert parse_override("head-patterns=a=b") == ("head-patterns", "a=b")
    with pytest.raises(ConfigError, match="--set expects key=value, got 'rounds'"):
        parse_override("rounds")


# --------------------------------------------------------------------------
# Bad input: one line, naming the key and the value
# --------------------------------------------------------------------------
def test_unknown_key() -> None:
    message = _error({"roundz": 5})
    assert "unknown config key 'roundz'" in message and "rounds" in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"rounds": "ten"}, "rounds: expected an integer, got 'ten'"),
        ({"rounds": "2.5"}, "rounds: expected an integer, got '2.5'"),
        ({"rounds": 2.5}, "rounds: expected an integer, got 2.5"),
        ({"rounds": True}, "rounds: expected an integer, got True"),
        ({"rounds": None}, "rounds: expected an integer, got None"),
        ({"lr": "fast"}, "lr: expected a number, got 'fast'"),
        ({"lr": False}, "lr: expected a number, got False"),
        ({"amp": "maybe"}, "amp: expected true or false, got 'maybe'"),
        ({"amp": 1}, "amp: expected true or false, got 1"),
        ({"task": 3}, "task: expected a string, got 3"),
        ({"head-patterns": 5}, "head-patterns: expected a list of strings, got 5"),
        ({"head-patterns": ["fc", 1]}, "head-patterns: expected a list of strings, got ['fc', 1]"),
    ],
)
def test_wrong_type(values: dict[str, Any], expected: str) -> None:
    assert _error(values) == expected


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"rounds": 0}, "rounds=0 must be >= 1"),
        ({"num-clients": "0"}, "num-clients=0 must be >= 1"),
        ({"seed": -1}, "seed=-1 must be >= 0"),
        ({"density": 0}, "density=0.0 must be > 0.0"),
        ({"density": "1.5"}, "density=1.5 must be <= 1.0"),
        ({"lr": "-1e-3"}, "lr=-0.001 must be > 0.0"),
        ({"lr": "nan"}, "lr=nan must be finite"),
        ({"round-timeout": "inf"}, "round-timeout=inf must be finite"),
        ({"momentum": 1.5}, "momentum=1.5 must be <= 1.0"),
        ({"max-length": 4}, "max-length=4 must be >= 8"),
        ({"budget-fme": -1}, "budget-fme=-1.0 must be >= 0.0"),
    ],
)
def test_out_of_range(values: dict[str, Any], expected: str) -> None:
    assert _error(values) == expected


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("partition", "stratified"),
        ("aggregation", "geometric-median"),
        ("update-dtype", "int8"),
        ("optimizer", "lamb"),
        ("fisher-kind", "exact"),
        ("mask-source", "oracle"),
        ("mask-assignment", "overlapping"),
        ("data-source", "s3"),
        ("mask-method", "lottery"),
    ],
)
def test_bad_choice(key: str, value: str) -> None:
    message = _error({key: value})
    assert message.startswith(f"{key}={value!r} is not allowed; choose one of ")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"rounds": 5, "warmup-rounds": 5}, "warmup-rounds=5 must be smaller than rounds=5"),
        ({"rounds": 5, "warmup-rounds": 9}, "warmup-rounds=9 must be smaller than rounds=5"),
        (
            {"mask-assignment": "disjoint", "density": 0.3, "num-clients": 4},
            "mask-assignment=disjoint with density=0.3 and num-clients=4",
        ),
        (
            {"mask-assignment": "disjoint", "mask-method": "bitfit"},
            "mask-assignment=disjoint needs a scored mask (fish, magnitude, random), "
            "got mask-method='bitfit'",
        ),
        (
            {"num-clients": 3, "clients-per-round": 4},
            "clients-per-round=4 exceeds num-clients=3",
        ),
        (
            {"num-clients": 5, "clients-per-round": 2, "min-replies": 3},
            "min-replies=3 exceeds the 2 clients sampled per round",
        ),
        (
            {"num-clients": 2, "min-replies": 3},
            "min-replies=3 exceeds the 2 clients sampled per round",
        ),
        (
            {"mask-source": "clients", "mask-method": "magnitude"},
            "mask-source=clients computes a Fisher on the clients; it needs mask-method=fish, "
            "got 'magnitude'",
        ),
        ({"data-source": "local"}, "task=sst2 with data-source=local needs data-dir"),
        (
            {"task": "text-classification"},
            "task=text-classification needs train-file and eval-file",
        ),
        (
            {"task": "text-classification", "data-source": "hub"},
            "task=text-classification with data-source=hub needs hub-dataset",
        ),
        ({"partition": "natural"}, "partition=natural needs a column of client ids"),
        (
            {
                "partition": "natural",
                "task": "text-classification",
                "train-file": "t.csv",
                "eval-file": "d.csv",
            },
            "partition=natural needs partition-column",
        ),
    ],
)
def test_inconsistent_combinations(values: dict[str, Any], expected: str) -> None:
    assert _error(values).startswith(expected)


def test_consistent_edges_are_accepted() -> None:
    # The limits themselves are allowed.
    RunConfig.from_mapping({"rounds": 5, "warmup-rounds": 4})
    RunConfig.from_mapping({"mask-assignment": "disjoint", "density": 0.25, "num-clients": 4})
    RunConfig.from_mapping({"num-clients": 3, "clients-per-round": 3, "min-replies": 3})
    RunConfig.from_mapping({"mask-source": "clients", "mask-method": "fish"})
    RunConfig.from_mapping({"data-source": "local", "data-dir": "glue"})


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigError, match="rounds: expected int, got '5'"):
        RunConfig(rounds="5")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="clients-per-round=9 exceeds num-clients=2"):
        RunConfig(clients_per_round=9)


# --------------------------------------------------------------------------
# Writing and files
# --------------------------------------------------------------------------
def test_to_dict_round_trip() -> None:
    config = RunConfig(
        task="cola",
        rounds=12,
        warmup_rounds=2,
        lr=3e-4,
        amp=True,
        head_patterns=("classifier", "pooler"),
        mask_method="random",
        num_clients=8,
        clients_per_round=4,
        min_replies=2,
    )
    data = config.to_dict()
    assert data["head-patterns"] == ["classifier", "pooler"]
    assert set(data) == set(RunConfig.keys())
    assert RunConfig.from_mapping(data) == config
    # Through JSON (as config.json of a run folder) and back.
    assert json.loads(config.to_json()) == data
    assert RunConfig.from_json(config.to_json()) == config


def test_from_toml_flat_and_run_table(tmp_path: Path) -> None:
    flat = tmp_path / "flat.toml"
    flat.write_text('rounds = 3\nmask-method = "random"\nhead-patterns = ["fc"]\nlr = 1\n')
    config = RunConfig.from_toml(flat)
    assert (config.rounds, config.mask_method, config.head_patterns) == (3, "random", ("fc",))
    assert config.lr == 1.0

    table = tmp_path / "table.toml"
    table.write_text('title = "ignored outside [run]"\n\n[run]\nrounds = 4\ndensity = 0.01\n')
    config = RunConfig.from_toml(table, overrides={"rounds": "6"})
    assert (config.rounds, config.density) == (6, 0.01)


def test_from_toml_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*missing.toml"):
        RunConfig.from_toml(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="config file not found"):
        RunConfig.from_toml(tmp_path)  # a folder

    bad = tmp_path / "bad.toml"
    cases = [
        (b"rounds = \n", r"bad\.toml: not valid TOML"),
        (b"rounds 3\n", r"bad\.toml: not valid TOML"),
        (b"\xff\xfe rounds = 3\n", r"bad\.toml: not valid TOML"),  # not UTF-8
        (b'run = "fast"\n', r"bad\.toml: run must be a \[run\] table, got run='fast'"),
        (b"[run]\nrounds = 0\n", r"^rounds=0 must be >= 1$"),
        (b"[run]\nroundz = 3\n", r"^unknown config key 'roundz'"),
    ]
    for content, expected in cases:
        bad.write_bytes(content)
        with pytest.raises(ConfigError, match=expected) as err:
            RunConfig.from_toml(bad)
        assert "\n" not in str(err.value)


# -- the composed configuration -------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"head-patterns": "["}, "head-patterns: '[' is not a valid regular expression"),
        ({"supermask-maskable": "encoder("}, "supermask-maskable: 'encoder(' is not a valid"),
        ({"seed": 99999999999999}, "seed=99999999999999 must be <= 4294967295"),
        ({"layers-preset": "bogus"}, "layers-preset='bogus' is not allowed"),
        ({"task": "agnews"}, "task='agnews' is not known; choose one of cifar10, cifar100, cola"),
    ],
)
def test_values_that_used_to_fail_late_fail_at_once(values: dict[str, Any], expected: str) -> None:
    message = _error(values)
    assert message.startswith(expected)
    assert "\n" not in message


def test_the_largest_seed_still_fits_the_wire() -> None:
    """Node seeds are derived as seed x 1,000,003 + round x 1,009 and sent as int64."""
    config = RunConfig(seed=2**32 - 1)
    assert config.seed * 1_000_003 + 10**6 * 1009 < 2**63


def test_sections_partition_the_keys() -> None:
    """Every key belongs to exactly one section; a section's values come back as that section."""
    from fish_fl.config import SECTIONS, TaskKeys

    names = [f.name for s in SECTIONS for f in dataclasses.fields(s)]
    assert len(names) == len(set(names))
    assert sorted(names) == sorted(f.name for f in dataclasses.fields(RunConfig))
    config = RunConfig(task="cola", max_length=64)
    task = config.section(TaskKeys)
    assert isinstance(task, TaskKeys)
    assert (task.task, task.max_length, task.model) == ("cola", 64, "minilm")
    for f in dataclasses.fields(RunConfig):
        assert f.metadata["help"], f.name
        assert set(f.metadata["shapes"]) <= {"data", "model"}, f.name


def test_method_keys_live_with_their_method() -> None:
    """A method's own keys are defined in its folder and reach RunConfig through one class."""
    from fish_fl.methods.keys import MethodKeys

    for f in dataclasses.fields(MethodKeys):
        owner = next(c for c in MethodKeys.__mro__ if f.name in getattr(c, "__annotations__", {}))
        method = owner.__module__.split(".")[1]
        assert f.name.startswith(method + "_"), (f.name, owner.__module__)


def test_flower_app_config_holds_every_key(project_root: Path) -> None:
    """[tool.flwr.app.config] lists exactly the RunConfig keys (so `flwr run` can set each)."""
    import tomllib

    app = tomllib.loads((project_root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert sorted(app["config"]) == sorted(RunConfig.keys())


_SHAPED = {
    "task": "cola",
    "model": "resnet18-cifar",
    "width": 32,
    "data-source": "hub",
    "data-dir": "elsewhere",
    "train-file": "train.csv",
    "eval-file": "dev.csv",
    "text-column": "sentence",
    "text-pair-column": "second",
    "label-column": "target",
    "label-type": "classes",
    "header": False,
    "hub-dataset": "someone/data",
    "hub-subset": "default",
    "hub-eval-split": "test",
    "image-size": 64,
    "image-normalize": "imagenet",
    "max-length": 64,
    "train-examples": 100,
    "eval-examples": 50,
    "validation-examples": 10,
    "seed": 7,
    "augment": False,
    "num-clients": 3,
    "partition": "dirichlet",
    "dirichlet-alpha": 0.1,
    "partition-column": "user",
    "classes-per-client": 3,
    "batch-size": 16,
    "eval-batch-size": 64,
    "mask-source": "clients",
    "fisher-samples": 32,
    "mask-method": "random",
}


@pytest.mark.parametrize("kind", ["data", "model"])
def test_cache_keys_follow_exactly_the_keys_that_shape(kind: str) -> None:
    """Changing a key that shapes the data (model) changes its cache key; other keys do not."""
    from fish_fl.config import keys_that_shape

    base = RunConfig()
    shaping = keys_that_shape(kind)
    assert set(shaping) <= set(_SHAPED), "give every shaping key a changed value here"
    # Written out by hand: dropping a key's ``shapes`` would let a cache go stale.
    expected = {
        "data": set(_SHAPED) - {"width", "mask-method"},
        "model": {
            "task",
            "model",
            "width",
            "seed",
            "mask-method",
            # a user's training file defines the label set, so the head's size
            "train-file",
            "label-column",
            "label-type",
            "header",
            "hub-dataset",
            "hub-subset",
        },
    }[kind]
    assert set(shaping) == expected
    for key in shaping:
        changed = RunConfig.from_mapping({key: _SHAPED[key]}, base=base)
        assert changed.shape_key(kind) != base.shape_key(kind), key
    for key, value in {"rounds": 3, "lr": 0.01, "local-steps": 5, "out-dir": "x"}.items():
        assert key not in shaping
        changed = RunConfig.from_mapping({key: value}, base=base)
        assert changed.shape_key(kind) == base.shape_key(kind), key
    # A method's extra keys are part of the hash too.
    lr = RunConfig.from_mapping({"lr": 0.01}, base=base)
    assert lr.shape_key(kind, extra=("lr",)) != base.shape_key(kind, extra=("lr",))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (
            {"aggregation": "krum", "num-clients": 4},
            "aggregation=krum needs at least 5 replies a round (krum with krum-f=1 needs "
            "n >= 2 krum-f + 3 = 5 replies, got 4); raise clients-per-round or num-clients, "
            "or lower krum-f / multi-krum-m",
        ),
        (
            {"aggregation": "multi-krum", "num-clients": 10, "krum-f": 1, "multi-krum-m": 11},
            "aggregation=multi-krum needs at least 11 replies a round (multi-krum with "
            "krum-f=1 needs n >= multi-krum-m = 11 replies, got 10); raise clients-per-round "
            "or num-clients, or lower krum-f / multi-krum-m",
        ),
        (
            {"aggregation": "krum", "num-clients": 5},
            "aggregation=krum needs min-replies >= 5, got 1",
        ),
        (
            {"aggregation": "trimmed-mean", "trim-beta": 0.5},
            "trim-beta=0.5 must be in [0, 0.5)",
        ),
        (
            {"aggregation": "median", "mask-assignment": "disjoint", "num-clients": 4},
            "aggregation=median compares replies coordinate by coordinate; it needs "
            "mask-assignment=shared",
        ),
        (
            {"dp-mode": "central"},
            "dp-mode=central needs dp-noise-multiplier > 0 or dp-target-epsilon > 0 (to solve "
            "the noise multiplier for)",
        ),
        (
            {"dp-mode": "central", "dp-noise-multiplier": 1.0, "mask-source": "clients"},
            "dp-mode=central with mask-source=clients: the clients' Fisher scores are not "
            "privatised; use mask-source=server (a mask from server-held data costs no privacy)",
        ),
        (
            {"dp-mode": "central", "dp-noise-multiplier": 1.0, "aggregation": "median"},
            "dp-mode=central adds noise to a sum of clipped updates; it needs aggregation sum "
            "or mean, got 'median'",
        ),
        (
            {"dp-mode": "local", "dp-noise-multiplier": 1.0, "dp-clip-quantile": 0.5},
            "dp-clip-quantile (adaptive clipping) needs dp-mode=central: in local mode each "
            "client clips to a fixed dp-clip before the server sees anything",
        ),
        (
            {"dp-mode": "central", "dp-noise-multiplier": 0.5, "dp-target-epsilon": 0.01},
            "one round at dp-noise-multiplier=0.5 already spends epsilon=",
        ),
        (
            {"dp-mode": "central", "dp-noise-multiplier": 1.0, "mask-method": "supermask"},
            "dp-mode=central needs a method whose reply is the k-vector update; "
            "mask-method='supermask' sends something else",
        ),
    ],
)
def test_robust_and_dp_combinations(values: dict[str, Any], expected: str) -> None:
    message = _error(values)
    assert message.startswith(expected), message


def test_robust_and_dp_configs_pass_through() -> None:
    config = RunConfig(
        aggregation="multi-krum", num_clients=7, min_replies=5, krum_f=1, multi_krum_m=4
    )
    assert config.aggregation_config().multi_krum_m == 4
    dp = RunConfig(dp_mode="central", dp_target_epsilon=8.0, num_clients=10, clients_per_round=5)
    privacy = dp.privacy_config()
    assert (privacy.sample_rate, privacy.rounds) == (0.5, 10)
    assert privacy.noise_multiplier_total > 0
