"""What operators see of a running broker: Prometheus metrics, each receiver's state,
throughput, and the status feed that the dashboard and `mqpy status` read."""

from mqpy.observability.feed import NodeStatus, ReceiverStatus, StatusFeed, TopicStatus
from mqpy.observability.observer import Observer
from mqpy.observability.rates import ThroughputPoint
from mqpy.observability.receivers import Failure, ReceiverState

__all__ = [
    "Failure",
    "NodeStatus",
    "Observer",
    "ReceiverState",
    "ReceiverStatus",
    "StatusFeed",
    "ThroughputPoint",
    "TopicStatus",
]
