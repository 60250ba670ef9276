"""The queues (one per lane, plus retry and maintenance) and which worker role serves which."""

from __future__ import annotations

from typing import Final

TRANSACTIONAL: Final = "transactional"
BULK: Final = "bulk"
SCHEDULED: Final = "scheduled"
RETRY: Final = "retry"
MAINTENANCE: Final = "maintenance"

ALL_QUEUES: Final = (TRANSACTIONAL, BULK, SCHEDULED, RETRY, MAINTENANCE)

# Lanes are the queues a message's first attempt is sent on; retries from any lane use RETRY.
LANES: Final = (TRANSACTIONAL, BULK, SCHEDULED)

ROLES: Final[dict[str, tuple[str, ...]]] = {
    "realtime": (TRANSACTIONAL,),
    "bulk": (BULK,),
    "scheduled": (SCHEDULED, MAINTENANCE),
    "retry": (RETRY,),
    "all": ALL_QUEUES,
}


def lane_for(priority: str, *, batch: bool = False) -> str:
    """High priority single sends are transactional; normal, low and batch sends are bulk."""
    return TRANSACTIONAL if priority == "high" and not batch else BULK


def published_at_once(lane: str) -> bool:
    """Bulk waits parked for the bulk feeder, which takes tenants in turn; the rest go now."""
    return lane != BULK


def queue_for(lane: str, status: str) -> str:
    """The queue a send job for a message goes on."""
    return RETRY if status == "retrying" else lane
