"""Client partitions, the server's calibration split, and label statistics.

The training split of a data set is divided three ways:

* a **calibration** sample (``calibration_size`` examples drawn uniformly),
  kept by the server to estimate the Fisher information for the FISH mask;
* **client partitions** of the rest, made with the ``flwr-datasets``
  partitioners, which work offline on an in-memory :class:`datasets.Dataset`
  built from the labels: IID (``IidPartitioner``'s shards, computed without
  it to spare every process the import), label-skewed by a
  Dirichlet distribution (``DirichletPartitioner``) or by a fixed number of
  classes per client (``PathologicalPartitioner``), one client per value of a
  group column such as a user id (``NaturalIdPartitioner``), or size-skewed
  with mixed labels (``LinearPartitioner``, ``SquarePartitioner``,
  ``ExponentialPartitioner``);
* the held-out evaluation split is a separate split of the data set (the
  GLUE dev set, the CIFAR-10 test set), which no client ever trains on.

Everything is reproducible from one integer seed (or a
``numpy.random.Generator`` from which the seed is drawn). ``flwr_datasets``
is imported inside the functions that need it, so importing :mod:`fish_fl`
stays fast.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "PARTITION_SCHEMES",
    "TV_WARNING",
    "ClientPartitions",
    "PartitionReport",
    "class_ids",
    "label_histograms",
    "make_client_partitions",
    "mean_tv_distance",
    "natural_groups",
    "partition_indices",
    "partition_report",
    "partition_summary",
    "split_calibration",
]

#: Supported partition schemes.
PARTITION_SCHEMES: tuple[str, ...] = (
    "iid",
    "dirichlet",
    "natural",
    "pathological",
    "linear",
    "square",
    "exponential",
)

#: Mean total-variation distance (client vs global label distribution) above
#: which :func:`partition_report` warns that a split is strongly non-IID.
TV_WARNING = 0.3

_SIZE_SCHEMES = ("linear", "square", "exponential")

Seed = int | np.random.Generator


def _seed_int(seed: Seed) -> int:
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(0, 2**32))
    if isinstance(seed, (bool, float)) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an int or numpy Generator, got {seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


def class_ids(labels: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, int]:
    """Turn labels into integer class ids for partitioning and histograms.

    Parameters
    ----------
    labels : array-like
        Non-negative integer class ids, float scores (rounded to the nearest
        integer, so STS-B's 0-5 scores become six bins), or any other
        hashable values (numbered in sorted order).

    Returns
    -------
    ids : numpy.ndarray
        int64 class ids, one per example.
    num_classes : int
        One more than the largest id.

    Raises
    ------
    ValueError
        If ``labels`` is not one-dimensional or has negative integer ids.
    """
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
    if array.size == 0:
        return array.astype(np.int64), 0
    if np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.bool_):
        ids = array.astype(np.int64)
        if ids.min() < 0:
            raise ValueError(f"class ids must be >= 0, got {ids.min()}")
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("float labels must be finite")
        ids = np.rint(array).astype(np.int64)
        ids -= min(0, int(ids.min()))
    else:
        _, ids = np.unique(array, return_inverse=True)
        ids = ids.astype(np.int64)
    return ids, int(ids.max()) + 1


def _index_column(dataset: Any) -> np.ndarray:
    """The ``index`` column of a (selected) ``datasets.Dataset``, read through Arrow."""
    column = dataset.with_format("arrow")["index"]
    return np.asarray(column.to_numpy(), dtype=np.int64)


def _check_common(n: int, num_partitions: int, min_partition_size: int) -> None:
    if num_partitions < 1:
        raise ValueError(f"num_partitions must be >= 1, got {num_partitions}")
    if min_partition_size < 0:
        raise ValueError(f"min_partition_size must be >= 0, got {min_partition_size}")
    if num_partitions > n:
        raise ValueError(
            f"cannot split {n} examples among {num_partitions} clients: expected at most one "
            "client per example"
        )


def natural_groups(
    groups: Sequence[Any] | np.ndarray, num_examples: int | None = None
) -> tuple[np.ndarray, list[str]]:
    """Number the values of a group column (a user id, a speaker) for a natural split.

    Values are compared and sorted as strings, so a column of mixed types
    splits the same way on every run: group ``i`` is the ``i``-th distinct
    value in string order.

    Parameters
    ----------
    groups : array-like
        One hashable value per example.
    num_examples : int, optional
        Expected length (that of the labels).

    Returns
    -------
    codes : numpy.ndarray
        int64 group number of each example.
    names : list of str
        The distinct values as strings, in sorted order (``names[codes[j]]``
        is example ``j``'s value).

    Raises
    ------
    ValueError
        If ``groups`` is not one-dimensional or its length is not
        ``num_examples``.
    """
    array = np.asarray(groups, dtype=object)
    if array.ndim != 1:
        raise ValueError(f"groups must be one-dimensional, got shape {array.shape}")
    if num_examples is not None and array.shape[0] != num_examples:
        raise ValueError(
            f"groups has {array.shape[0]} values but there are {num_examples} labels: expected "
            "one group value per example"
        )
    if array.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), []
    as_text = np.asarray([str(v) for v in array], dtype=str)
    names, codes = np.unique(as_text, return_inverse=True)
    return codes.astype(np.int64).reshape(-1), [str(v) for v in names]


def partition_indices(
    labels: Sequence[Any] | np.ndarray,
    num_partitions: int,
    scheme: Literal[
        "iid", "dirichlet", "natural", "pathological", "linear", "square", "exponential"
    ]
    | str = "iid",
    alpha: float = 0.5,
    seed: Seed = 0,
    min_partition_size: int = 1,
    *,
    groups: Sequence[Any] | np.ndarray | None = None,
    classes_per_client: int = 2,
) -> list[np.ndarray]:
    """Split example indices ``0 .. len(labels) - 1`` among clients.

    Parameters
    ----------
    labels : array-like
        One label per example (see :func:`class_ids`); the Dirichlet and
        pathological schemes look at the values.
    num_partitions : int
        Number of clients.
    scheme : str, default "iid"
        One of :data:`PARTITION_SCHEMES`, each made with a flwr-datasets
        partitioner:

        * ``"iid"``: a seeded shuffle cut into equal shards (sizes differ by
          at most one), ``IidPartitioner``'s shards computed directly.
        * ``"dirichlet"``: for each class, the share of each client is drawn
          from Dirichlet(``alpha``), ``DirichletPartitioner`` (re-drawn, up
          to 10 times, until every client has ``min_partition_size``
          examples).
        * ``"natural"``: one client per distinct value of ``groups``,
          ``NaturalIdPartitioner``; client ``i`` holds the ``i``-th value in
          string order (see :func:`natural_groups`). The number of values
          must equal ``num_partitions``.
        * ``"pathological"``: every client holds exactly
          ``classes_per_client`` classes, ``PathologicalPartitioner``; each
          class's examples are shared equally by the clients that hold it.
        * ``"linear"``, ``"square"``, ``"exponential"``: client ``i`` (from
          0) gets a share of a seeded shuffle proportional to ``i + 1``,
          ``(i + 1) ** 2`` or ``exp(i + 1)``: sizes grow with the index,
          labels stay mixed (``LinearPartitioner``, ``SquarePartitioner``,
          ``ExponentialPartitioner``).
    alpha : float, default 0.5
        Dirichlet concentration; smaller is more skewed. Only for
        ``"dirichlet"``.
    seed : int or numpy.random.Generator, default 0
        Seed of the shuffle and of the random draws.
    min_partition_size : int, default 1
        Fewest examples a client may get.
    groups : array-like, optional
        One hashable value per example (a user id column); required by
        ``"natural"`` and ignored by the other schemes.
    classes_per_client : int, default 2
        Classes per client for ``"pathological"``, in ``[1, number of
        classes]``; ignored by the other schemes.

    Returns
    -------
    list of numpy.ndarray
        One sorted int64 index array per client; disjoint, and together
        covering every index.

    Raises
    ------
    ValueError
        For an unknown scheme, ``alpha <= 0``, more clients than examples,
        a ``groups`` column missing, of the wrong length or with a number of
        values other than ``num_partitions``, ``classes_per_client`` out of
        range or too few clients to give every class to one, or partitions
        that cannot meet ``min_partition_size``.
    """
    ids, _ = class_ids(labels)
    n = int(ids.shape[0])
    _check_common(n, num_partitions, min_partition_size)
    key = str(scheme).strip().lower()
    if key not in PARTITION_SCHEMES:
        raise ValueError(
            f"unknown partition scheme {scheme!r}: expected one of {list(PARTITION_SCHEMES)}"
        )
    seed_int = _seed_int(seed)
    if key == "iid":
        if n // num_partitions < min_partition_size:
            raise ValueError(
                f"IID shards of {n} examples among {num_partitions} clients have "
                f"{n // num_partitions}, fewer than min_partition_size={min_partition_size}"
            )
        # IidPartitioner's contiguous shards of the permutation, without the
        # import of datasets and flwr-datasets (about 185 MiB in every client
        # process) and one Arrow shard per client; the test pins the two equal.
        order = np.random.default_rng(seed_int).permutation(n)
        return [np.sort(part) for part in np.array_split(order, num_partitions)]

    from datasets import Dataset
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        ExponentialPartitioner,
        LinearPartitioner,
        NaturalIdPartitioner,
        PathologicalPartitioner,
        SquarePartitioner,
    )

    partitioner: Any
    if key == "dirichlet":
        if not np.isfinite(alpha) or alpha <= 0:
            raise ValueError(f"Dirichlet alpha must be > 0, got {alpha}")
        partitioner = DirichletPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            alpha=float(alpha),
            min_partition_size=min_partition_size,
            self_balancing=False,
            shuffle=False,
            seed=seed_int,
        )
        partitioner.dataset = Dataset.from_dict({"label": ids, "index": np.arange(n)}).with_format(
            "arrow"
        )
    elif key == "natural":
        if groups is None:
            raise ValueError(
                "partition=natural needs a group column (one value per example, e.g. a user id)"
            )
        codes, names = natural_groups(groups, n)
        if len(names) != num_partitions:
            raise ValueError(
                f"partition=natural: the partition column has {len(names)} distinct values; "
                f"set num-clients={len(names)} (got {num_partitions})"
            )
        partitioner = NaturalIdPartitioner(partition_by="group")
        partitioner.dataset = Dataset.from_dict({"group": codes, "index": np.arange(n)})
    elif key == "pathological":
        present = np.unique(ids)
        num_classes = int(present.shape[0])
        if not 1 <= classes_per_client <= num_classes:
            raise ValueError(
                f"classes_per_client must lie in [1, {num_classes}] (the classes in the labels), "
                f"got {classes_per_client}"
            )
        # "deterministic" gives client p the classes at positions p, p+1, ...,
        # p+k-1 (mod the number of classes): every client gets exactly k
        # distinct classes, every class is used as soon as clients + k - 1
        # reach the number of classes, and each class is shared by an even
        # number of clients. "random" also gives k classes each but may leave
        # a class to no client (its examples then belong to nobody), so it
        # cannot keep the cover. The seed enters through a random order of
        # the classes and of the rows, so the split still differs by seed.
        if num_partitions + classes_per_client - 1 < num_classes:
            raise ValueError(
                f"partition=pathological: {num_partitions} clients with "
                f"classes_per_client={classes_per_client} cover at most "
                f"{num_partitions + classes_per_client - 1} of the {num_classes} classes; use at "
                f"least {num_classes - classes_per_client + 1} clients or raise "
                "classes_per_client"
            )
        rng = np.random.default_rng(seed_int)
        order = rng.permutation(n)
        rank = np.zeros(int(present.max()) + 1, dtype=np.int64)
        rank[present] = rng.permutation(num_classes)
        partitioner = PathologicalPartitioner(
            num_partitions=num_partitions,
            partition_by="label",
            num_classes_per_partition=int(classes_per_client),
            class_assignment_mode="deterministic",
            shuffle=False,
            seed=seed_int,
        )
        partitioner.dataset = Dataset.from_dict({"label": rank[ids[order]], "index": order})
    else:
        order = np.random.default_rng(seed_int).permutation(n)
        size_cls = {
            "linear": LinearPartitioner,
            "square": SquarePartitioner,
            "exponential": ExponentialPartitioner,
        }[key]
        partitioner = size_cls(num_partitions=num_partitions)
        partitioner.dataset = Dataset.from_dict({"index": order}).with_format("arrow")
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            # flwr-datasets warns on every Dirichlet re-draw (the outcome is
            # reported below) and draws a progress bar for the natural split.
            warnings.simplefilter("ignore", UserWarning)
            parts = [
                np.sort(_index_column(partitioner.load_partition(i))) for i in range(num_partitions)
            ]
    except ValueError as err:
        if key == "dirichlet":
            raise ValueError(
                f"Dirichlet partition of {n} examples among {num_partitions} clients with alpha="
                f"{alpha} could not give every client min_partition_size={min_partition_size} "
                "examples: raise alpha or lower min_partition_size"
            ) from err
        if key == "pathological":
            raise ValueError(
                f"partition=pathological: {n} examples cannot give each of {num_partitions} "
                f"clients classes_per_client={classes_per_client} classes, a class has fewer "
                f"examples than clients that hold it ({err})"
            ) from err
        if key in _SIZE_SCHEMES:
            raise ValueError(
                f"partition={key}: {n} examples among {num_partitions} clients leave the "
                f"smallest client empty, fewer than min_partition_size={min_partition_size}: "
                "use fewer clients"
            ) from err
        raise
    sizes = [int(p.shape[0]) for p in parts]
    smallest = int(np.argmin(sizes))
    if sizes[smallest] < min_partition_size:
        raise ValueError(
            f"partition={key}: client {smallest} gets {sizes[smallest]} examples, fewer than "
            f"min_partition_size={min_partition_size}"
        )
    logger.debug("partitioned %d examples into %d (%s): sizes %s", n, num_partitions, key, sizes)
    return parts


def split_calibration(
    num_examples: int, calibration_size: int, seed: Seed = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the server's calibration sample uniformly from a training split.

    Parameters
    ----------
    num_examples : int
        Size of the training split.
    calibration_size : int
        Examples for the server (e.g. 256 to 1024 for the Fisher estimate).
    seed : int or numpy.random.Generator, default 0
        Seed of the draw.

    Returns
    -------
    calibration : numpy.ndarray
        Sorted int64 indices of the calibration sample.
    rest : numpy.ndarray
        Sorted int64 indices of the other examples.

    Raises
    ------
    ValueError
        If ``calibration_size`` is negative or exceeds ``num_examples``.
    """
    if not 0 <= calibration_size <= num_examples:
        raise ValueError(
            f"calibration_size must lie in [0, {num_examples}] (the training split), got "
            f"{calibration_size}"
        )
    rng = np.random.default_rng(_seed_int(seed))
    chosen = np.sort(rng.choice(num_examples, size=calibration_size, replace=False)).astype(
        np.int64
    )
    keep = np.ones(num_examples, dtype=bool)
    keep[chosen] = False
    return chosen, np.flatnonzero(keep).astype(np.int64)


@dataclass(frozen=True, eq=False)
class ClientPartitions:
    """How a training split is divided between the server and the clients.

    Attributes
    ----------
    clients : list of numpy.ndarray
        Per client, sorted indices into the training split.
    calibration : numpy.ndarray
        Sorted indices of the server's calibration sample.
    num_examples : int
        Size of the training split.
    calibration_excluded : bool
        Whether the calibration sample was removed from the client partitions.
    names : list of str, optional
        For a natural split, each client's group value (as a string); None
        otherwise.
    validation : numpy.ndarray
        Sorted indices of the validation split (empty when there is none):
        neither in the calibration sample nor in any client partition.
    """

    clients: list[np.ndarray]
    calibration: np.ndarray
    num_examples: int
    calibration_excluded: bool = True
    names: list[str] | None = None
    validation: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def num_clients(self) -> int:
        """Number of client partitions."""
        return len(self.clients)

    def sizes(self) -> list[int]:
        """Examples per client."""
        return [int(p.shape[0]) for p in self.clients]

    def histograms(self, labels: Sequence[Any] | np.ndarray) -> np.ndarray:
        """Label counts per client, ``(num_clients, num_classes)``; see :func:`label_histograms`."""
        return label_histograms(labels, self.clients)

    def summary(self, labels: Sequence[Any] | np.ndarray) -> dict[str, Any]:
        """Sizes, label histograms and skew, as plain values for a log line.

        Parameters
        ----------
        labels : array-like
            Labels of the whole training split.

        Returns
        -------
        dict
            ``num_examples``, ``calibration_size``, ``calibration_excluded``,
            ``sizes``, ``histograms`` (lists of counts), ``mean_tv_distance``,
            ``single_class_clients`` and ``warnings`` (see
            :func:`partition_report`), and ``client_names`` when the clients
            have names.
        """
        report = self.report(labels)
        summary: dict[str, Any] = {
            "num_examples": self.num_examples,
            "calibration_size": int(self.calibration.shape[0]),
            "calibration_excluded": self.calibration_excluded,
            **partition_summary(labels, self.clients),
            "single_class_clients": list(report.single_class_clients),
            "warnings": list(report.warnings),
        }
        if self.names is not None:
            summary["client_names"] = list(self.names)
        if self.validation.shape[0]:
            summary["validation_size"] = int(self.validation.shape[0])
        return summary

    def report(
        self,
        labels: Sequence[Any] | np.ndarray,
        *,
        label_names: Sequence[str] | None = None,
        max_lines: int = 20,
    ) -> PartitionReport:
        """The per-client report of :func:`partition_report`, with the clients' names."""
        return partition_report(
            labels,
            self.clients,
            label_names=label_names,
            client_names=self.names,
            max_lines=max_lines,
        )


def make_client_partitions(
    labels: Sequence[Any] | np.ndarray,
    num_clients: int,
    *,
    scheme: Literal["iid", "dirichlet"] | str = "iid",
    alpha: float = 0.5,
    seed: Seed = 0,
    calibration_size: int = 0,
    exclude_calibration: bool = True,
    min_partition_size: int = 1,
    groups: Sequence[Any] | np.ndarray | None = None,
    classes_per_client: int = 2,
    validation_size: int = 0,
) -> ClientPartitions:
    """Draw the calibration sample and the validation split, then partition the rest among clients.

    Parameters
    ----------
    labels : array-like
        Labels of the whole training split.
    num_clients : int
        Number of client partitions.
    scheme : str, default "iid"
        One of :data:`PARTITION_SCHEMES`; see :func:`partition_indices`.
    alpha : float, default 0.5
        Dirichlet concentration.
    seed : int or numpy.random.Generator, default 0
        One seed for both steps (independent streams are derived from it).
    calibration_size : int, default 0
        Examples kept by the server for the Fisher estimate.
    exclude_calibration : bool, default True
        Keep the calibration sample out of every client partition.
    min_partition_size : int, default 1
        Fewest examples a client may get.
    groups : array-like, optional
        For ``scheme="natural"``: one group value per example of the whole
        training split; the clients are the groups left among the rows that
        are not in the calibration sample (see :func:`natural_groups`).
    classes_per_client : int, default 2
        For ``scheme="pathological"``: classes per client.
    validation_size : int, default 0
        Examples held out as a validation split, drawn from the rows outside
        the calibration sample (from a stream of its own, so the calibration
        sample and, with 0, the partitions are those drawn without it) and
        kept out of every client partition.

    Returns
    -------
    ClientPartitions
        Client indices and the calibration indices, into the training split;
        for a natural split, ``names`` holds each client's group value.

    Raises
    ------
    ValueError
        For the bad values listed in :func:`partition_indices` and
        :func:`split_calibration`, and when the calibration sample takes every
        row of a group, leaving fewer groups than clients.
    """
    ids, _ = class_ids(labels)
    n = int(ids.shape[0])
    # The first two children are those of spawn(2), so the calibration sample
    # and the partitions without a validation split are unchanged by the third.
    calib_seq, part_seq, val_seq = np.random.SeedSequence(_seed_int(seed)).spawn(3)
    calibration, rest = split_calibration(n, calibration_size, int(calib_seq.generate_state(1)[0]))
    if not 0 <= validation_size <= rest.shape[0]:
        raise ValueError(
            f"validation_size must lie in [0, {rest.shape[0]}] (the rows outside the "
            f"calibration sample), got {validation_size}"
        )
    validation = np.zeros(0, dtype=np.int64)
    pool = rest if exclude_calibration else np.arange(n, dtype=np.int64)
    if validation_size:
        rng = np.random.default_rng(int(val_seq.generate_state(1)[0]))
        validation = np.sort(rng.choice(rest, size=validation_size, replace=False))
        pool = np.setdiff1d(pool, validation, assume_unique=True)
    if num_clients > pool.shape[0]:
        held = f"{calibration_size} for calibration" + (
            f", {validation_size} for validation" if validation_size else ""
        )
        raise ValueError(
            f"cannot split {pool.shape[0]} examples (after {held}) "
            f"among {num_clients} clients: expected at most one client per example"
        )
    natural = str(scheme).strip().lower() == "natural"
    pool_groups: np.ndarray | None = None
    names: list[str] | None = None
    if natural and groups is not None:
        codes, all_names = natural_groups(groups, n)
        left = np.unique(codes[pool])
        if left.shape[0] < min(len(all_names), num_clients):
            raise ValueError(
                f"partition=natural: the calibration sample of {calibration_size} takes every "
                f"row of {len(all_names) - left.shape[0]} of the {len(all_names)} groups, "
                f"leaving {left.shape[0]} distinct groups, fewer than the {num_clients} "
                "clients: lower calibration-size, set exclude-calibration to false, or set "
                f"num-clients={left.shape[0]}"
            )
        pool_groups = np.asarray(all_names, dtype=object)[codes[pool]]
        names = [all_names[int(i)] for i in left]
    local = partition_indices(
        ids[pool],
        num_clients,
        scheme=scheme,
        alpha=alpha,
        seed=int(part_seq.generate_state(1)[0]),
        min_partition_size=min_partition_size,
        groups=pool_groups,
        classes_per_client=classes_per_client,
    )
    clients = [pool[p] for p in local]
    result = ClientPartitions(
        clients=clients,
        calibration=calibration,
        num_examples=n,
        calibration_excluded=exclude_calibration,
        names=names if natural else None,
        validation=validation.astype(np.int64),
    )
    logger.info(
        "%d clients (%s%s), calibration %d of %d: sizes %s",
        num_clients,
        scheme,
        f", alpha={alpha}" if str(scheme).lower() == "dirichlet" else "",
        calibration_size,
        n,
        result.sizes(),
    )
    return result


def label_histograms(
    labels: Sequence[Any] | np.ndarray,
    partitions: Sequence[np.ndarray],
    num_classes: int | None = None,
) -> np.ndarray:
    """Count the labels of each partition.

    Parameters
    ----------
    labels : array-like
        Labels of the whole split (see :func:`class_ids`).
    partitions : sequence of numpy.ndarray
        Index arrays into ``labels``.
    num_classes : int, optional
        Columns of the result (default: one more than the largest class id).

    Returns
    -------
    numpy.ndarray
        int64 counts, ``(len(partitions), num_classes)``.
    """
    ids, found = class_ids(labels)
    width = found if num_classes is None else num_classes
    if width < found:
        raise ValueError(f"num_classes={num_classes} is smaller than the {found} classes found")
    hist = np.zeros((len(partitions), width), dtype=np.int64)
    for row, part in enumerate(partitions):
        hist[row] = np.bincount(ids[np.asarray(part, dtype=np.int64)], minlength=width)
    return hist


def mean_tv_distance(labels: Sequence[Any] | np.ndarray, partitions: Sequence[np.ndarray]) -> float:
    """Mean total-variation distance of client label distributions from the global one.

    ``0.5 * sum_c |p_client(c) - p_global(c)|`` averaged over non-empty
    partitions: 0 for identical label mixes, near 1 when every client holds
    one class of many. The global distribution is that of the union of the
    partitions.

    Parameters
    ----------
    labels : array-like
        Labels of the whole split.
    partitions : sequence of numpy.ndarray
        Index arrays into ``labels``.

    Returns
    -------
    float
        The mean distance, in [0, 1].
    """
    hist = label_histograms(labels, partitions).astype(np.float64)
    totals = hist.sum(axis=1)
    hist = hist[totals > 0]
    totals = totals[totals > 0]
    if hist.shape[0] == 0:
        return 0.0
    global_dist = hist.sum(axis=0) / hist.sum()
    client_dist = hist / totals[:, None]
    return float(np.mean(0.5 * np.abs(client_dist - global_dist).sum(axis=1)))


def partition_summary(
    labels: Sequence[Any] | np.ndarray, partitions: Sequence[np.ndarray]
) -> dict[str, Any]:
    """Sizes, label histograms and skew of partitions, as plain values for logging.

    Parameters
    ----------
    labels : array-like
        Labels of the whole split.
    partitions : sequence of numpy.ndarray
        Index arrays into ``labels``.

    Returns
    -------
    dict
        ``sizes`` (list of int), ``histograms`` (list of lists of int) and
        ``mean_tv_distance`` (float).
    """
    hist = label_histograms(labels, partitions)
    return {
        "sizes": [int(len(p)) for p in partitions],
        "histograms": hist.tolist(),
        "mean_tv_distance": mean_tv_distance(labels, partitions),
    }


def _format_count(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,.1f}"


@dataclass(frozen=True)
class PartitionReport:
    """Per-client sizes and label mixes of a split, for the terminal and ``summary.json``.

    Made by :func:`partition_report`.

    Attributes
    ----------
    lines : list of str
        One line per client (at most ``max_lines``), then one line on the
        clients left out, if any.
    warnings : list of str
        Clients holding a single class; a strongly non-IID split.
    sizes : list of int
        Examples per client.
    histograms : list of list of int, or None
        Label counts per client; None for regression labels.
    mean_tv_distance : float or None
        See :func:`mean_tv_distance`; None for regression labels.
    single_class_clients : list of int
        Indices of the clients whose examples all have one class.
    """

    lines: list[str]
    warnings: list[str]
    sizes: list[int] = field(default_factory=list)
    histograms: list[list[int]] | None = None
    mean_tv_distance: float | None = None
    single_class_clients: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """``sizes``, ``histograms``, ``mean_tv_distance``, ``single_class_clients``, ``warnings``."""
        return {
            "sizes": list(self.sizes),
            "histograms": None if self.histograms is None else [list(h) for h in self.histograms],
            "mean_tv_distance": self.mean_tv_distance,
            "single_class_clients": list(self.single_class_clients),
            "warnings": list(self.warnings),
        }


def partition_report(
    labels: Sequence[Any] | np.ndarray,
    partitions: Sequence[np.ndarray],
    *,
    label_names: Sequence[str] | None = None,
    client_names: Sequence[str] | None = None,
    max_lines: int = 20,
) -> PartitionReport:
    """Describe each client's share of a split, and warn about strong label skew.

    Each client line gives the client (its name, else its index), its size
    and its label counts (classes it lacks left out), e.g.
    ``client 0: 1,204 examples  negative 602  positive 602``. Labels of a
    floating dtype are taken as regression targets: the lines then give sizes
    only, and there is no histogram and no class warning.

    Warnings: one when clients hold a single class (naming up to five), one
    when the mean total-variation distance between client and global label
    distributions exceeds :data:`TV_WARNING`.

    Parameters
    ----------
    labels : array-like
        Labels of the whole split (see :func:`class_ids`).
    partitions : sequence of numpy.ndarray
        Index arrays into ``labels``, one per client.
    label_names : sequence of str, optional
        Name of each class id (e.g. ``["negative", "positive"]``).
    client_names : sequence of str, optional
        Name of each client (e.g. the group values of a natural split).
    max_lines : int, default 20
        Client lines to write; the rest are summed up in one line.

    Returns
    -------
    PartitionReport
        The lines, warnings and statistics.

    Raises
    ------
    ValueError
        If ``client_names`` does not have one name per partition, or
        ``max_lines`` is negative.
    """
    if max_lines < 0:
        raise ValueError(f"max_lines must be >= 0, got {max_lines}")
    if client_names is not None and len(client_names) != len(partitions):
        raise ValueError(
            f"client_names has {len(client_names)} names for {len(partitions)} partitions"
        )
    sizes = [int(len(p)) for p in partitions]
    regression = np.issubdtype(np.asarray(labels).dtype, np.floating)

    def who(i: int) -> str:
        return str(client_names[i]) if client_names is not None else str(i)

    def class_name(c: int) -> str:
        if label_names is not None and c < len(label_names):
            return str(label_names[c])
        return f"#{c}"

    hist: np.ndarray | None = None
    tv: float | None = None
    single: list[int] = []
    report_warnings: list[str] = []
    if not regression:
        hist = label_histograms(labels, partitions)
        tv = mean_tv_distance(labels, partitions)
        nonzero = (hist > 0).sum(axis=1)
        if int((hist.sum(axis=0) > 0).sum()) > 1:
            single = [int(i) for i in np.flatnonzero(nonzero == 1)]
        if single:
            named = ", ".join(who(i) for i in single[:5])
            more = f" and {len(single) - 5} more" if len(single) > 5 else ""
            report_warnings.append(
                f"{len(single)} of {len(partitions)} clients hold a single class "
                f"(client {named}{more}): their local training sees one label only"
            )
        if tv > TV_WARNING:
            report_warnings.append(
                f"mean total-variation distance {tv:.2f} between client and global label "
                f"distributions exceeds {TV_WARNING}: the split is strongly non-IID"
            )

    lines = []
    for i in range(min(max_lines, len(partitions))):
        line = f"client {who(i)}: {sizes[i]:,} examples"
        if hist is not None:
            line += "".join(
                f"  {class_name(int(c))} {int(hist[i, c]):,}" for c in np.flatnonzero(hist[i])
            )
        lines.append(line)
    rest = sizes[max_lines:]
    if rest:
        lines.append(
            f"... and {len(rest):,} more clients: sizes {min(rest):,} to {max(rest):,} "
            f"(median {_format_count(float(np.median(rest)))})"
        )
    return PartitionReport(
        lines=lines,
        warnings=report_warnings,
        sizes=sizes,
        histograms=None if hist is None else hist.tolist(),
        mean_tv_distance=tv,
        single_class_clients=single,
    )
