"""The one retry layer around a run's steps (as Dramatiq keeps its retries in one middleware).

The run steps (worker/runner.py) never retry anything themselves. They either return the run's result, ask
for the next ReAct attempt (:class:`NextAttempt`), or raise. This layer turns that into deliveries:

- **ReAct retry**: the next attempt is published with the producer's kwargs unchanged and the attempt number
  in a header (worker/messages.py); the worker rebuilds its state from the store, never from the message.
- **Infrastructure errors** (database, broker, an LLM server's 429/5xx): the same attempt again, after a
  jittered exponential backoff (or the server's Retry-After), up to :data:`MAX_INFRA_RETRIES` times. The count
  travels in a header; a forged count can only shorten the run's own outage budget.
- **A retry that cannot be published** (the broker refused or is away): the delivery is rejected *with*
  requeue, so the broker hands it out again (Celery's own ``Task.retry`` rejects without requeue and the run
  is lost). The redelivered attempt is answered from the store (runs are idempotent), and its retry is
  published again.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Task
from celery.exceptions import Reject, Retry

from worker.agents import AgentInfrastructureError
from worker.messages import MAX_INFRA_RETRIES, Bookkeeping

log = logging.getLogger(__name__)

INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,
    redis.exceptions.ConnectionError,
    kombu.exceptions.OperationalError,
    AgentInfrastructureError,
)
# What a publish raises when the broker is away or refuses the message (not a bug of ours: those propagate).
PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.KombuError,
    amqp.exceptions.AMQPError,
    redis.exceptions.RedisError,
    OSError,
)
# A broker that takes deliveries but refuses publishes would otherwise hand the requeued delivery straight
# back, and the worker would spin on it: a short pause before each requeue keeps that loop slow.
REQUEUE_PAUSE_SECONDS = 1.0
INFRA_BACKOFF_BASE_SECONDS = 0.5
INFRA_BACKOFF_MAX_SECONDS = 30.0
# Retries of one delivery spread over [half, full] of the exponential step, so that the runs an outage
# interrupted together do not all come back in the same instant ("equal jitter").
INFRA_BACKOFF_JITTER = 0.5

__all__ = [
    "INFRASTRUCTURE_ERRORS",
    "MAX_INFRA_RETRIES",
    "NextAttempt",
    "around",
    "infrastructure_backoff",
    "publish_retry",
]


@dataclass(frozen=True)
class NextAttempt:
    """What the run steps return to ask for a ReAct retry: run ``attempt`` after ``countdown`` seconds."""

    attempt: int
    countdown: float


def infrastructure_backoff(retries: int, rng: random.Random | None = None) -> float:
    """The wait before infrastructure retry number ``retries + 1``: 0.5 s doubling to 30 s, jittered.

    :param retries: the retries already spent (0 for the first).
    :param rng: the source of jitter (the module's by default).
    """
    step = min(INFRA_BACKOFF_MAX_SECONDS, INFRA_BACKOFF_BASE_SECONDS * 2 ** min(retries, 32))
    return float(step * (1.0 - INFRA_BACKOFF_JITTER * (rng or random).random()))


def publish_retry(task: Task, bookkeeping: Bookkeeping, countdown: float, exc: BaseException | None) -> Retry:
    """Publish the next delivery of the task's run; returns the ``Retry`` to raise (the worker then acks).

    :raises Reject: with ``requeue=True`` when the retry cannot be published: the broker redelivers this one.
    """
    request = task.request
    signature = task.signature_from_request(
        request,
        None,
        request.kwargs,
        countdown=countdown,
        retries=request.retries + 1,
        headers=bookkeeping.headers(),
    )
    try:
        signature.apply_async()
    except PUBLISH_ERRORS as error:
        log.warning("run %s: the retry could not be published (%s); the delivery is requeued", request.id, error)
        time.sleep(REQUEUE_PAUSE_SECONDS)
        raise Reject(error, requeue=True) from error
    return Retry(exc=exc, when=countdown, sig=signature)


def around(task: Task, bookkeeping: Bookkeeping, steps: Callable[[], dict[str, Any] | NextAttempt]) -> dict[str, Any]:
    """Run ``steps`` for this delivery and turn what comes out into the run's result or its next delivery."""
    try:
        outcome = steps()
    except INFRASTRUCTURE_ERRORS as error:
        if bookkeeping.infra_retries >= MAX_INFRA_RETRIES:
            raise
        log.warning("run %s: infrastructure error, retrying: %s", task.request.id, error)
        # An agent may know better when to come back (an LLM server's Retry-After).
        retry_after = getattr(error, "retry_after", None)
        countdown = (
            float(retry_after)
            if isinstance(retry_after, int | float)
            else infrastructure_backoff(bookkeeping.infra_retries)
        )
        same_attempt = Bookkeeping(attempt=bookkeeping.attempt, infra_retries=bookkeeping.infra_retries + 1)
        raise publish_retry(task, same_attempt, countdown, error) from error
    if isinstance(outcome, NextAttempt):
        # A new attempt starts with the whole outage budget again.
        raise publish_retry(task, Bookkeeping(attempt=outcome.attempt), outcome.countdown, None)
    return outcome
