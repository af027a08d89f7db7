"""Data for fish-fl: CIFAR-10, GLUE, client partitions and the batch contract.

* :mod:`fish_fl.data.vision` -- CIFAR-10 from torchvision, a ``.npz`` file or
  an image folder; tensor augmentation and normalisation per batch.
* :mod:`fish_fl.data.glue` -- the GLUE tasks of the FISH Mask paper from the
  hub, a local TSV folder or the embedded SST-2 sample; tokenisation and
  dynamic padding.
* :mod:`fish_fl.data.partition` -- client partitions (flwr-datasets: IID,
  Dirichlet, natural groups, pathological, size-skewed), the server's
  calibration sample, label statistics and the per-client report.
* :mod:`fish_fl.data.batch` -- ``(inputs, targets)`` batches and helpers.

Heavy libraries (``datasets``, ``transformers``, ``flwr_datasets``) are only
imported by the functions that use them.
"""

from fish_fl.data.batch import Batch, Inputs, batch_size, forward_logits, move_batch
from fish_fl.data.glue import (
    GLUE_TASKS,
    GlueSplits,
    GlueTask,
    TextCollator,
    TextSplit,
    TokenizedDataset,
    get_task,
    load_glue,
    make_text_loader,
    read_glue_tsv,
    tokenize_split,
)
from fish_fl.data.hub import DataUnavailableError, hub_offline
from fish_fl.data.partition import (
    PARTITION_SCHEMES,
    TV_WARNING,
    ClientPartitions,
    PartitionReport,
    label_histograms,
    make_client_partitions,
    mean_tv_distance,
    natural_groups,
    partition_indices,
    partition_report,
    partition_summary,
    split_calibration,
)
from fish_fl.data.vision import (
    CIFAR10_CLASSES,
    ImageCollator,
    ImageSplit,
    ImageSplits,
    ImageTensorDataset,
    augment_images,
    load_cifar10,
    load_image_folder,
    make_image_loader,
    normalize_images,
)

__all__ = [
    "CIFAR10_CLASSES",
    "GLUE_TASKS",
    "PARTITION_SCHEMES",
    "TV_WARNING",
    "Batch",
    "ClientPartitions",
    "DataUnavailableError",
    "GlueSplits",
    "GlueTask",
    "ImageCollator",
    "ImageSplit",
    "ImageSplits",
    "ImageTensorDataset",
    "Inputs",
    "PartitionReport",
    "TextCollator",
    "TextSplit",
    "TokenizedDataset",
    "augment_images",
    "batch_size",
    "forward_logits",
    "get_task",
    "hub_offline",
    "label_histograms",
    "load_cifar10",
    "load_glue",
    "load_image_folder",
    "make_client_partitions",
    "make_image_loader",
    "make_text_loader",
    "mean_tv_distance",
    "move_batch",
    "natural_groups",
    "normalize_images",
    "partition_indices",
    "partition_report",
    "partition_summary",
    "read_glue_tsv",
    "split_calibration",
    "tokenize_split",
]
