"""LoRA through ``peft`` as a federated method (``mask-method=lora``).

Importing this package registers the ``lora`` mask builder; the wire is
:class:`fish_fl.lora.method.LoraMethod`, the keys
:class:`fish_fl.lora.keys.LoraKeys`.
"""

from . import builder  # noqa: F401  (registers the "lora" mask builder)
