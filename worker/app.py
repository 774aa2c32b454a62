"""The Celery app: ``celery -A worker.app worker|beat|flower``.

JSON only, late acks with redelivery when a worker dies, one prefetched message per process (skill runs are
long), task events only when asked for (``WRE_TASK_EVENTS``; Flower turns them on itself), three queues named
by settings (``skills`` for runs, ``maintenance`` for evolution and sweeps, ``evaluation`` for beat's verdicts,
all behind ``WRE_QUEUE_PREFIX``). Every message is checked before Celery unpacks it (worker/messages.py). The
scheduler's tasks are included by module name and the beat entry names its task as data: worker/ never
imports scheduler/.

Two things only the app needs live here too: the check that a worker's or beat's store is ready when it
starts, and kombu's Redis transport with the worker's exit on a broker restart worked around.
"""

from __future__ import annotations

import sys
from typing import Any

import kombu
import redis.exceptions
from celery import Celery
from celery.signals import beat_init, worker_init
from kombu import Exchange, Queue  # type: ignore[attr-defined]
from kombu import transport as kombu_transport
from kombu.transport import TRANSPORT_ALIASES
from kombu.transport import redis as kombu_redis

from worker.messages import (
    DEAD_LETTER_QUEUE_KEY,
    ENVELOPE_ALLOWANCE_BYTES,
    MAX_BODY_BYTES_KEY,
    DeadLetterQueue,
)
from worker.retries import INFRASTRUCTURE_ERRORS as INFRASTRUCTURE_ERRORS  # for scheduler/ (its floor's door)
from worker.retries import RESULT_BACKEND_RETRY_OPTIONS
from worker.settings import Settings, SettingsError, get_settings

# Redis redelivers an unacked message after the visibility timeout (WRE_VISIBILITY_TIMEOUT_SECONDS, default
# 3600). It must exceed any countdown wre uses and any attempt's time limit, or a message would be delivered
# twice; see Settings.visibility_timeout_seconds.
# kombu looks for expired unacked messages every interval x throttle seconds (10 x 10 by default: a dead
# worker's runs would wait up to 100 s beyond the visibility timeout). wre sweeps at most every 10 s, and
# four times per visibility timeout when that is shorter; one sweep is one ZRANGE on the unacked index.
MAX_RESTORE_INTERVAL_SECONDS = 10.0
RESULT_EXPIRES_SECONDS = 24 * 3600
# Period of the beat task that enqueues the evolutions failed runs stored (the outbox): the longest an
# evolution waits when its run could not enqueue it.
OUTBOX_SWEEP_SECONDS = 10.0
TASK_MODULES = ["worker.tasks", "worker.sweep", "scheduler.tasks"]
EXECUTE_TASK = "wre.execute_skill"
EVOLVE_TASK = "wre.evolve_skill"
EVALUATE_TASK = "wre.evaluate_ab_tests"
SWEEP_TASK = "wre.resend_overdue_runs"
OUTBOX_TASK = "wre.sweep_evolution_outbox"
# Every task checks its messages before Celery's request code unpacks them (worker/messages.py).
TASK_CLASS = "worker.messages:CheckedTask"
DATABASE_URL_KEY = "wre_database_url"
# A worker or beat whose store is missing or not migrated exits with this status (see check_store_at_start).
EXIT_STORE_NOT_READY = 3


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    """kombu's Redis channel, raising a connection error once its connection is collected.

    When the broker connection drops, Celery's consumer first *collects* the connection (kombu closes its
    channels, then detaches the transport: ``transport.client = None``) and then closes it again. When the first
    channel close was cut short by the connection error (a worker with gossip on is reading from Redis's
    pub/sub at that instant), the second one goes on to put the unacked messages back; that needs a new Redis
    client, whose parameters come from ``transport.client``, now None: an ``AttributeError`` that Celery does
    not treat as a connection error, and the worker exits ("Unrecoverable error"). A connection error instead is
    ignored while kombu closes, the consumer reconnects, and the unacked messages stay in Redis's ``unacked``
    set, from which the next restore sweep returns them after the visibility timeout (docs/RELIABILITY.md).
    """

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise redis.exceptions.ConnectionError("the broker connection is closed (kombu collected it)")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


def use_worker_transport(**_: Any) -> None:
    """Celery's ``worker_init`` receiver: the worker's broker connections use the transport above, under the
    schemes' own names (URLs stay redis://, so Flower and Celery's banner read them as Redis). Only workers:
    producers, beat and Flower keep kombu's own. The override reaches into kombu (``Channel._connparams`` and its
    transport cache, pinned in pyproject.toml): a kombu without the method stops the worker here, in one line,
    rather than at the first restart.
    """
    if not callable(getattr(kombu_redis.Channel, "_connparams", None)):
        raise SystemExit(
            f"wre: cannot start: kombu {kombu.__version__} has no Redis Channel._connparams, which wre's Redis "
            "transport overrides; install the kombu version pyproject.toml pins"
        )
    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = "worker.app:Transport"
        # The worker resolved its broker's transport before this signal (Celery reads it to choose its event
        # loop) and kombu caches what it resolved: forget it, or every connection keeps kombu's own.
        kombu_transport._transport_cache.pop(scheme, None)


def is_amqp(broker_url: str) -> bool:
    return broker_url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp")


