"""Pull: consumers that ask for their messages (long-poll and Server-Sent Events)
instead of having the broker POST them, under the same leases, retries and dead
letters as push."""

from mqpy.pull.ack_ids import AckId
from mqpy.pull.service import Pulled, PullService, Settled

__all__ = ["AckId", "PullService", "Pulled", "Settled"]
