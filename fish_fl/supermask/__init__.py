"""Supermask training: learn a binary mask over frozen pre-trained weights.

From "How fine can fine-tuning be? Learning efficient language models"
(Radiya-Dixit and Wang, AISTATS 2020, arXiv 2004.14129). Importing this
package registers the ``supermask`` mask builder.

Single machine::

    wrapper = SupermaskModel(model, SupermaskConfig(initial_sparsity=0.1))
    sparse = supermask_parameters(wrapper)
    optimizer = make_supermask_optimizer(sparse, wrapper.config)
    train_steps(sparse, optimizer, loader, steps=300, device=device)
    report = evaluate_supermask(wrapper, eval_loader, "sst2", device=device, samples=5)
"""

from . import builder  # noqa: F401  (registers the "supermask" mask builder)
from .config import DEFAULT_MASKABLE, SupermaskConfig
from .federated import (
    DOWNLINKS,
    UPLINKS,
    SupermaskLayout,
    combine_sampled_masks,
    scores_fingerprint,
    values_from_masks,
)
from .layer import (
    MaskKind,
    SupermaskModel,
    initial_scores,
    maskable_parameters,
    sample_bernoulli,
    straight_through_bernoulli,
)
from .pack import (
    aggregate_sampled_masks,
    bits_per_parameter,
    mean_of_masks,
    pack_mask,
    packed_size,
    sample_mask,
    scores_from_probabilities,
    unpack_mask,
)
from .train import (
    LayerSparsity,
    SupermaskEval,
    evaluate_supermask,
    make_supermask_optimizer,
    sparsity_by_parameter,
    supermask_parameters,
)

__all__ = [
    "DEFAULT_MASKABLE",
    "DOWNLINKS",
    "UPLINKS",
    "scores_fingerprint",
    "values_from_masks",
    "SupermaskLayout",
    "combine_sampled_masks",
    "LayerSparsity",
    "MaskKind",
    "SupermaskConfig",
    "SupermaskEval",
    "SupermaskModel",
    "aggregate_sampled_masks",
    "bits_per_parameter",
    "evaluate_supermask",
    "initial_scores",
    "make_supermask_optimizer",
    "maskable_parameters",
    "mean_of_masks",
    "pack_mask",
    "packed_size",
    "sample_bernoulli",
    "sample_mask",
    "scores_from_probabilities",
    "sparsity_by_parameter",
    "straight_through_bernoulli",
    "supermask_parameters",
    "unpack_mask",
]
