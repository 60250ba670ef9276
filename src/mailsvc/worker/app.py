"""The Celery application. It imports no tasks module: worker_app.py does, for the worker only.

It is configured by the entry point that uses it (the worker and beat at their start, the API's
app factory, which publishes), from the settings that entry point read: never at import.
"""

from __future__ import annotations

from celery import Celery
from kombu.entity import Exchange, Queue

from mailsvc.config import Settings
from mailsvc.worker import queues
from mailsvc.worker.beat import beat_schedule

# Every queue is bound to the anonymous exchange, so a publish goes straight to the queue's key.
# Routing through a named exchange would read kombu's binding table from Redis, and a Redis
# restarted without its data has none: publishes would be dropped until something re-declared.
_DIRECT = Exchange("")


def configure(app: Celery, config: Settings) -> None:
    app.conf.update(
        broker_url=config.effective_broker_url,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": config.broker_visibility_timeout_seconds,
            "socket_connect_timeout": config.publish_timeout_seconds,
            "socket_timeout": max(config.publish_timeout_seconds, 5.0),
            "socket_keepalive": True,
            "health_check_interval": 10,
        },
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        task_soft_time_limit=config.task_soft_time_limit_seconds,
        task_time_limit=config.task_time_limit_seconds,
        task_queues=[Queue(name, _DIRECT, routing_key=name) for name in queues.ALL_QUEUES],
        task_default_queue=queues.MAINTENANCE,
        task_create_missing_queues=False,
        # Off: each event is a Redis round trip per task. Flower turns them on when it connects.
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_hijack_root_logger=False,
        beat_schedule=beat_schedule(config),
        timezone="UTC",
        enable_utc=True,
    )


def configured(app: Celery) -> Celery:
    """`app`, once an entry point configured it: unconfigured, Celery would reach for a broker
    of its own default (AMQP on localhost), and jobs would go where no worker listens."""
    if not app.conf.broker_url:
        raise RuntimeError("the Celery app is not configured: call worker.app.configure first")
    return app


# Tasks are declared with `shared_task` in their domains and bound to this app when a worker
# imports them; RuntimeTask gives each its thread's runtime (worker/bridge.py).
celery_app = Celery("mailsvc", task_cls="mailsvc.worker.bridge:RuntimeTask")
