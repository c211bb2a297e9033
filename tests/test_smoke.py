"""The seed README's walk-through, end to end over HTTP."""

from __future__ import annotations

from tests.support.client import SeedClient
from tests.support.receiver import Receiver


async def test_message_reaches_receiver(client: SeedClient, receiver: Receiver) -> None:
    await client.connect_receiver(receiver.url)
    sender = await client.connect_sender()
    answer = await client.send(sender, "Here is the message body.")
    assert answer["status"] == "Message enqueued."
    (delivery,) = await receiver.wait_for(1)
    assert delivery.body == {"body": "Here is the message body."}
    assert delivery.message_id == answer["message_id"]
