"""What a client process keeps between messages, and how a node syncs its model.

Memory does not grow with the number of simulated nodes: a process keeps one
model instance, the run's data, and at most two base models (flat float32
vectors, also cached on disk so that another process on the same machine
finds them). The version-0 base is read off the model instance while it is as
built, so no second instance is ever held, and the C heap's mmap threshold is
fixed (:mod:`fish_fl.memory`) so freed activations go back to the system.

Per node, ``context.state`` keeps only small things. In a simulation, where
the driver holds every node's context, that is the run config and the
fingerprints and versions of the node's base and mask: the mask's bytes live
in the process's :class:`MaskStore` (and the machine's disk cache), once
however many nodes share it, and the optimiser state (O(k)) only on disk.
A real node, which holds only its own context, keeps its mask and optimiser
state in it as well. The optimiser state is written to disk after every
round, under the run key the server sends, so that a resumed run (a new
Flower run, with fresh node state) continues with the same state.

Files on disk carry a checksum of their content (:mod:`fish_fl.fileio`). A
cached base, mask or optimiser state that cannot be read back intact is treated as
missing, with a warning: a missing base makes the node answer with its
``MISSING_BASE`` status and the server sends the base again (a missing mask,
``MISSING_MASK``, likewise); a missing optimiser state starts from a fresh one. Either way the run goes on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
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
from fish_fl.federation.sync import NodeState, resolve
from fish_fl.fileio import read_safetensors, save_safetensors_atomic
from fish_fl.masks import Mask
from fish_fl.memory import keep_torchvision_out, limit_heap_growth
from fish_fl.methods import SparseMethod, method_class, method_for
from fish_fl.models import resolve_device
from fish_fl.protocol import NodeError
from fish_fl.task import TaskData, build_task_model, is_vision, load_task_data

__all__ = ["BaseStore", "MaskStore", "Runtime", "SyncedModel", "runtime", "small_node_state"]

logger = logging.getLogger(__name__)

NODE_STATE = "fish-node"
NODE_MASK = "fish-mask"
NODE_OPTIM = "fish-optim"
NODE_OPTIM_META = "fish-optim-meta"


def _cache_dir(kind: str = "bases") -> Path:
    root = os.environ.get("FISH_FL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "fish-fl"
    )
    path = Path(root) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


class _Store:
    """Tensors by fingerprint: a few in memory, more on disk (checksummed).

    Any process on the machine finds what another one put there. A file that
    does not read back intact is treated as missing, with a warning.
    """

    kind = ""
    key = ""

    def __init__(self, keep: int, keep_on_disk: int) -> None:
        self.memory: OrderedDict[str, Tensor] = OrderedDict()
        self.keep, self.keep_on_disk = keep, keep_on_disk

    def _check(self, path: Path, tensor: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _lookup(self, fingerprint: str) -> Tensor | None:
        if fingerprint in self.memory:
            self.memory.move_to_end(fingerprint)
            return self.memory[fingerprint]
        if not fingerprint.isalnum():
            return None
        path = _cache_dir(self.kind) / f"{fingerprint}.safetensors"
        if not path.is_file():
            return None
        try:
            tensors, _ = read_safetensors(path, require_checksums=True)
            found = self._check(path, tensors.get(self.key))
        except (OSError, ValueError) as e:
            logger.warning("cached %s unusable, treated as missing: %s", self.key, e)
            path.unlink(missing_ok=True)
            return None
        self._remember(fingerprint, found)
        return found

    def _store(self, fingerprint: str, tensor: Tensor, *, to_disk: bool = True) -> None:
        self._remember(fingerprint, tensor)
        if to_disk and fingerprint.isalnum():
            folder = _cache_dir(self.kind)
            path = folder / f"{fingerprint}.safetensors"
            if path.is_file():
                os.utime(path)  # the same content (by fingerprint): kept, as the newest
                return
            save_safetensors_atomic({self.key: tensor.contiguous()}, path, checksums=True)
            files = sorted(folder.glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
            for old in files[: -self.keep_on_disk]:
                old.unlink(missing_ok=True)

    def _remember(self, fingerprint: str, tensor: Tensor) -> None:
        self.memory[fingerprint] = tensor
        self.memory.move_to_end(fingerprint)
        while len(self.memory) > self.keep:
            self.memory.popitem(last=False)


class BaseStore(_Store):
    """Base models (flat float32 vectors) by fingerprint: four on disk, none kept in memory.

    The base a node trains on lives in the process's model itself (see
    :class:`Runtime`); a flat copy is read from disk only when the base
    changes (a mask refresh, a dense warm-up's end) or a node needs another.
    """

    kind, key = "bases", "base"

    def __init__(self, keep: int = 0, keep_on_disk: int = 4) -> None:
        super().__init__(keep, keep_on_disk)

    def _check(self, path: Path, tensor: Tensor | None) -> Tensor:
        if tensor is None or tensor.dtype != torch.float32 or tensor.ndim != 1:
            raise ValueError(f"{path} holds no 1-D float32 'base' tensor")
        return tensor

    def get(self, fingerprint: str) -> Tensor | None:
        return self._lookup(fingerprint)

    def put(self, fingerprint: str, flat: Tensor, *, to_disk: bool = True) -> None:
        self._store(fingerprint, flat, to_disk=to_disk)


class MaskStore(_Store):
    """Masks (their compact encoding) by fingerprint, for nodes whose state is kept small.

    In a simulation every node's ``context.state`` lives in the driver, so a
    node keeps only its mask's fingerprint there and the bytes live here,
    once per process (and once on the machine's disk) however many nodes
    share the mask.
    """

    kind, key = "masks", "mask"

    def __init__(self, keep: int = 4, keep_on_disk: int = 64) -> None:
        super().__init__(keep, keep_on_disk)

    def _check(self, path: Path, tensor: Tensor | None) -> Tensor:
        if tensor is None or tensor.dtype != torch.uint8 or tensor.ndim != 1:
            raise ValueError(f"{path} holds no 1-D uint8 'mask' tensor")
        return tensor

    def get(self, fingerprint: str) -> bytes | None:
        found = self._lookup(fingerprint)
        return None if found is None else found.numpy().tobytes()

    def put(self, fingerprint: str, data: bytes) -> None:
        tensor = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
        self._store(fingerprint, tensor)


def in_ray_actor() -> bool:
    """Whether this process is a Ray actor (a simulation's node process, serving one run)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return False
    try:
        return ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001 -- no actor context: not an actor
        return False


def small_node_state(config: RunConfig) -> bool:
    """Whether a node keeps its mask and optimiser state out of ``context.state``.

    True in a simulation on a local Ray, where the driver holds every node's
    context: there a node keeps only fingerprints and versions (bytes, not
    megabytes), so the driver's memory does not grow with the nodes sampled,
    and every client process shares the machine's disk, where the rest is.
    On a Ray cluster (``ray-address``), where a node's client may run on
    another machine each round, and on a real node, which keeps only its own
    context, the mask and optimiser state stay in ``context.state``.
    """
    return os.environ.get("FISH_FL_SIMULATION") == "1" and not config.ray_address


@dataclass
class SyncedModel:
    """A node's model after a message was applied: base, mask and values written in."""

    config: RunConfig
    method: SparseMethod
    model: nn.Module
    mask: Mask | None
    values: Tensor
    device: torch.device
    base_at_mask: Tensor  # the base's values at the mask's entries (mask order)


def _node_state(state: RecordDict, masks: MaskStore) -> NodeState:
    """The node's sync state, as kept in Flower's ``context.state`` (and the mask store)."""
    info = dict(state.config_records[NODE_STATE]) if NODE_STATE in state.config_records else {}

    def get(key: str, kind: type) -> Any:
        value = info.get(key)
        return value if isinstance(value, kind) else None

    mask = None
    if NODE_MASK in state.array_records:
        mask = state.array_records[NODE_MASK][P.MASK].numpy().tobytes()
    elif (fingerprint := get(P.CFG_MASK_FINGERPRINT, str)) is not None:
        mask = masks.get(fingerprint)  # None: the node answers MISSING_MASK, the server resends

    return NodeState(
        run_config=get(P.CFG_RUN_CONFIG, str),
        base_version=get(P.CFG_BASE_VERSION, int),
        base_fingerprint=get(P.CFG_BASE_FINGERPRINT, str),
        mask_bytes=mask,
        mask_version=get(P.CFG_MASK_VERSION, int),
        mask_fingerprint=get(P.CFG_MASK_FINGERPRINT, str),
    )


def _store_node_state(
    state: RecordDict, node: NodeState, old: NodeState, masks: MaskStore, *, small: bool
) -> None:
    info: dict[str, Any] = {}
    for key, value in (
        (P.CFG_RUN_CONFIG, node.run_config),
        (P.CFG_BASE_VERSION, node.base_version),
        (P.CFG_BASE_FINGERPRINT, node.base_fingerprint),
        (P.CFG_MASK_VERSION, node.mask_version),
        (P.CFG_MASK_FINGERPRINT, node.mask_fingerprint),
    ):
        if value is not None:
            info[key] = value
    state[NODE_STATE] = ConfigRecord(info)
    if node.mask_bytes is not None and node.mask_bytes != old.mask_bytes:
        assert node.mask_fingerprint is not None
        masks.put(node.mask_fingerprint, node.mask_bytes)
        if small:
            if NODE_MASK in state.array_records:
                del state[NODE_MASK]
        else:
            data = np.frombuffer(node.mask_bytes, dtype=np.uint8).copy()
            state[NODE_MASK] = ArrayRecord({P.MASK: Array(data)})


@dataclass
class _Held:
    """What the process's model holds: a base, by fingerprint, except at one mask's entries.

    ``saved`` holds the base's values at ``mask``'s entries, read just before
    a node's values were written there; writing them back restores the base
    in O(k), with no flat copy of the model kept.
    """

    fingerprint: str
    mask: Mask | None = None
    saved: Tensor | None = None


def _model_fingerprint(model: nn.Module) -> str:
    """The fingerprint :func:`~fish_fl.federation.sync.flat_fingerprint` gives the model's flat vector."""
    return state_fingerprint({n: p.detach().float() for n, p in model.named_parameters()})


class Runtime:
    """Per-process caches: configs, the model instance, the data, the bases."""

    def __init__(self) -> None:
        self.configs: dict[str, RunConfig] = {}
        self.models: dict[str, nn.Module] = {}
        self.data: dict[str, TaskData] = {}
        self.bases = BaseStore()
        self.masks = MaskStore()
        self.device: torch.device | None = None
        # What the model holds (None: unknown, a full base must be loaded), and
        # the fingerprint of the weights it was built with (the version-0 base).
        self.held: _Held | None = None
        self.built: str | None = None
        limit_heap_growth()

    # -- configuration -----------------------------------------------------
    def config(self, text: str) -> RunConfig:
        if text not in self.configs:
            try:
                self.configs[text] = RunConfig.from_json(text)
            except ValueError as e:
                raise NodeError(P.Status.BAD_MESSAGE, f"run config: {e}") from None
            self._threads(self.configs[text])
        return self.configs[text]

    def _threads(self, config: RunConfig) -> None:
        if os.environ.get("FISH_FL_SIMULATION") == "1":
            torch.set_num_threads(max(1, int(round(config.client_num_cpus))))

    def model(self, config: RunConfig) -> nn.Module:
        """The process's one model instance, rebuilt when a key that shapes it changes."""
        key = config.shape_key("model", extra=method_class(config.mask_method).model_keys)
        if key not in self.models:
            if self.device is None:
                self.device = resolve_device(config.device)
            if not is_vision(config) and in_ray_actor():
                keep_torchvision_out()  # an actor serves one run: it never needs it
            self.models.clear()
            self.held = None
            model = build_task_model(config).to(self.device)
            self.models[key] = model
            self.built = _model_fingerprint(model)
            self.held = _Held(self.built)
        return self.models[key]

    def restore(self, model: nn.Module) -> None:
        """Write back the held base's values where a node's values were written (O(k))."""
        held = self.held
        if held is None or held.mask is None:
            return
        assert held.saved is not None
        held.mask.scatter(model, held.saved)
        held.mask = held.saved = None
        if os.environ.get("FISH_FL_CHECK_RESTORE") == "1":  # the test suite checks every restore
            got = _model_fingerprint(model)
            if got != held.fingerprint:
                self.held = None
                raise AssertionError(
                    f"restored model has fingerprint {got}, not the held base's {held.fingerprint}: "
                    "something wrote outside the node's mask"
                )

    def held_flat(self, model: nn.Module) -> Tensor:
        """The held base as a flat vector (a copy, made only when the base changes)."""
        self.restore(model)
        return P.flat_parameters(model)

    def initial_base(self, config: RunConfig) -> Tensor:
        """The version-0 base: read off the process's model while it holds it, else rebuilt.

        Either way it is cached on disk, for the next node that needs it.
        """
        key = config.shape_key("model", extra=method_class(config.mask_method).model_keys)
        model = self.models.get(key)
        if model is not None and self.held is not None and self.held.fingerprint == self.built:
            flat = self.held_flat(model)
        else:
            flat = P.flat_parameters(build_task_model(config))
        if self.built is not None and model is not None:
            self.bases.put(self.built, flat)
        return flat

    def task_data(self, config: RunConfig) -> TaskData:
        key = config.shape_key("data")
        if key not in self.data:
            self.data.clear()
            self.data[key] = load_task_data(config)
        return self.data[key]

    # -- one message ------------------------------------------------------------
    def sync(
        self, content: RecordDict, state: RecordDict, *, with_mask: bool = True
    ) -> SyncedModel:
        """Bring the process's model to what the message describes (see :mod:`fish_fl.federation.sync`)."""
        cfg = content.config_records[P.CONFIG]
        arrays = {k: a.numpy() for k, a in content.array_records[P.ARRAYS].items()}
        old = _node_state(state, self.masks)
        text = cfg.get(P.CFG_RUN_CONFIG)
        if not isinstance(text, str) and old.run_config is None:
            raise NodeError(P.Status.NO_RUN_CONFIG, "node has no run config; send run-config first")
        config = self.config(text if isinstance(text, str) else str(old.run_config))
        model = self.model(config)
        shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}

        held = None if self.held is None else (self.held.fingerprint, lambda: self.held_flat(model))
        node, base, mask = resolve(
            cfg,
            arrays,
            old,
            self.bases,
            shapes,
            lambda: self.initial_base(config),
            with_mask=with_mask,
            held=held,
        )
        _store_node_state(state, node, old, self.masks, small=small_node_state(config))
        # The model becomes the node's base: restored where the last node's
        # values were written, or loaded whole when the base is another.
        try:
            if base is None:
                self.restore(model)
            else:
                self.held = None
                P.load_flat_parameters(model, base)
                del base
                self.held = _Held(str(node.base_fingerprint))
            method = method_for(config)
            values = torch.zeros(0)
            at_mask = torch.zeros(0)
            if mask is not None:
                values = torch.from_numpy(arrays[P.VALUES].astype(np.float32, copy=True))
                values = method.node_values(model, mask, values, cfg, arrays)
                at_mask = mask.gather(model)
                assert self.held is not None
                self.held.mask, self.held.saved = mask, at_mask
                mask.scatter(model, values)
        except BaseException:
            self.held = None  # what the model holds is not known: load whole next time
            raise
        if P.BUFFERS in arrays:
            P.load_flat_buffers(model, torch.from_numpy(arrays[P.BUFFERS].copy()))
        assert self.device is not None
        return SyncedModel(config, method, model, mask, values, self.device, at_mask)


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
        raise NodeError(P.Status.BAD_MESSAGE, f"bad run key {run_key!r}")
    return _cache_dir("optimizer") / run_key


def save_optimizer_file(
    run_key: str, partition: int, rnd: int, optimizer: torch.optim.Optimizer, mask_version: int
) -> None:
    """Write the node's optimiser state after round ``rnd`` (atomically), keep the last few."""
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
    meta = {"mask-version": str(mask_version), "groups": json.dumps(sd["param_groups"])}
    save_safetensors_atomic(tensors, path, meta, checksums=True)
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
    """Restore the newest state saved before round ``rnd`` for this mask version.

    False when there is none, or when the newest cannot be read back intact or
    does not fit the optimiser (a warning says why; training starts afresh).
    """
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
    try:
        tensors, meta = read_safetensors(path, require_checksums=True)
        if meta.get("mask-version") != str(mask_version):
            return False
        entries = _entries(optimizer, tensors)
        groups = json.loads(meta.get("groups", ""))
        _load_state(optimizer, entries, groups)
    except (OSError, ValueError, KeyError, TypeError) as e:
        logger.warning("saved optimiser state unusable, starting afresh: %s: %s", path, e)
        return False
    logger.info("optimiser state of partition %d restored from round %s", partition, path.stem)
    return True


def _entries(
    optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor]
) -> dict[int, dict[str, Tensor]]:
    """Per-parameter state from ``{index}/{name}`` tensors, checked against the parameters."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    entries: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        idx, _, name = key.partition("/")
        if not idx.isdigit() or not name or int(idx) >= len(params):
            raise ValueError(f"state entry {key!r} names no parameter of the optimiser")
        shape = params[int(idx)].shape
        if value.ndim and value.shape != shape:
            raise ValueError(
                f"state entry {key!r} has shape {tuple(value.shape)}, not {tuple(shape)}"
            )
        entries.setdefault(int(idx), {})[name] = value
    return entries


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
