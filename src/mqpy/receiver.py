"""`mqpy.receiver`, the public import path of the receiver helper, which lives in
`mqpy.client.receiver` beside the rest of the client SDK (docs/client.md)."""

from mqpy.client.receiver import (
    ATTEMPT_HEADER,
    CHALLENGE_HEADER,
    TOPIC_HEADER,
    Delivery,
    Handler,
    InvalidDelivery,
    InvalidSignature,
    ReceiverServer,
    Secret,
    serve_receiver,
)

__all__ = [
    "ATTEMPT_HEADER",
    "CHALLENGE_HEADER",
    "TOPIC_HEADER",
    "Delivery",
    "Handler",
    "InvalidDelivery",
    "InvalidSignature",
    "ReceiverServer",
    "Secret",
    "serve_receiver",
]