def task_queues(settings: Settings) -> list[Queue]:
    """The three queues: runs, maintenance (evolution, sweeps) and evaluation (beat's verdicts). On RabbitMQ a rejected run goes to the dead-letter queue (and quorum queues are declared
    as such); Redis has neither, so its queues take no arguments."""
    amqp = is_amqp(settings.broker_url)
    kind = {"x-queue-type": "quorum"} if amqp and settings.queue_type == "quorum" else {}
    # Only runs are dead-lettered: the other queues carry beat's rounds, which expire by design (RabbitMQ
    # dead-letters an expired message too), and wre's own evolution tasks.
    dead_letter = (
        {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": settings.dead_letter_queue_name} if amqp else {}
    )
    # Each queue on its own exchange and routing key: a message published for one can never land in both.
    return [
        Queue(name, Exchange(name), routing_key=name, queue_arguments=arguments or None)
        for name, arguments in (
            (settings.skills_queue_name, {**dead_letter, **kind}),
            (settings.maintenance_queue_name, kind),
            (settings.evaluation_queue_name, kind),
        )
    ]


def celery_config(settings: Settings) -> dict[str, Any]:
    """The app's configuration for ``settings`` (a pure function, so tests can read it)."""
    visibility = settings.visibility_timeout_seconds
    skills, maintenance = settings.skills_queue_name, settings.maintenance_queue_name
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
        # Off: an extended result keeps the run's kwargs (its whole input context) in the backend for a day.
        "result_extended": False,
        **RESULT_BACKEND_RETRY_OPTIONS,
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
        # Monitoring only (Flower, `celery events`): a publish per task state and a STARTED write per task.
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "task_track_started": settings.task_events,
        "task_default_queue": skills,
        "task_queues": task_queues(settings),
        "task_routes": {
            EXECUTE_TASK: {"queue": skills},
            EVALUATE_TASK: {"queue": settings.evaluation_queue_name},
            **{task: {"queue": maintenance} for task in (EVOLVE_TASK, SWEEP_TASK, OUTBOX_TASK)},
        },
        "beat_schedule": beat_schedule(settings),
        "timezone": "UTC",
        # The producer records each run there before sending it (worker/client.py). Celery hides settings
        # whose name says DATABASE from `celery inspect conf` and reports.
        DATABASE_URL_KEY: settings.store_url,
        MAX_BODY_BYTES_KEY: settings.max_context_bytes + ENVELOPE_ALLOWANCE_BYTES,
        DEAD_LETTER_QUEUE_KEY: settings.dead_letter_queue_name if is_amqp(settings.broker_url) else None,
    }


def beat_schedule(settings: Settings) -> dict[str, Any]:
    """The beat's entries; the evolution outbox holds triggers stored by failed runs (docs/RELIABILITY.md)."""
    entries = [
        ("evaluate-ab-tests", EVALUATE_TASK, settings.ab_eval_seconds),
        ("sweep-evolution-outbox", OUTBOX_TASK, OUTBOX_SWEEP_SECONDS),
    ]
    if settings.run_sweep_seconds > 0:
        entries.append(("resend-overdue-runs", SWEEP_TASK, settings.run_sweep_seconds))
    # A round that waited longer than one period is stale: the next one supersedes it.
    queue = {EVALUATE_TASK: settings.evaluation_queue_name}
    return {
        name: {
            "task": task,
            "schedule": every,
            "options": {"expires": every, "queue": queue.get(task, settings.maintenance_queue_name)},
        }
        for name, task, every in entries
    }


def check_store_at_start(**_: Any) -> None:
    """Celery's ``worker_init`` / ``beat_init`` receiver: exit with one line if the store cannot serve.

    A wrong database name or a missing migration is not an outage: waiting does not fix it, and a worker that
    retried its runs forever against it would look busy while doing nothing. A server that does not answer is
    an outage and is ridden out (worker/retries.py).
    """
    # Imported here: Alembic takes most of a second to import, and every producer imports the app.
    from db.migrate import StoreNotReady, check_ready

    try:
        check_ready(get_settings().database_url)
    except StoreNotReady as error:
        print(f"wre: cannot start: {error}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_STORE_NOT_READY) from None


def create_app(settings: Settings | None = None) -> Celery:
    celery = Celery("wre", include=TASK_MODULES, task_cls=TASK_CLASS)
    celery.conf.update(celery_config(settings or get_settings()))
    celery.steps["consumer"].add(DeadLetterQueue)
    return celery


try:
    _settings = get_settings()
except SettingsError as error:
    # The worker, beat, Flower and every producer (worker/client.py) import this module first: a bad setting
    # stops them here, in one line and with a non-zero exit, not as a traceback from Celery's app loader.
    raise SystemExit(f"wre: cannot start: {error}") from None
app = create_app(_settings)
# This process's queue names (the settings it was started with); another app's are in its conf.task_routes.
SKILLS_QUEUE = _settings.skills_queue_name
MAINTENANCE_QUEUE = _settings.maintenance_queue_name
EVALUATION_QUEUE = _settings.evaluation_queue_name
# The process's app is wre's, in every thread: signatures that Celery builds without an explicit app (a
# retry's, for one) would otherwise fall back to a default app with a default broker when the worker runs
# embedded in another program's thread.
app.set_default()
# A worker or beat whose database is missing or not migrated exits with one line.
worker_init.connect(check_store_at_start, weak=False)
worker_init.connect(use_worker_transport, weak=False)
beat_init.connect(check_store_at_start, weak=False)
