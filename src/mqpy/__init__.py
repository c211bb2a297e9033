"""mq-py: a durable HTTP message broker that speaks the MQ Go protocol."""

__version__ = "0.1.0"
