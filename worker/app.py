"""The Celery app: ``celery -A worker.app worker|beat|flower``.

JSON only, late acks with redelivery when a worker dies, one prefetched message per process (skill runs are
long), task events on for Flower, two queues: ``skills`` for runs and ``maintenance`` for evolution and the
beat task. The scheduler's tasks are included by module name and the beat entry names its task as data:
worker/ never imports scheduler/.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu import Exchange, Queue  # type: ignore[attr-defined]

from worker.settings import Settings, get_settings

SKILLS_QUEUE = "skills"
MAINTENANCE_QUEUE = "maintenance"
# Redis redelivers an unacked message after the visibility timeout (WRE_VISIBILITY_TIMEOUT_SECONDS, default
# 3600). It must exceed any countdown wre uses and any attempt's time limit, or a message would be delivered
# twice; see Settings.visibility_timeout_seconds.
# kombu looks for expired unacked messages every interval x throttle seconds (10 x 10 by default: a dead
# worker's runs would wait up to 100 s beyond the visibility timeout). wre sweeps at most every 10 s, and
# four times per visibility timeout when that is shorter; one sweep is one ZRANGE on the unacked index.
MAX_RESTORE_INTERVAL_SECONDS = 10.0
RESULT_EXPIRES_SECONDS = 24 * 3600
# A result that cannot be stored while Redis is away is retried with backoff (10 ms doubling to 10 s, jittered:
# about a minute in all) instead of turning a run that succeeded into a FAILURE result (docs/RELIABILITY.md).
RESULT_STORE_RETRIES = 20
TASK_MODULES = ["worker.tasks", "scheduler.tasks"]
EVALUATE_TASK = "wre.evaluate_ab_tests"


def celery_config(settings: Settings) -> dict[str, Any]:
    """The app's configuration for ``settings`` (a pure function, so tests can read it)."""
    visibility = settings.visibility_timeout_seconds
    transport_options: dict[str, Any] = {
        "visibility_timeout": visibility,
        "unacked_restore_interval": max(1.0, min(MAX_RESTORE_INTERVAL_SECONDS, visibility / 4)),
        "unacked_restore_throttle": 1,
    }
    if settings.broker_url.startswith("memory://"):
        # kombu's in-memory transport polls once a second by default; the embedded demo needs it brisk.
        transport_options["polling_interval"] = 0.01
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.effective_result_backend,
        "result_expires": RESULT_EXPIRES_SECONDS,
        "result_extended": True,
        "result_backend_always_retry": True,
        "result_backend_max_retries": RESULT_STORE_RETRIES,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": transport_options,
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "broker_connection_retry_on_startup": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "task_default_queue": SKILLS_QUEUE,
        # Each queue on its own exchange and routing key: a message published for one can never land in both.
        "task_queues": [
            Queue(name, Exchange(name), routing_key=name) for name in (SKILLS_QUEUE, MAINTENANCE_QUEUE)
        ],
        "task_routes": {
            "wre.execute_skill": {"queue": SKILLS_QUEUE},
            "wre.evolve_skill": {"queue": MAINTENANCE_QUEUE},
            EVALUATE_TASK: {"queue": MAINTENANCE_QUEUE},
        },
        "beat_schedule": {
            "evaluate-ab-tests": {
                "task": EVALUATE_TASK,
                "schedule": settings.ab_eval_seconds,
                # A round that waited longer than one period is stale: the next one supersedes it.
                "options": {"expires": settings.ab_eval_seconds, "queue": MAINTENANCE_QUEUE},
            }
        },
        "timezone": "UTC",
    }


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    celery = Celery("wre", include=TASK_MODULES)
    celery.conf.update(celery_config(settings))
    # The store a producer checks a run against before sending it (worker.client.enqueue_skill).
    celery.conf.wre_database_url = settings.database_url
    return celery


app = create_app()
# The process's app is wre's, in every thread: signatures that Celery builds without an explicit app (a
# retry's, for one) would otherwise fall back to a default app with a default broker when the worker runs
# embedded in another program's thread.
app.set_default()
