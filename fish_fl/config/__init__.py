"""One typed run configuration, validated once at the edge.

A :class:`RunConfig` is read from a preset TOML file, ``--set key=value``
overrides, or Flower's ``run_config`` (flat kebab-case keys). Everything
downstream receives the dataclass, never the raw mapping. Bad values raise a
one-line ``ValueError`` naming the key, the value and what is allowed, before
any model is built.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from ..attacks import UPDATE_ATTACKS, AttackConfig
from ..federation.privacy import PrivacyConfig
from ..federation.robust import Aggregation
from ..federation.server_optim import ServerOptimizerConfig
from ..masks import MaskSpec, available_builders, available_scorers
from ..methods.keys import MethodKeys
from ..training import OptimizerConfig
from .keys import SHAPES
from .sections import (
    AttackKeys,
    FederationKeys,
    MachineKeys,
    MaskKeys,
    OptimizerKeys,
    PrivacyKeys,
    TaskKeys,
)

__all__ = [
    "DATA_KEYS",
    "MODEL_KEYS",
    "SECTIONS",
    "AttackKeys",
    "ConfigError",
    "FederationKeys",
    "MachineKeys",
    "MaskKeys",
    "MethodKeys",
    "OptimizerKeys",
    "PrivacyKeys",
    "RunConfig",
    "TaskKeys",
    "keys_that_shape",
    "parse_override",
]


_S = TypeVar("_S")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class RunConfig(
    MachineKeys,
    OptimizerKeys,
    MethodKeys,
    MaskKeys,
    AttackKeys,
    PrivacyKeys,
    FederationKeys,
    TaskKeys,
):
    """Everything one federated run needs. Keys are kebab-case outside Python.

    Composed of the sections in :mod:`fish_fl.config.sections` (task,
    federation, privacy, attacks, mask, optimiser, machine) and every method's own keys
    (:mod:`fish_fl.methods.keys`); a field's metadata gives its help, its
    allowed values and what it shapes.
    """

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
        from ..methods import method_class
        from ..tasks import task_entry

        try:
            task = task_entry(self.task)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        task.check_config(self)
        if self.partition == "natural" and not task.has_partition_column:
            raise ConfigError(
                f"partition=natural needs a column of client ids, and task={self.task} has none; "
                "use task=text-classification with partition-column"
            )
        if self.partition == "natural" and not self.partition_column:
            raise ConfigError(
                "partition=natural needs partition-column (the training file's column of client ids)"
            )

        method_class(self.mask_method).check_config(self)
        if self.warmup_rounds >= self.rounds:
            raise ConfigError(
                f"warmup-rounds={self.warmup_rounds} must be smaller than rounds={self.rounds}"
            )
        calibration = self.fisher_samples if self.mask_source == "server" else 0
        if self.validation_examples and self.train_examples:
            # The data's own size is checked when it is read (task.check_calibration).
            left = self.train_examples - calibration - self.validation_examples
            if left < self.num_clients:
                raise ConfigError(
                    f"validation-examples={self.validation_examples} leaves {max(left, 0)} of "
                    f"train-examples={self.train_examples}"
                    + (f" after fisher-samples={calibration}" if calibration else "")
                    + f" for num-clients={self.num_clients}: every client needs at least one"
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
            if self.mask_method not in available_scorers():
                raise ConfigError(
                    f"mask-assignment=disjoint needs a scored mask ({', '.join(available_scorers())}), got mask-method={self.mask_method!r}"
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
        self.mask_spec()  # the mask options themselves
        self.optimizer_config()
        self.server_optimizer_config()
        self._check_aggregation()
        self._check_privacy()
        self._check_attack()
        if self.server_optimizer == "none" and self.server_lr > 0:
            raise ConfigError(
                f"server-lr={self.server_lr} has no effect with server-optimizer=none; "
                "choose avgm, adam or yogi (avgm with server-momentum=0 scales the plain step)"
            )

    def _check_aggregation(self) -> None:
        rule = self.aggregation_config()
        if not rule.robust:
            return
        if self.mask_assignment == "disjoint":
            raise ConfigError(
                f"aggregation={self.aggregation} compares replies coordinate by coordinate; "
                "it needs mask-assignment=shared"
            )
        if rule.check_replies(self.sampled_clients) is not None:
            raise ConfigError(
                f"aggregation={self.aggregation} needs at least {rule.min_replies()} replies a "
                f"round ({rule.check_replies(self.sampled_clients)}); raise clients-per-round "
                "or num-clients, or lower krum-f / multi-krum-m"
            )
        if self.min_replies < rule.min_replies():
            raise ConfigError(
                f"aggregation={self.aggregation} needs min-replies >= {rule.min_replies()}, "
                f"got {self.min_replies}"
            )

    def _check_privacy(self) -> None:
        dp = self.privacy_config()
        if not dp.enabled:
            return
        from ..methods import method_class

        if self.mask_source == "clients":
            raise ConfigError(
                f"dp-mode={self.dp_mode} with mask-source=clients: the clients' Fisher scores "
                "are not privatised; use mask-source=server (a mask from server-held data "
                "costs no privacy)"
            )
        if self.aggregation not in ("sum", "mean"):
            raise ConfigError(
                f"dp-mode={self.dp_mode} adds noise to a sum of clipped updates; it needs "
                f"aggregation sum or mean, got {self.aggregation!r}"
            )
        if self.mask_assignment != "shared":
            raise ConfigError(f"dp-mode={self.dp_mode} needs mask-assignment=shared")
        if not method_class(self.mask_method).plain_updates:
            raise ConfigError(
                f"dp-mode={self.dp_mode} needs a method whose reply is the k-vector update; "
                f"mask-method={self.mask_method!r} sends something else"
            )

    def _check_attack(self) -> None:
        attack = self.attack_config()
        if attack.name == "none":
            return
        from ..methods import method_class

        if attack.name in UPDATE_ATTACKS and not method_class(self.mask_method).plain_updates:
            raise ConfigError(
                f"attack={attack.name} replaces the k-vector update; mask-method="
                f"{self.mask_method!r} sends something else"
            )
        if attack.name == "collude" and self.mask_assignment != "shared":
            raise ConfigError(
                "attack=collude sends one vector from every colluder; it needs "
                "mask-assignment=shared"
            )

    def attack_config(self) -> AttackConfig:
        """The hostile partitions and their attack (``attack``, ``attackers``, ``attack-*``)."""
        named = bool(self.attacker_ids.strip())
        if self.attack != "none" and not named and self.attackers > self.num_clients:
            raise ConfigError(f"attackers={self.attackers} exceeds num-clients={self.num_clients}")
        ids: tuple[int, ...] = tuple(range(min(self.attackers, self.num_clients)))
        if named:
            parts = [p.strip() for p in self.attacker_ids.split(",")]
            if not all(p.isdigit() for p in parts):
                raise ConfigError(
                    f"attacker-ids={self.attacker_ids!r} must be partition ids separated by commas"
                )
            ids = tuple(int(p) for p in parts)
        try:
            return AttackConfig(
                name=self.attack,
                attackers=ids,
                num_clients=self.num_clients,
                scale=self.attack_scale,
                norm=self.attack_norm,
                margin=self.attack_margin,
                noise_std=self.attack_noise_std,
                examples=self.attack_examples,
                max_update_norm=self.max_update_norm,
                norm_factor=self.norm_factor,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def aggregation_config(self) -> Aggregation:
        try:
            return Aggregation(
                name=self.aggregation,
                trim_beta=self.trim_beta,
                krum_f=self.krum_f,
                multi_krum_m=self.multi_krum_m,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def privacy_config(self) -> PrivacyConfig:
        try:
            return PrivacyConfig(
                mode=self.dp_mode,
                clip=self.dp_clip,
                noise_multiplier=self.dp_noise_multiplier,
                delta=self.dp_delta,
                target_epsilon=self.dp_target_epsilon,
                clip_quantile=self.dp_clip_quantile,
                clip_lr=self.dp_clip_lr,
                clip_count_noise=self.dp_clip_count_noise,
                accountant=self.dp_accountant,
                clients_per_round=self.sampled_clients,
                num_clients=self.num_clients,
                rounds=self.rounds,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

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
                proximal_mu=self.proximal_mu,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None

    def server_optimizer_config(self) -> ServerOptimizerConfig:
        try:
            return ServerOptimizerConfig(
                name=self.server_optimizer,
                lr=self.server_lr,
                momentum=self.server_momentum,
                beta1=self.server_beta1,
                beta2=self.server_beta2,
                tau=self.server_tau,
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
        if kind not in _SHAPING:
            raise ValueError(f"unknown shape kind {kind!r}; expected one of {', '.join(SHAPES)}")
        keys = _SHAPING[kind] + tuple(extra)
        flat = self.to_dict()
        text = json.dumps({k: flat[k] for k in keys}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def section(self, cls: type[_S]) -> _S:
        """This configuration's values of one section (e.g. ``config.section(TaskKeys)``)."""
        if not issubclass(RunConfig, cls):
            raise TypeError(f"{cls.__name__} is not a section of RunConfig")
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        return cls(**{n: getattr(self, n) for n in names})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RunConfig:
        return cls.from_mapping(json.loads(text))

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)


