"""One typed run configuration, validated once at the edge.

A :class:`RunConfig` is read from a preset TOML file, ``--set key=value``
overrides, or Flower's ``run_config`` (flat kebab-case keys). Everything
downstream receives the dataclass, never the raw mapping. Bad values raise a
one-line ``ValueError`` naming the key, the value and what is allowed, before
any model is built.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from .masks import MaskSpec, available_builders
from .supermask.federated import DOWNLINKS, UPLINKS
from .training import OptimizerConfig

__all__ = ["DATA_KEYS", "MODEL_KEYS", "ConfigError", "RunConfig", "parse_override"]


#: Keys that change the data a client process loads (its cache is keyed by them).
DATA_KEYS: tuple[str, ...] = (
    "task",
    "model",
    "data-source",
    "data-dir",
    "max-length",
    "train-examples",
    "eval-examples",
    "seed",
    "num-clients",
    "partition",
    "dirichlet-alpha",
    "fisher-samples",
    "mask-source",
    "batch-size",
    "eval-batch-size",
    "augment",
)
#: Keys that change the model a client process builds (a method adds its own).
MODEL_KEYS: tuple[str, ...] = ("model", "task", "width", "seed", "mask-method")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


def _meta(help: str, **choices: Any) -> dict[str, Any]:
    return {"help": help, **choices}


@dataclass(frozen=True)
class RunConfig:
    """Everything one federated run needs. Keys are kebab-case outside Python."""

    # -- what to train ------------------------------------------------------
    task: str = field(
        default="sst2", metadata=_meta("GLUE task (sst2, cola, stsb, ...) or cifar10")
    )
    model: str = field(
        default="minilm",
        metadata=_meta("minilm, resnet34-cifar, resnet18-cifar, a hub name or a local folder"),
    )
    width: int = field(
        default=64, metadata=_meta("ResNet first-stage width (64: the paper's ResNet-34)", min=1)
    )
    data_source: str = field(
        default="embedded",
        metadata=_meta(
            "embedded (shipped SST-2 sample), local (data-dir) or hub",
            choices=("embedded", "local", "hub"),
        ),
    )
    data_dir: str = field(default="", metadata=_meta("GLUE folder or CIFAR-10 .npz / image folder"))
    max_length: int = field(default=128, metadata=_meta("tokeniser max length", min=8))
    train_examples: int = field(
        default=0, metadata=_meta("use only this many training examples (0: all)", min=0)
    )
    eval_examples: int = field(
        default=0, metadata=_meta("evaluate on this many held-out examples (0: all)", min=0)
    )
    seed: int = field(default=0, metadata=_meta("seed of every generator in the run", min=0))

    # -- the federation -------------------------------------------------------
    num_clients: int = field(default=2, metadata=_meta("simulated clients (partitions)", min=1))
    clients_per_round: int = field(
        default=0, metadata=_meta("clients sampled per round (0: all)", min=0)
    )
    partition: str = field(
        default="iid", metadata=_meta("client split", choices=("iid", "dirichlet"))
    )
    dirichlet_alpha: float = field(default=0.5, metadata=_meta("Dirichlet concentration", gt=0.0))
    rounds: int = field(default=10, metadata=_meta("federated rounds", min=1))
    local_steps: int = field(
        default=20, metadata=_meta("optimiser steps per client per round", min=1)
    )
    batch_size: int = field(default=32, metadata=_meta("training batch size", min=1))
    eval_batch_size: int = field(default=128, metadata=_meta("evaluation batch size", min=1))
    aggregation: str = field(
        default="mean", metadata=_meta("combine client updates", choices=("sum", "mean"))
    )
    persist_optimizer: bool = field(
        default=True, metadata=_meta("clients keep optimiser state across rounds")
    )
    update_dtype: str = field(
        default="float32",
        metadata=_meta("uplink value dtype", choices=("float32", "float16", "bfloat16")),
    )
    max_update_norm: float = field(
        default=0.0, metadata=_meta("bound on a client update's L2 norm (0: none)", min=0.0)
    )
    norm_policy: str = field(
        default="reject",
        metadata=_meta(
            "an update above max-update-norm is rejected or clipped to it",
            choices=("reject", "clip"),
        ),
    )
    norm_factor: float = field(
        default=10.0,
        metadata=_meta(
            "without max-update-norm: reject updates above this many times the lower median "
            "norm of the round's and the last round's updates (0: no adaptive bound)",
            min=0.0,
        ),
    )
    max_client_examples: int = field(
        default=0,
        metadata=_meta(
            "cap on the examples a reply may claim (0: the largest partition of the server's split)",
            min=0,
        ),
    )
    max_skipped_rounds: int = field(
        default=3,
        metadata=_meta(
            "end the run with an error after this many rounds in a row without enough valid "
            "replies (0: never)",
            min=0,
        ),
    )
    min_replies: int = field(
        default=1, metadata=_meta("valid replies needed to update the model", min=1)
    )
    round_timeout: float = field(
        default=3600.0, metadata=_meta("seconds to wait for replies", gt=0.0)
    )
    federated_eval: bool = field(default=False, metadata=_meta("also evaluate on the clients"))
    eval_every: int = field(
        default=1, metadata=_meta("centralised evaluation every N rounds", min=1)
    )
    budget_fme: float = field(
        default=0.0,
        metadata=_meta("stop at this traffic, in full-model equivalents (0: off)", min=0.0),
    )
    budget_mb: float = field(
        default=0.0, metadata=_meta("stop at this traffic, in megabytes (0: off)", min=0.0)
    )

    # -- the mask -------------------------------------------------------------
    mask_method: str = field(
        default="fish",
        metadata=_meta("mask builder (fish, random, magnitude, bitfit, layers, dense)"),
    )
    density: float = field(
        default=0.005, metadata=_meta("fraction of parameters trained", gt=0.0, max=1.0)
    )
    mask_source: str = field(
        default="server",
        metadata=_meta("where the Fisher is computed", choices=("server", "clients")),
    )
    mask_assignment: str = field(
        default="shared",
        metadata=_meta("one mask for all, or disjoint per client", choices=("shared", "disjoint")),
    )
    fisher_samples: int = field(default=256, metadata=_meta("Fisher examples N", min=1))
    fisher_kind: str = field(
        default="empirical", metadata=_meta("Fisher estimator", choices=("empirical", "true"))
    )
    head_patterns: tuple[str, ...] = field(
        default=("classifier", "fc", "head"),
        metadata=_meta("task-head name patterns (always trained)"),
    )
    layers_preset: str = field(default="", metadata=_meta("layers mask preset"))
    warmup_rounds: int = field(
        default=0, metadata=_meta("dense rounds before the mask is computed", min=0)
    )
    mask_refresh: int = field(
        default=0, metadata=_meta("recompute the mask every R rounds (0: fixed)", min=0)
    )

    # -- supermasks (mask-method=supermask) ------------------------------------
    supermask_uplink: str = field(
        default="mask",
        metadata=_meta(
            "supermask clients send a sampled binary mask (1 bit per weight) or score updates",
            choices=UPLINKS,
        ),
    )
    supermask_downlink: str = field(
        default="auto",
        metadata=_meta(
            "the server sends the last round's sampled masks (1 bit per weight per client) "
            "or float32 scores (auto: masks when the uplink is masks and under 32 clients a round)",
            choices=("auto", *DOWNLINKS),
        ),
    )
    supermask_initial_sparsity: float = field(
        default=0.0,
        metadata=_meta("fraction of each masked weight that starts off (smallest |w|)", min=0.0),
    )
    supermask_score_lr: float = field(
        default=0.2,
        metadata=_meta("learning rate of the supermask scores (lr: the head's)", gt=0.0),
    )
    supermask_maskable: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "name patterns of the masked weights (empty: the encoder blocks, or a ResNet's convolutions)"
        ),
    )
    supermask_eval: str = field(
        default="threshold",
        metadata=_meta(
            "mask of the centralised evaluation: the most likely (threshold) or the expected one",
            choices=("threshold", "expected"),
        ),
    )
    supermask_eval_samples: int = field(
        default=3, metadata=_meta("sampled masks scored after the last round", min=0)
    )

    # -- optimisation ---------------------------------------------------------
    optimizer: str = field(default="adamw", metadata=_meta("optimiser", choices=("adamw", "sgd")))
    lr: float = field(default=1e-3, metadata=_meta("learning rate", gt=0.0))
    lr_schedule: str = field(
        default="constant",
        metadata=_meta(
            "per-round learning rate: constant, or linear / cosine decay over the rounds",
            choices=("constant", "linear", "cosine"),
        ),
    )
    weight_decay: float = field(
        default=0.0, metadata=_meta("weight decay of trained entries", min=0.0)
    )
    momentum: float = field(default=0.9, metadata=_meta("SGD momentum", min=0.0, max=1.0))
    nesterov: bool = field(default=False, metadata=_meta("SGD Nesterov momentum"))
    grad_clip: float = field(
        default=1.0, metadata=_meta("global gradient-norm clip (0: off)", min=0.0)
    )
    augment: bool = field(default=True, metadata=_meta("image augmentation (crop and flip)"))

    # -- machine --------------------------------------------------------------
    device: str = field(default="auto", metadata=_meta("auto, cpu, cuda or cuda:N"))
    amp: bool = field(default=False, metadata=_meta("bfloat16 autocast on CUDA"))
    client_num_cpus: float = field(default=1.0, metadata=_meta("CPUs per simulated client", gt=0.0))
    client_num_gpus: float = field(
        default=0.0, metadata=_meta("GPUs per simulated client", min=0.0)
    )
    progress: bool = field(default=True, metadata=_meta("progress bars"))
    out_dir: str = field(default="runs", metadata=_meta("folder that run folders are created in"))

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            _check_field(f, getattr(self, f.name))
        self._check_combinations()

    # -- consistency between keys ---------------------------------------------
    def _check_combinations(self) -> None:
        if self.mask_method not in available_builders():
            raise ConfigError(
                f"mask-method={self.mask_method!r} is not allowed; choose one of {', '.join(available_builders())}"
            )
        from .methods import method_class

        method_class(self.mask_method).check_config(self)
        if self.warmup_rounds >= self.rounds:
            raise ConfigError(
                f"warmup-rounds={self.warmup_rounds} must be smaller than rounds={self.rounds}"
            )
        if self.clients_per_round > self.num_clients:
            raise ConfigError(
                f"clients-per-round={self.clients_per_round} exceeds num-clients={self.num_clients}"
            )
        if self.min_replies > self.sampled_clients:
            raise ConfigError(
                f"min-replies={self.min_replies} exceeds the {self.sampled_clients} clients sampled per round"
            )
        if self.mask_assignment == "disjoint":
            if self.mask_method not in ("fish", "random", "magnitude"):
                raise ConfigError(
                    f"mask-assignment=disjoint needs a scored mask (fish, random, magnitude), got mask-method={self.mask_method!r}"
                )
            if self.density * self.num_clients > 1:
                raise ConfigError(
                    f"mask-assignment=disjoint with density={self.density} and num-clients={self.num_clients}: "
                    "density x clients must be <= 1"
                )
        if self.mask_source == "clients" and self.mask_method != "fish":
            raise ConfigError(
                f"mask-source=clients computes a Fisher on the clients; it needs mask-method=fish, got {self.mask_method!r}"
            )
        if self.data_source == "local" and not self.data_dir:
            raise ConfigError("data-source=local needs data-dir (a GLUE folder or a CIFAR-10 .npz)")
        self.mask_spec()  # the mask options themselves
        self.optimizer_config()

    def round_lr(self, rnd: int) -> float:
        """The learning rate of round ``rnd`` (1-based) under ``lr-schedule``."""
        done = (rnd - 1) / self.rounds
        if self.lr_schedule == "linear":
            return self.lr * (1.0 - done)
        if self.lr_schedule == "cosine":
            return self.lr * 0.5 * (1.0 + math.cos(math.pi * done))
        return self.lr

    @property
    def sampled_clients(self) -> int:
        return self.clients_per_round or self.num_clients

    def mask_spec(self, method: str | None = None, density: float | None = None) -> MaskSpec:
        try:
            return MaskSpec(
                method=method or self.mask_method,
                density=self.density if density is None else density,
                head_patterns=self.head_patterns,
                seed=self.seed,
                fisher_samples=self.fisher_samples,
                fisher_kind=self.fisher_kind,
                layers_preset=self.layers_preset,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def optimizer_config(self) -> OptimizerConfig:
        try:
            return OptimizerConfig(
                name=self.optimizer,
                lr=self.lr,
                weight_decay=self.weight_decay,
                momentum=self.momentum,
                nesterov=self.nesterov,
                grad_clip=self.grad_clip,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    # -- reading and writing ----------------------------------------------------
    @classmethod
    def keys(cls) -> list[str]:
        return [_kebab(f.name) for f in dataclasses.fields(cls)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], base: RunConfig | None = None) -> RunConfig:
        """Build from flat kebab-case (or snake_case) keys; unknown keys are errors."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = dataclasses.asdict(base) if base is not None else {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in fields:
                raise ConfigError(
                    f"unknown config key {key!r}; known keys: {', '.join(cls.keys())}"
                )
            kwargs[name] = _coerce(fields[name], key, value)
        return cls(**kwargs)

    @classmethod
    def from_toml(cls, path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid TOML ({e})") from None
        table = data.get("run", data)
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: run must be a [run] table, got run={table!r}")
        flat = dict(table)
        flat.update(overrides or {})
        return cls.from_mapping(flat)

    def to_dict(self) -> dict[str, Any]:
        """Flat kebab-case mapping (JSON- and TOML-ready)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[_kebab(f.name)] = list(value) if isinstance(value, tuple) else value
        return out

    def shape_key(self, kind: str, extra: tuple[str, ...] = ()) -> str:
        """A hash of the keys that shape the ``data`` or the ``model`` (plus ``extra``).

        Caches of loaded data and built models are keyed by it, so a change
        of any such key can never reuse a stale entry.
        """
        import hashlib

        keys = {"data": DATA_KEYS, "model": MODEL_KEYS}[kind] + tuple(extra)
        flat = self.to_dict()
        text = json.dumps({k: flat[k] for k in keys}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_mapping(json.loads(text))

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _field_type(f: dataclasses.Field[Any]) -> Any:
    hints = typing.get_type_hints(RunConfig)
    return hints[f.name]


def _coerce(f: dataclasses.Field[Any], key: str, value: Any) -> Any:
    """Convert strings from the command line or Flower's run_config to the field's type."""
    kind = _field_type(f)
    origin = typing.get_origin(kind)
    if origin is tuple or kind is tuple:
        if isinstance(value, str):
            return tuple(p.strip() for p in value.split(",") if p.strip())
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (
            "true",
            "1",
            "yes",
            "on",
            "false",
            "0",
            "no",
            "off",
        ):
            return value.lower() in ("true", "1", "yes", "on")
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if kind is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if kind is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    return value  # pragma: no cover


def _check_field(f: dataclasses.Field[Any], value: Any) -> None:
    key = _kebab(f.name)
    kind = _field_type(f)
    expected: Any = tuple if typing.get_origin(kind) is tuple else kind
    if isinstance(expected, types.UnionType):  # pragma: no cover
        return
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(
            f"{key}: expected {getattr(expected, '__name__', expected)}, got {value!r}"
        )
    meta = f.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(
            f"{key}={value!r} is not allowed; choose one of {', '.join(meta['choices'])}"
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be finite")
        if "min" in meta and value < meta["min"]:
            raise ConfigError(f"{key}={value!r} must be >= {meta['min']}")
        if "gt" in meta and value <= meta["gt"]:
            raise ConfigError(f"{key}={value!r} must be > {meta['gt']}")
        if "max" in meta and value > meta["max"]:
            raise ConfigError(f"{key}={value!r} must be <= {meta['max']}")


def parse_override(text: str) -> tuple[str, str]:
    """``"key=value"`` from the command line."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()
