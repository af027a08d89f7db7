"""What a client process keeps between messages, and how a node syncs its model.

Memory does not grow with the number of simulated nodes: a process keeps one
model instance, the run's data, and at most two base models (flat float32
vectors, also cached on disk so that another process on the same machine
finds them). Per node, ``context.state`` keeps only small things: the run
config, the node's mask (compact encoding) and its optimiser state (O(k)).
The optimiser state is also written to disk after every round, under the run
key the server sends, so that a resumed run (a new Flower run, with fresh node
state) continues with the same state.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from torch import Tensor, nn

from fish_fl import protocol as P
from fish_fl.checkpoint import state_fingerprint
from fish_fl.config import RunConfig
from fish_fl.masks import Mask
from fish_fl.models import resolve_device
from fish_fl.supermask import (
    SupermaskLayout,
    SupermaskModel,
    scores_fingerprint,
    values_from_masks,
)
from fish_fl.task import TaskData, build_task_model, load_task_data

__all__ = ["NodeError", "Runtime", "SyncedModel", "runtime"]

logger = logging.getLogger(__name__)

NODE_STATE = "fish-node"
NODE_MASK = "fish-mask"
NODE_OPTIM = "fish-optim"
NODE_OPTIM_META = "fish-optim-meta"

MISSING_BASE = "fish-fl:missing-base"
MISSING_MASK = "fish-fl:missing-mask"


class NodeError(RuntimeError):
    """The node cannot follow the server (a base or mask it should hold is gone)."""


def _cache_dir(kind: str = "bases") -> Path:
    root = os.environ.get("FISH_FL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fish-fl"
    )
    path = Path(root) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


class BaseStore:
    """Base models by fingerprint: two in memory, more on disk."""

    def __init__(self, keep: int = 2, keep_on_disk: int = 4) -> None:
        self.memory: OrderedDict[str, Tensor] = OrderedDict()
        self.keep, self.keep_on_disk = keep, keep_on_disk

    def get(self, fingerprint: str) -> Tensor | None:
        if fingerprint in self.memory:
            self.memory.move_to_end(fingerprint)
            return self.memory[fingerprint]
        path = _cache_dir() / f"{fingerprint}.npy"
        if path.is_file():
            flat = torch.from_numpy(np.load(path))
            self._remember(fingerprint, flat)
            return flat
        return None

    def put(self, fingerprint: str, flat: Tensor, *, to_disk: bool = True) -> None:
        self._remember(fingerprint, flat)
        if to_disk:
            folder = _cache_dir()
            tmp = folder / f".{fingerprint}.{os.getpid()}.npy"
            np.save(tmp, flat.numpy())
            os.replace(tmp, folder / f"{fingerprint}.npy")
            files = sorted(folder.glob("*.npy"), key=lambda p: p.stat().st_mtime)
            for old in files[: -self.keep_on_disk]:
                old.unlink(missing_ok=True)

    def _remember(self, fingerprint: str, flat: Tensor) -> None:
        self.memory[fingerprint] = flat
        self.memory.move_to_end(fingerprint)
        while len(self.memory) > self.keep:
            self.memory.popitem(last=False)


@dataclass
class SyncedModel:
    """A node's model after a message was applied: base, mask and values written in."""

    config: RunConfig
    model: nn.Module
    mask: Mask | None
    values: Tensor
    device: torch.device


#: Run keys that change the model a supermask node builds.
SUPERMASK_KEYS = (
    "supermask-initial-sparsity",
    "supermask-score-lr",
    "supermask-maskable",
    "supermask-eval",
    "head-patterns",
    "lr",
    "weight-decay",
)


