"""mq-py: a durable HTTP message broker that speaks the MQ Go protocol."""

from mqpy.signing import InvalidSignature, verify

__all__ = ["InvalidSignature", "__version__", "verify"]
__version__ = "0.1.0"
