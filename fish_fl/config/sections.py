"""The run configuration's sections: one frozen dataclass per concern.

:class:`~fish_fl.config.RunConfig` is composed of these (and of each method's
own keys, see :mod:`fish_fl.methods.keys`), so every key stays a flat
kebab-case name for ``--set key=value``, presets and Flower's ``run_config``,
while code that needs one concern can take one section
(``config.section(TaskKeys)``).

A key's metadata carries its help text and allowed values, and ``shapes``:
whether it changes the ``data`` a node loads or the ``model`` it builds.
Node-side caches are keyed by a hash of exactly those keys
(:meth:`RunConfig.shape_key`), so a new key declares what it shapes where it
is defined.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..attacks import ATTACKS
from ..federation.privacy import DP_ACCOUNTANTS, DP_MODES
from ..federation.robust import AGGREGATIONS
from ..federation.server_optim import SERVER_OPTIMIZERS
from ..masks.layers import LAYERS_PRESETS
from .keys import PARTITION_SCHEMES, ray_host_port
from .keys import meta as _meta

__all__ = [
    "AttackKeys",
    "FederationKeys",
    "MachineKeys",
    "MaskKeys",
    "OptimizerKeys",
    "PrivacyKeys",
    "TaskKeys",
]


@dataclass(frozen=True)
class TaskKeys:
    """What to train: the task, the model and the data."""

    task: str = field(
        default="sst2",
        metadata=_meta(
            shapes=("data", "model"),
            help="a registered task: GLUE (sst2, cola, stsb, ...), cifar10, cifar100, or "
            "text-classification / image-classification for your own data",
        ),
    )
    model: str = field(
        default="minilm",
        metadata=_meta(
            shapes=("data", "model"),
            help="minilm, resnet34-cifar, resnet18-cifar, torchvision:NAME, or a Hugging Face "
            "sequence or image classifier by hub name or local folder",
        ),
    )
    width: int = field(
        default=64,
        metadata=_meta(
            shapes=("model",), help="ResNet first-stage width (64: the paper's ResNet-34)", min=1
        ),
    )
    data_source: str = field(
        default="embedded",
        metadata=_meta(
            shapes=("data",),
            help="embedded (shipped SST-2 sample), local (data-dir) or hub",
            choices=("embedded", "local", "hub"),
        ),
    )
    data_dir: str = field(
        default="",
        metadata=_meta(shapes=("data",), help="GLUE folder or CIFAR-10 .npz / image folder"),
    )
    train_file: str = field(
        default="",
        metadata=_meta(
            shapes=("data", "model"),
            help="text-classification: training file (.csv, .tsv, .json, .jsonl, .parquet)",
        ),
    )
    eval_file: str = field(
        default="",
        metadata=_meta(shapes=("data",), help="text-classification: held-out evaluation file"),
    )
    text_column: str = field(
        default="text",
        metadata=_meta(
            shapes=("data",), help="text-classification: text column (a position without header)"
        ),
    )
    text_pair_column: str = field(
        default="",
        metadata=_meta(
            shapes=("data",), help="text-classification: second text column of pairs (empty: none)"
        ),
    )
    label_column: str = field(
        default="label",
        metadata=_meta(shapes=("data", "model"), help="text-classification: label column"),
    )
    label_type: str = field(
        default="auto",
        metadata=_meta(
            shapes=("data", "model"),
            help="text-classification: auto (float labels mean regression), classes or regression",
            choices=("auto", "classes", "regression"),
        ),
    )
    header: bool = field(
        default=True,
        metadata=_meta(
            shapes=("data", "model"),
            help="CSV/TSV files start with a header (false: columns are named 0, 1, ...)",
        ),
    )
    hub_dataset: str = field(
        default="",
        metadata=_meta(
            shapes=("data", "model"),
            help="data-source=hub: a Hugging Face data set by name (task=text-classification)",
        ),
    )
    hub_subset: str = field(
        default="",
        metadata=_meta(
            shapes=("data", "model"), help="data-source=hub: the data set's configuration"
        ),
    )
    hub_eval_split: str = field(
        default="",
        metadata=_meta(
            shapes=("data",), help="data-source=hub: held-out split (empty: validation, else test)"
        ),
    )
    max_length: int = field(
        default=128, metadata=_meta(shapes=("data",), help="tokeniser max length", min=8)
    )
    train_examples: int = field(
        default=0,
        metadata=_meta(
            shapes=("data",), help="use only this many training examples (0: all)", min=0
        ),
    )
    eval_examples: int = field(
        default=0,
        metadata=_meta(
            shapes=("data",), help="evaluate on this many held-out examples (0: all)", min=0
        ),
    )
    validation_examples: int = field(
        default=0,
        metadata=_meta(
            shapes=("data",),
            help="carve this many training examples out as a validation split, kept from "
            "every client and scored each round as val_score (0: none)",
            min=0,
        ),
    )
    seed: int = field(
        default=0,
        metadata=_meta(
            shapes=("data", "model"),
            help="seed of every generator in the run (at most 2**32 - 1)",
            min=0,
            max=2**32 - 1,
        ),
    )
    image_size: int = field(
        default=0,
        metadata=_meta(
            shapes=("data",),
            help="image side in pixels (0: the model's own: 32 for the CIFAR ResNets, the "
            "processor's size for a Hugging Face image model)",
            min=0,
        ),
    )
    image_normalize: str = field(
        default="auto",
        metadata=_meta(
            shapes=("data",),
            help="image normalisation: auto (the CIFAR statistics for the CIFAR ResNets, the "
            "model processor's otherwise), cifar10, imagenet or none",
            choices=("auto", "cifar10", "imagenet", "none"),
        ),
    )
    augment: bool = field(
        default=True, metadata=_meta(shapes=("data",), help="image augmentation (crop and flip)")
    )


@dataclass(frozen=True)
class FederationKeys:
    """The federation: clients, rounds, aggregation and the server's defences."""

    num_clients: int = field(
        default=2, metadata=_meta(shapes=("data",), help="simulated clients (partitions)", min=1)
    )
    clients_per_round: int = field(
        default=0, metadata=_meta("clients sampled per round (0: all)", min=0)
    )
    partition: str = field(
        default="iid",
        metadata=_meta(
            shapes=("data",),
            help="client split: iid, dirichlet (label skew), natural (one client per value of "
            "partition-column), pathological (classes-per-client classes each), or size-skewed "
            "linear / square / exponential",
            choices=PARTITION_SCHEMES,
        ),
    )
    partition_column: str = field(
        default="",
        metadata=_meta(
            shapes=("data",), help="partition=natural: the training file's column of client ids"
        ),
    )
    classes_per_client: int = field(
        default=2,
        metadata=_meta(shapes=("data",), help="partition=pathological: classes per client", min=1),
    )
    dirichlet_alpha: float = field(
        default=0.5, metadata=_meta(shapes=("data",), help="Dirichlet concentration", gt=0.0)
    )
    rounds: int = field(default=10, metadata=_meta("federated rounds", min=1))
    local_steps: int = field(
        default=20, metadata=_meta("optimiser steps per client per round", min=1)
    )
    batch_size: int = field(
        default=32, metadata=_meta(shapes=("data",), help="training batch size", min=1)
    )
    eval_batch_size: int = field(
        default=128, metadata=_meta(shapes=("data",), help="evaluation batch size", min=1)
    )
    aggregation: str = field(
        default="mean",
        metadata=_meta(
            "combine client updates: sum, mean (example-weighted), or the robust median "
            "(coordinate-wise), trimmed-mean, krum, multi-krum (one vote per reply)",
            choices=AGGREGATIONS,
        ),
    )
    trim_beta: float = field(
        default=0.1,
        metadata=_meta(
            "trimmed-mean: fraction of values cut from each end of every coordinate, in [0, 0.5)",
            min=0.0,
        ),
    )
    krum_f: int = field(
        default=1,
        metadata=_meta(
            "krum, multi-krum: hostile replies tolerated (needs 2 krum-f + 3 replies)", min=0
        ),
    )
    multi_krum_m: int = field(
        default=0,
        metadata=_meta("multi-krum: updates averaged (0: replies - krum-f)", min=0),
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
    server_optimizer: str = field(
        default="none",
        metadata=_meta(
            "server step on the combined k-vector: none (take it as it is), avgm (FedAvgM), "
            "adam (FedAdam) or yogi (FedYogi), Reddi et al. 2021",
            choices=SERVER_OPTIMIZERS,
        ),
    )
    server_lr: float = field(
        default=0.0,
        metadata=_meta(
            "server learning rate of avgm, adam and yogi (0: 1 for avgm, 0.01 for adam and yogi)",
            min=0.0,
        ),
    )
    server_momentum: float = field(
        default=0.9, metadata=_meta("avgm: server momentum (beta)", min=0.0)
    )
    server_beta1: float = field(
        default=0.9,
        metadata=_meta("adam, yogi: decay of the first moment", min=0.0),
    )
    server_beta2: float = field(
        default=0.99,
        metadata=_meta("adam, yogi: decay of the second moment", min=0.0),
    )
    server_tau: float = field(
        default=1e-3,
        metadata=_meta("adam, yogi: adaptivity (added to the root of the second moment)", gt=0.0),
    )


@dataclass(frozen=True)
class PrivacyKeys:
    """Client-level differential privacy (DP-FedAvg) on the k-vector."""

    dp_mode: str = field(
        default="off",
        metadata=_meta(
            "client-level DP: off, central (the server clips and adds noise) or local (each "
            "client clips and adds its share of the noise)",
            choices=DP_MODES,
        ),
    )
    dp_clip: float = field(
        default=1.0,
        metadata=_meta("bound C on a reply's update norm (the initial one if adaptive)", gt=0.0),
    )
    dp_noise_multiplier: float = field(
        default=0.0,
        metadata=_meta(
            "noise std on the sum is this times C (0: solved from dp-target-epsilon)", min=0.0
        ),
    )
    dp_delta: float = field(
        default=1e-5, metadata=_meta("delta of the reported (epsilon, delta)", gt=0.0, max=0.5)
    )
    dp_target_epsilon: float = field(
        default=0.0,
        metadata=_meta(
            "stop before a round would spend more epsilon than this (0: no target)", min=0.0
        ),
    )
    dp_clip_quantile: float = field(
        default=0.0,
        metadata=_meta(
            "adaptive clipping: target fraction of unclipped replies (0: fixed dp-clip; "
            "central only)",
            min=0.0,
        ),
    )
    dp_clip_lr: float = field(
        default=0.2, metadata=_meta("adaptive clipping: geometric step size", gt=0.0)
    )
    dp_clip_count_noise: float = field(
        default=0.0,
        metadata=_meta(
            "adaptive clipping: noise std on the count of unclipped replies (0: clients per "
            "round / 20)",
            min=0.0,
        ),
    )
    dp_accountant: str = field(
        default="rdp",
        metadata=_meta("Opacus privacy accountant: rdp or prv", choices=DP_ACCOUNTANTS),
    )


@dataclass(frozen=True)
class AttackKeys:
    """Hostile clients (:mod:`fish_fl.attacks`), for tests and benchmarks of the defences."""

    attack: str = field(
        default="none",
        metadata=_meta(
            "what the hostile partitions do: none, sign-flip, scale (to just under the norm "
            "bound), inflate-examples, label-flip, noise or collude",
            choices=ATTACKS,
        ),
    )
    attackers: int = field(
        default=1,
        metadata=_meta("with an attack: the first N partitions are hostile", min=0),
    )
    attacker_ids: str = field(
        default="",
        metadata=_meta("comma-separated hostile partition ids, instead of attackers (empty: none)"),
    )
    attack_scale: float = field(
        default=1.0,
        metadata=_meta(
            "sign-flip: multiplier of the negated update; noise without attack-noise-std: the "
            "noise's norm in honest-update norms",
            gt=0.0,
        ),
    )
    attack_norm: float = field(
        default=0.0,
        metadata=_meta(
            "scale, collude: the crafted update's norm (0: attack-margin x max-update-norm, "
            "else for scale just under the adaptive bound)",
            min=0.0,
        ),
    )
    attack_margin: float = field(
        default=0.99,
        metadata=_meta(
            "scale, collude: fraction of the server's norm bound aimed at", gt=0.0, max=1.0
        ),
    )
    attack_noise_std: float = field(
        default=0.0,
        metadata=_meta(
            "noise: std of every coordinate (0: a random direction of attack-scale honest norms)",
            min=0.0,
        ),
    )
    attack_examples: int = field(
        default=10**9,
        metadata=_meta("inflate-examples: the num-examples claimed", min=1),
    )


@dataclass(frozen=True)
class MaskKeys:
    """The mask: which entries are trained, and how it is built."""

    mask_method: str = field(
        default="fish",
        metadata=_meta(
            shapes=("model",), help="mask builder (fish, random, magnitude, bitfit, layers, dense)"
        ),
    )
    density: float = field(
        default=0.005, metadata=_meta("fraction of parameters trained", gt=0.0, max=1.0)
    )
    mask_source: str = field(
        default="server",
        metadata=_meta(
            shapes=("data",), help="where the Fisher is computed", choices=("server", "clients")
        ),
    )
    mask_assignment: str = field(
        default="shared",
        metadata=_meta("one mask for all, or disjoint per client", choices=("shared", "disjoint")),
    )
    fisher_samples: int = field(
        default=256, metadata=_meta(shapes=("data",), help="Fisher examples N", min=1)
    )
    fisher_kind: str = field(
        default="empirical", metadata=_meta("Fisher estimator", choices=("empirical", "true"))
    )
    head_patterns: tuple[str, ...] = field(
        default=("classifier", "fc", "head"),
        metadata=_meta(
            "task-head name patterns (always trained; regular expressions)", patterns=True
        ),
    )
    layers_preset: str = field(
        default="",
        metadata=_meta("layers mask preset (empty: none)", choices=("", *LAYERS_PRESETS)),
    )
    warmup_rounds: int = field(
        default=0, metadata=_meta("dense rounds before the mask is computed", min=0)
    )
    mask_refresh: int = field(
        default=0, metadata=_meta("recompute the mask every R rounds (0: fixed)", min=0)
    )


@dataclass(frozen=True)
class OptimizerKeys:
    """Local optimisation on each node."""

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
    proximal_mu: float = field(
        default=0.0,
        metadata=_meta(
            "FedProx: adds (mu/2)||w - w_received||^2 over the trained entries to the local "
            "loss (0: off)",
            min=0.0,
        ),
    )


@dataclass(frozen=True)
class MachineKeys:
    """Where and how it runs: devices, resources, output."""

    device: str = field(default="auto", metadata=_meta("auto, cpu, cuda or cuda:N"))
    amp: bool = field(default=False, metadata=_meta("bfloat16 autocast on CUDA"))
    client_num_cpus: float = field(default=1.0, metadata=_meta("CPUs per simulated client", gt=0.0))
    client_num_gpus: float = field(
        default=0.0,
        metadata=_meta(
            "GPUs per simulated client; a fraction puts several clients on one GPU", min=0.0
        ),
    )
    ray_address: str = field(
        default="",
        metadata=_meta(
            "Ray cluster the simulation attaches to: '' starts a local Ray for the run, auto "
            "the cluster `ray start` started on this machine, HOST:PORT a running head node",
            check=ray_host_port,
        ),
    )
    progress: bool = field(
        default=True,
        metadata=_meta(
            "progress bars, and a live line of replies while a round runs (on a terminal)"
        ),
    )
    out_dir: str = field(default="runs", metadata=_meta("folder that run folders are created in"))
