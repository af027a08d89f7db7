"""fish-fl: federated training with fixed sparse FISH masks.

The core package is framework-free: it never imports Flower, so a FISH mask
can be computed and trained with in a notebook.
"""

__version__ = "0.1.0"
