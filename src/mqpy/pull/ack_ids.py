"""Ack ids: what a consumer hands back to settle a pulled message.

An ack id names one delivery under one lease: the delivery's id and the claim's
unguessable lease token. The store settles a delivery only under the lease it holds
now and only for the subscription that pulled it, so an ack id cannot be forged from
a message id, and an old one (from before the message was delivered again) settles
nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_FORM = re.compile(r"(\d{1,18})-([0-9a-f]{24})")


@dataclass(frozen=True, slots=True)
class AckId:
    delivery_id: int
    lease: str

    def __str__(self) -> str:
        return f"{self.delivery_id}-{self.lease}"

    @classmethod
    def parse(cls, text: str) -> AckId | None:
        """The ack id `text` spells, or None if no pull could have handed it out."""
        found = _FORM.fullmatch(text)
        return None if found is None else cls(int(found[1]), found[2])
