"""The ``PeftType`` member of LoRETTA.

``peft.utils.register_peft_method`` only accepts names that are members of ``peft.utils.PeftType``,
an ``Enum`` closed to packages outside PEFT. We add the member the way ``Enum`` itself stores
members (the name and value maps, and the class attribute), so that ``PeftType("LORETTA")``,
``PeftType.LORETTA`` and the ``"peft_type": "LORETTA"`` of a saved ``adapter_config.json`` all
resolve to it. Adding is idempotent.
"""

from __future__ import annotations

from peft.utils import PeftType

NAME = "LORETTA"


def ensure_peft_type(name: str) -> PeftType:
    """The ``PeftType`` member ``name``, created if PEFT does not have it."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    type.__setattr__(PeftType, name, member)  # Enum's own __setattr__ refuses to add members
    return member


LORETTA_PEFT_TYPE = ensure_peft_type(NAME)
