"""Every retry rule of wre, in one place (as Dramatiq keeps its retries in one middleware).

The run steps (worker/runner.py) never retry anything themselves. They either return the run's result, ask
for the next ReAct attempt (:class:`NextAttempt`), or raise. :func:`around` turns that into deliveries:

- **ReAct retry**: the next attempt is published with the producer's kwargs unchanged and the attempt number
  in a header (:class:`Bookkeeping`); the worker rebuilds its state from the store, never from the message.
- **Infrastructure errors** (database, broker, an LLM server's 429/5xx): the same attempt again, after a
  jittered exponential backoff (or the server's Retry-After), up to :data:`MAX_INFRA_RETRIES` times. They
  spend no ReAct iteration. The count travels in a header; a forged count can only shorten the run's own
  outage budget.
- **A retry that cannot be published** (the broker refused or is away): the delivery is rejected *with*
  requeue, so the broker hands it out again (Celery's own ``Task.retry`` rejects without requeue and the run
  is lost: that is why ``wre.execute_skill`` does not use Celery's ``autoretry_for``). The redelivered attempt
  is answered from the store (runs are idempotent), and its retry is published again.

The evolve task and the result backend use Celery's own retry options, configured from the constants here
(:data:`EVOLVE_RETRY_OPTIONS`, :data:`RESULT_BACKEND_RETRY_OPTIONS`): a lost evolution is swept from the
outbox, and a result store has no run to requeue.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import amqp.exceptions
import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from celery import Task
from celery.exceptions import Reject, Retry
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError

from worker.messages import MessageError

log = logging.getLogger(__name__)


class InfrastructureError(Exception):
    """A failure that is an outage's, not the skill's (an agent raises its subclass for an LLM server's 429,
    5xx or timeout): retried without spending a ReAct iteration.

    :param retry_after: seconds the server asked us to wait (``Retry-After``), or None for the usual backoff.
    """

    def __init__(self, *args: object, retry_after: float | None = None) -> None:
        super().__init__(*args)
        self.retry_after = retry_after


#: The failures that are nobody's fault but an outage's: retried, never recorded as an attempt's error.
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,
    redis.exceptions.ConnectionError,
    kombu.exceptions.OperationalError,
    InfrastructureError,
)
#: What a publish raises when the broker is away or refuses the message (not a bug of ours: those propagate).
PUBLISH_ERRORS: tuple[type[BaseException], ...] = (
    kombu.exceptions.KombuError,
    amqp.exceptions.AMQPError,
    redis.exceptions.RedisError,
    OSError,
)

#: Infrastructure retries of one attempt before the run fails: with the backoff below, about 10 minutes.
MAX_INFRA_RETRIES = 30
#: The first infrastructure retry waits about this long; each next one twice as long ...
INFRA_BACKOFF_BASE_SECONDS = 0.5
#: ... up to this.
INFRA_BACKOFF_MAX_SECONDS = 30.0
#: Retries of one delivery spread over [half, full] of the exponential step, so that the runs an outage
#: interrupted together do not all come back in the same instant ("equal jitter").
INFRA_BACKOFF_JITTER = 0.5
#: A broker that takes deliveries but refuses publishes would otherwise hand the requeued delivery straight
#: back, and the worker would spin on it: a short pause before each requeue keeps that loop slow.
REQUEUE_PAUSE_SECONDS = 1.0

#: The header that carries a delivery's ReAct attempt number (1 on a producer's message, which has none).
ATTEMPT_HEADER = "wre_attempt"
#: The header that carries the infrastructure retries this attempt has spent.
INFRA_RETRIES_HEADER = "wre_infra_retries"
#: The highest attempt a header may name: the ceiling of ``WRE_REACT_MAX_ITER``.
MAX_ATTEMPT = 10

#: ``wre.evolve_skill`` on an outage: Celery's own backoff (1 s doubling to 30 s, full jitter). A retry it
#: cannot publish is lost, and the evolution outbox's sweep enqueues the skill again.
EVOLVE_RETRY_OPTIONS: dict[str, Any] = {
    "autoretry_for": INFRASTRUCTURE_ERRORS,
    "max_retries": MAX_INFRA_RETRIES,
    "retry_backoff": 1,
    "retry_backoff_max": int(INFRA_BACKOFF_MAX_SECONDS),
    "retry_jitter": True,
}
#: A result that cannot be stored while Redis is away is retried by Celery's backend (10 ms doubling to 10 s,
#: jittered: about a minute in all) instead of turning a run that succeeded into a FAILURE result.
RESULT_BACKEND_RETRY_OPTIONS: dict[str, Any] = {
    "result_backend_always_retry": True,
    "result_backend_max_retries": 20,
}


class Bookkeeping(BaseModel):
    """The retry layer's headers: which attempt this delivery runs, and the outage retries already spent.

    Headers can be forged too, so the attempt number is checked against the store before it is believed
    (``SkillRunner.resume``), and the retry count only ever shortens a run's own outage budget.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    attempt: Annotated[StrictInt, Field(ge=1, le=MAX_ATTEMPT, alias=ATTEMPT_HEADER)] = 1
    infra_retries: Annotated[StrictInt, Field(ge=0, le=MAX_INFRA_RETRIES, alias=INFRA_RETRIES_HEADER)] = 0

    def headers(self) -> dict[str, int]:
        return {ATTEMPT_HEADER: self.attempt, INFRA_RETRIES_HEADER: self.infra_retries}


def parse_bookkeeping(headers: object) -> Bookkeeping:
    """The retry headers of a delivery (absent on a producer's first message: attempt 1, no retries spent).

    :raises MessageError: a header out of its range, in one line.
    """
    known = {}
    if isinstance(headers, dict):
        known = {key: headers[key] for key in (ATTEMPT_HEADER, INFRA_RETRIES_HEADER) if key in headers}
    try:
        return Bookkeeping.model_validate(known)
    except ValidationError as error:
        header = str(error.errors()[0]["loc"][0])
        low, high = (1, MAX_ATTEMPT) if header == ATTEMPT_HEADER else (0, MAX_INFRA_RETRIES)
        raise MessageError(f"{header} must be an integer within {low}..{high}, got {known[header]!r:.80}") from None


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
