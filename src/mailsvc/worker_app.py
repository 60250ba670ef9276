"""The worker's composition root, as app.py is the API's: it imports every tasks module, and
configures the Celery app and the runtimes from the settings its entry point read."""

from __future__ import annotations

from celery import Celery

import mailsvc.schedules.tasks
import mailsvc.sending.tasks  # noqa: F401
from mailsvc.config import Settings
from mailsvc.templates.links import use_link_settings
from mailsvc.worker import bridge, logs  # both connect Celery signals
from mailsvc.worker.app import celery_app, configure


def worker_app(config: Settings) -> Celery:
    """The Celery app for a worker or beat started with `config`."""
    configure(celery_app, config)
    bridge.use(config)
    use_link_settings(config)  # the render stage signs links
    logs.install()
    return celery_app