class Runtime:
    """Per-process caches: configs, the model instance, the data, the bases."""

    def __init__(self) -> None:
        self.configs: dict[str, RunConfig] = {}
        self.models: dict[str, nn.Module] = {}
        self.data: dict[str, TaskData] = {}
        self.bases = BaseStore()
        self.device: torch.device | None = None

    # -- configuration -----------------------------------------------------
    def config(self, cfg: ConfigRecord, state: RecordDict) -> RunConfig:
        """The run config: sent on first contact, then kept in the node state."""
        text = cfg.get(P.CFG_RUN_CONFIG)
        if isinstance(text, str):
            state[NODE_STATE] = ConfigRecord(
                {P.CFG_RUN_CONFIG: text, **self._node_info(state, skip_config=True)}
            )
        elif (
            NODE_STATE in state.config_records
            and P.CFG_RUN_CONFIG in state.config_records[NODE_STATE]
        ):
            text = str(state.config_records[NODE_STATE][P.CFG_RUN_CONFIG])
        else:
            raise NodeError("node has no run config; the server must send run-config first")
        assert isinstance(text, str)
        if text not in self.configs:
            self.configs[text] = RunConfig.from_json(text)
            self._threads(self.configs[text])
        return self.configs[text]

    def _threads(self, config: RunConfig) -> None:
        if os.environ.get("FISH_FL_SIMULATION") == "1":
            torch.set_num_threads(max(1, int(round(config.client_num_cpus))))

    @staticmethod
    def _node_info(state: RecordDict, skip_config: bool = False) -> dict[str, Any]:
        if NODE_STATE not in state.config_records:
            return {}
        rec = state.config_records[NODE_STATE]
        return {k: v for k, v in rec.items() if not (skip_config and k == P.CFG_RUN_CONFIG)}

    def _set_node_info(self, state: RecordDict, **values: Any) -> None:
        info = self._node_info(state)
        info.update(values)
        state[NODE_STATE] = ConfigRecord(info)

    def model(self, config: RunConfig) -> nn.Module:
        key = json.dumps(
            [config.model, config.task, config.width, config.seed, config.mask_method]
            + (
                [config.to_dict()[k] for k in SUPERMASK_KEYS]
                if config.mask_method == "supermask"
                else []
            )
        )
        if key not in self.models:
            if self.device is None:
                self.device = resolve_device(config.device)
            self.models.clear()
            self.models[key] = build_task_model(config).to(self.device)
        return self.models[key]

    def task_data(self, config: RunConfig) -> TaskData:
        keys = (
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
        flat = config.to_dict()
        key = json.dumps({k: flat[k] for k in keys}, sort_keys=True)
        if key not in self.data:
            self.data.clear()
            self.data[key] = load_task_data(config)
        return self.data[key]

    # -- the base model ------------------------------------------------------
    def _initial_base(self, config: RunConfig, fingerprint: str) -> Tensor:
        flat = self.bases.get(fingerprint)
        if flat is None:
            model = build_task_model(config)
            got = state_fingerprint(dict(model.named_parameters()))
            if got != fingerprint:
                raise NodeError(
                    f"this node builds a base model with fingerprint {got}, the server's is "
                    f"{fingerprint}: model {config.model!r} or its version differs"
                )
            flat = P.flat_parameters(model)
            self.bases.put(fingerprint, flat, to_disk=False)
        return flat

    def _check_base(self, model: nn.Module, flat: Tensor, fingerprint: str) -> None:
        P.load_flat_parameters(model, flat)
        got = state_fingerprint(dict(model.named_parameters()))
        if got != fingerprint:
            raise NodeError(f"received base has fingerprint {got}, expected {fingerprint}")

    def base(
        self, config: RunConfig, cfg: ConfigRecord, arrays: ArrayRecord, state: RecordDict
    ) -> Tensor:
        """The base model this message refers to, as a flat float32 vector."""
        version = int(cfg[P.CFG_BASE_VERSION])  # type: ignore[arg-type]
        fingerprint = str(cfg[P.CFG_BASE_FINGERPRINT])
        model = self.model(config)
        if P.BASE in arrays:
            flat = torch.from_numpy(arrays[P.BASE].numpy().astype(np.float32, copy=True))
            self._check_base(model, flat, fingerprint)
            self.bases.put(fingerprint, flat)
        elif P.BASE_PATCH in arrays:
            info = self._node_info(state)
            old_fp = info.get(P.CFG_BASE_FINGERPRINT)
            old = self.bases.get(str(old_fp)) if old_fp else None
            old_mask = self.stored_mask(state)
            if old is None or old_mask is None:
                raise NodeError(
                    f"{MISSING_BASE}: cannot patch: previous base or mask not on this node"
                )
            flat = old.clone()
            patch = torch.from_numpy(arrays[P.BASE_PATCH].numpy().astype(np.float32, copy=True))
            positions = old_mask.flat_positions()
            if patch.numel() != positions.numel():
                raise NodeError(
                    f"base patch has {patch.numel()} values for a mask of {positions.numel()}"
                )
            flat[positions] = patch
            self._check_base(model, flat, fingerprint)
            self.bases.put(fingerprint, flat)
        elif version == 0:
            flat = self._initial_base(config, fingerprint)
        else:
            got = self.bases.get(fingerprint)
            if got is None:
                raise NodeError(
                    f"{MISSING_BASE}: base version {version} ({fingerprint}) not on this node"
                )
            flat = got
        self._set_node_info(
            state, **{P.CFG_BASE_VERSION: version, P.CFG_BASE_FINGERPRINT: fingerprint}
        )
        return flat

    # -- the mask --------------------------------------------------------------
    @staticmethod
    def stored_mask(state: RecordDict) -> Mask | None:
        if NODE_MASK not in state.array_records:
            return None
        return Mask.from_bytes(state.array_records[NODE_MASK][P.MASK].numpy())

    def mask(self, cfg: ConfigRecord, arrays: ArrayRecord, state: RecordDict) -> Mask:
        version = int(cfg[P.CFG_MASK_VERSION])  # type: ignore[arg-type]
        fingerprint = str(cfg[P.CFG_MASK_FINGERPRINT])
        if P.MASK in arrays:
            data = arrays[P.MASK].numpy()
            mask = Mask.from_bytes(data)
            if mask.fingerprint != fingerprint:
                raise NodeError(
                    f"received mask has fingerprint {mask.fingerprint}, expected {fingerprint}"
                )
            state[NODE_MASK] = ArrayRecord({P.MASK: Array(np.asarray(data, dtype=np.uint8))})
            self._set_node_info(
                state, **{P.CFG_MASK_VERSION: version, P.CFG_MASK_FINGERPRINT: fingerprint}
            )
            return mask
        info = self._node_info(state)
        stored = self.stored_mask(state)
        if (
            stored is None
            or info.get(P.CFG_MASK_VERSION) != version
            or stored.fingerprint != fingerprint
        ):
            raise NodeError(f"{MISSING_MASK}: mask version {version} not on this node")
        return stored

    @staticmethod
    def _supermask_values(
        model: nn.Module, mask: Mask, head: Tensor, cfg: ConfigRecord, arrays: ArrayRecord
    ) -> Tensor:
        """The ``k``-vector of a supermask message whose scores came down as masks.

        ``model`` holds the base (whose scores are the initial ones); the
        scores are rebuilt from the last round's masks and checked against
        the server's fingerprint.
        """
        if not isinstance(model, SupermaskModel):
            raise NodeError("a supermask message reached a node whose model is not a supermask")
        layout = SupermaskLayout.of(model, mask)
        packed: list[np.ndarray] = []
        weights: list[float] = []
        if P.SCORE_MASKS in arrays:
            rows = arrays[P.SCORE_MASKS].numpy()
            raw = arrays[P.SCORE_WEIGHTS].numpy() if P.SCORE_WEIGHTS in arrays else None
            if rows.dtype != np.uint8 or rows.ndim != 2 or rows.shape[1] != layout.packed_bytes:
                raise NodeError(
                    f"score masks must be uint8 rows of {layout.packed_bytes} bytes, "
                    f"got {rows.dtype} {rows.shape}"
                )
            if raw is None or raw.shape != (rows.shape[0],):
                raise NodeError("score masks came without one weight per mask")
            packed, weights = list(rows), [float(w) for w in raw]
        try:
            values = values_from_masks(
                mask.gather(model),
                layout,
                head,
                packed,
                weights,
                max_score=model.config.score_high,
            )
        except ValueError as e:
            raise NodeError(f"cannot rebuild the scores: {e}") from None
        expected = str(cfg.get(P.CFG_SCORES_FINGERPRINT, ""))
        got = scores_fingerprint(values, layout)
        if got != expected:
            raise NodeError(f"rebuilt scores have fingerprint {got}, the server's are {expected}")
        return values

    # -- one message ------------------------------------------------------------
    def sync(
        self, content: RecordDict, state: RecordDict, *, with_mask: bool = True
    ) -> SyncedModel:
        """Bring the process's model to what the message describes."""
        cfg = content.config_records[P.CONFIG]
        arrays = content.array_records[P.ARRAYS]
        config = self.config(cfg, state)
        base = self.base(config, cfg, arrays, state)
        model = self.model(config)
        P.load_flat_parameters(model, base)
        mask: Mask | None = None
        values = torch.zeros(0)
        if with_mask:
            mask = self.mask(cfg, arrays, state)
            values = torch.from_numpy(arrays[P.VALUES].numpy().astype(np.float32, copy=True))
            if config.supermask_masks_down:
                values = self._supermask_values(model, mask, values, cfg, arrays)
            mask.scatter(model, values)
        if P.BUFFERS in arrays:
            P.load_flat_buffers(model, torch.from_numpy(arrays[P.BUFFERS].numpy().copy()))
        assert self.device is not None
        return SyncedModel(config, model, mask, values, self.device)


def save_optimizer(state: RecordDict, optimizer: torch.optim.Optimizer, mask_version: int) -> None:
    """Keep a node's optimiser state (O(k)) across rounds."""
    sd = optimizer.state_dict()
    arrays = {}
    for idx, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                arrays[f"{idx}/{name}"] = Array(value.detach().cpu().numpy())
    state[NODE_OPTIM] = ArrayRecord(arrays)
    state[NODE_OPTIM_META] = ConfigRecord(
        {P.CFG_MASK_VERSION: mask_version, "groups": json.dumps(sd["param_groups"])}
    )


# -- optimiser state on disk, so a resumed run finds it ------------------------
KEEP_ROUNDS = 2  # optimiser states kept per partition
KEEP_RUNS = 8  # runs whose optimiser states are kept


def _optim_dir(run_key: str) -> Path:
    if not run_key.isalnum():
        raise NodeError(f"bad run key {run_key!r}")
    return _cache_dir("optimizer") / run_key


def save_optimizer_file(
    run_key: str, partition: int, rnd: int, optimizer: torch.optim.Optimizer, mask_version: int
) -> None:
    """Write the node's optimiser state after round ``rnd`` (atomically), keep the last few."""
    from safetensors.torch import save_file

    sd = optimizer.state_dict()
    tensors = {
        f"{idx}/{name}": value.detach().cpu().contiguous()
        for idx, entries in sd["state"].items()
        for name, value in entries.items()
        if isinstance(value, Tensor)
    }
    folder = _optim_dir(run_key)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"p{partition}-r{rnd}.safetensors"
    tmp = folder / f".{path.name}.{os.getpid()}.tmp"
    meta = {"mask-version": str(mask_version), "groups": json.dumps(sd["param_groups"])}
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
    mine = sorted(
        folder.glob(f"p{partition}-r*.safetensors"),
        key=lambda p: int(p.stem.rsplit("-r", 1)[1]),
    )
    for old in mine[:-KEEP_ROUNDS]:
        old.unlink(missing_ok=True)
    runs = sorted(
        (d for d in folder.parent.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime
    )
    for old_run in runs[:-KEEP_RUNS]:
        if old_run != folder:
            shutil.rmtree(old_run, ignore_errors=True)


def load_optimizer_file(
    run_key: str, partition: int, rnd: int, optimizer: torch.optim.Optimizer, mask_version: int
) -> bool:
    """Restore the newest state saved before round ``rnd`` for this mask version."""
    from safetensors import safe_open

    folder = _optim_dir(run_key)
    if not folder.is_dir():
        return False
    earlier = [
        (int(p.stem.rsplit("-r", 1)[1]), p) for p in folder.glob(f"p{partition}-r*.safetensors")
    ]
    earlier = [(r, p) for r, p in earlier if r < rnd]
    if not earlier:
        return False
    _, path = max(earlier)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("mask-version") != str(mask_version):
            return False
        entries: dict[int, dict[str, Tensor]] = {}
        for key in f.keys():  # noqa: SIM118
            idx, name = key.split("/", 1)
            entries.setdefault(int(idx), {})[name] = f.get_tensor(key)
    _load_state(optimizer, entries, json.loads(meta["groups"]))
    logger.info("optimiser state of partition %d restored from round %s", partition, path.stem)
    return True


def _load_state(
    optimizer: torch.optim.Optimizer, entries: dict[int, dict[str, Tensor]], groups: Any
) -> None:
    lrs = [g["lr"] for g in optimizer.param_groups]
    optimizer.load_state_dict({"state": entries, "param_groups": groups})
    for g, lr in zip(optimizer.param_groups, lrs, strict=True):
        g["lr"] = lr


def load_optimizer(state: RecordDict, optimizer: torch.optim.Optimizer, mask_version: int) -> bool:
    """Restore the state saved for the same mask version; False if there is none."""
    if NODE_OPTIM not in state.array_records or NODE_OPTIM_META not in state.config_records:
        return False
    meta = state.config_records[NODE_OPTIM_META]
    if meta.get(P.CFG_MASK_VERSION) != mask_version:
        return False
    entries: dict[int, dict[str, Tensor]] = {}
    for key, array in state.array_records[NODE_OPTIM].items():
        idx, name = key.split("/", 1)
        entries.setdefault(int(idx), {})[name] = torch.from_numpy(array.numpy().copy())
    _load_state(optimizer, entries, json.loads(str(meta["groups"])))
    return True


runtime = Runtime()
