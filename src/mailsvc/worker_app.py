"""The worker's composition root, as app.py is the API's: it imports every tasks module."""

from __future__ import annotations

import mailsvc.messages.tasks
import mailsvc.schedules.tasks  # noqa: F401
from mailsvc.worker import bridge  # noqa: F401  (connects the process init/shutdown signals)
from mailsvc.worker.app import celery_app

__all__ = ["celery_app"]
