"""IA3 through ``peft`` as a federated method (``mask-method=ia3``).

Importing this package registers the ``ia3`` mask builder; the wire is
:class:`fish_fl.ia3.method.IA3Method`, the keys :class:`fish_fl.ia3.keys.IA3Keys`.
"""

from . import builder  # noqa: F401  (registers the "ia3" mask builder)
