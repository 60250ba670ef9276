"""The queues (one per lane, plus retry and maintenance) and which worker role serves which."""

from __future__ import annotations

from typing import Final

from mailsvc.sending.lanes import RETRY_QUEUE, Lane

# A lane's queue bears its name: the sending domain decides the lane, and so the queue.
TRANSACTIONAL: Final = Lane.transactional.value
BULK: Final = Lane.bulk.value
SCHEDULED: Final = Lane.scheduled.value
RETRY: Final = RETRY_QUEUE
MAINTENANCE: Final = "maintenance"

ALL_QUEUES: Final = (TRANSACTIONAL, BULK, SCHEDULED, RETRY, MAINTENANCE)

ROLES: Final[dict[str, tuple[str, ...]]] = {
    "realtime": (TRANSACTIONAL,),
    "bulk": (BULK,),
    "scheduled": (SCHEDULED, MAINTENANCE),
    "retry": (RETRY,),
    "all": ALL_QUEUES,
}