#: The sections a :class:`RunConfig` is composed of, in the order keys are listed.
SECTIONS: tuple[type, ...] = (
    TaskKeys,
    FederationKeys,
    PrivacyKeys,
    AttackKeys,
    MaskKeys,
    OptimizerKeys,
    MachineKeys,
    MethodKeys,
)


def keys_that_shape(kind: str) -> tuple[str, ...]:
    """The keys whose metadata says they shape ``kind`` (``data`` or ``model``)."""
    if kind not in SHAPES:
        raise ValueError(f"unknown shape kind {kind!r}; expected one of {', '.join(SHAPES)}")
    return tuple(
        _kebab(f.name) for f in dataclasses.fields(RunConfig) if kind in f.metadata["shapes"]
    )


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
            f"{key}={value!r} is not allowed; choose one of "
            + ", ".join(str(c) if c != "" else "'' (none)" for c in meta["choices"])
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
    if "check" in meta:
        try:
            meta["check"](value)
        except ValueError as e:
            raise ConfigError(f"{key}={value!r}: {e}") from None
    if meta.get("patterns"):
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ConfigError(
                    f"{key}: {pattern!r} is not a valid regular expression ({e})"
                ) from None


def parse_override(text: str) -> tuple[str, str]:
    """``"key=value"`` from the command line."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


#: Keys that change the data a node loads (its cache is keyed by them).
DATA_KEYS: tuple[str, ...] = keys_that_shape("data")
#: Keys that change the model a node builds (a method adds its own, ``model_keys``).
MODEL_KEYS: tuple[str, ...] = keys_that_shape("model")
_SHAPING: dict[str, tuple[str, ...]] = {"data": DATA_KEYS, "model": MODEL_KEYS}
