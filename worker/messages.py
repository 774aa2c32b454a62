"""What a message may be, checked at the boundary before any of it is believed.

Two checks, in the order a delivery meets them:

- **The envelope**, before Celery unpacks it. Celery's worker trusts a message's shape: a body of ``[1]``
  under the task headers raises ``ValueError`` in ``Request.__init__`` (it unpacks ``args, kwargs, embed``),
  outside any handler, and the worker exits; the message goes back to the head of the queue and kills the
  next worker too. A message without an ``id`` header raises ``KeyError`` there and the consumer reconnects
  in a loop. So every wre task is a :class:`CheckedTask`, whose strategy (the function the consumer calls for
  each message of that task) checks first: the ``id`` and ``task`` headers are non-empty strings; the content
  type is JSON and the body at most ``WRE_MAX_CONTEXT_BYTES`` plus ``ENVELOPE_ALLOWANCE_BYTES``, measured
  before it is decoded; the body decodes to ``[args, kwargs, embed]``. Anything else is rejected without
  requeue (RabbitMQ moves a rejected run to the dead-letter queue, ``<skills queue>.dead``, which keeps the
  newest ``DEAD_LETTER_MAX_MESSAGES``; Redis has none and drops it), logged on one line, and, when the
  message has a usable id, a FAILURE result saying so is stored for the producer. The worker keeps serving.
- **The kwargs** (:class:`RunKwargs`), which any Celery client can write: the skill, the agent, the input
  context, ``force`` and the A/B ``assignment_key``. Nothing else: retry bookkeeping travels in headers
  (worker/retries.py). Widths follow the store's columns (db/models.py): a name that cannot be stored is
  refused here, before any agent runs, with one line saying which field and why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

from celery import Celery, Task, bootsteps, states
from celery.exceptions import InvalidTaskError
from celery.worker.strategy import default as default_strategy
from kombu import Exchange, Queue  # type: ignore[attr-defined]
from kombu.message import Message
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

from worker.settings import get_settings

if TYPE_CHECKING:
    from celery.worker.consumer.consumer import Consumer

log = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
# Room for the rest of a run's message around its context: other kwargs, the ReAct state, Celery's embed.
ENVELOPE_ALLOWANCE_BYTES = 64 * 1024
# The dead-letter queue keeps the newest this many (RabbitMQ drops the oldest): nothing consumes it.
DEAD_LETTER_MAX_MESSAGES = 10_000
# What a log line shows of a rejected body.
BODY_PREVIEW_CHARS = 120

# wre's own keys in the Celery app's configuration (worker/app.py sets them from the settings).
MAX_BODY_BYTES_KEY = "wre_max_message_bytes"
DEAD_LETTER_QUEUE_KEY = "wre_dead_letter_queue"

Handler = Callable[..., Any]


class MalformedMessageError(InvalidTaskError):  # type: ignore[misc]
    """A message that is not a wre task message; stored as the run's FAILURE result when it has an id."""


def message_problem(message: Message, max_body_bytes: int) -> str | None:
    """What is wrong with ``message`` as a Celery protocol 2 task message, or None when nothing is."""
    headers = message.headers
    if not isinstance(headers, dict):
        return "the message has no headers"
    for header in ("id", "task"):
        value = headers.get(header)
        if not isinstance(value, str) or not value:
            return f"header {header!r} must be a non-empty string, got {_preview(value)}"
    if message.content_type != JSON_CONTENT_TYPE:
        return f"content type must be {JSON_CONTENT_TYPE}, got {message.content_type!r}"
    size = len(message.body or b"")
    if size > max_body_bytes:
        return f"the body is {size} bytes, over the limit of {max_body_bytes} (WRE_MAX_CONTEXT_BYTES + envelope)"
    try:
        payload = message.decode()
    except Exception as error:  # noqa: BLE001 - any decoding failure makes the message malformed
        return f"the body is not valid JSON: {type(error).__name__}"
    if not (
        isinstance(payload, list | tuple)
        and len(payload) == 3
        and isinstance(payload[0], list | tuple)
        and isinstance(payload[1], dict)
        and isinstance(payload[2], dict | None)
    ):
        return f"the body must be [args, kwargs, embed] (a list, an object, an object), got {_preview(payload)}"
    return None


def _preview(value: object) -> str:
    text = repr(value)
    return text if len(text) <= BODY_PREVIEW_CHARS else f"{text[:BODY_PREVIEW_CHARS]}… ({len(text)} chars)"


def checked_strategy(task: Task, app: Celery, consumer: Consumer, **options: Any) -> Handler:
    """Celery's default strategy for ``task``, behind the envelope check."""
    handle = default_strategy(task, app, consumer, **options)
    max_body_bytes = int(app.conf.get(MAX_BODY_BYTES_KEY) or get_settings().max_context_bytes + ENVELOPE_ALLOWANCE_BYTES)
    connection_errors = consumer.connection_errors

    def on_message(message: Message, body: Any, ack: Any, reject: Any, callbacks: Any, **kwargs: Any) -> Any:
        problem = message_problem(message, max_body_bytes)
        if problem is None:
            return handle(message, body, ack, reject, callbacks, **kwargs)
        headers = message.headers if isinstance(message.headers, dict) else {}
        task_id = headers.get("id")
        log.error(
            "rejected a malformed message for %s (id %s, queue %s): %s",
            task.name,
            _preview(task_id),
            (message.delivery_info or {}).get("routing_key"),
            problem,
        )
        message.reject_log_error(log, connection_errors, requeue=False)
        if isinstance(task_id, str) and task_id:
            _store_failure(app, task_id, problem)
        return None

    return on_message


def _store_failure(app: Celery, task_id: str, problem: str) -> None:
    """Tell a producer waiting on the result why its run never started (best effort: the rejection stands)."""
    if app.conf.result_backend is None:
        return
    try:
        app.backend.store_result(task_id, MalformedMessageError(problem), states.FAILURE)
    except Exception as error:  # noqa: BLE001 - the backend may be down; the message is already rejected
        log.warning("could not store the rejection of %s: %s", task_id, error)


class CheckedTask(Task):  # type: ignore[misc]
    """The base class of wre's tasks: messages go through ``checked_strategy``."""

    Strategy = "worker.messages:checked_strategy"


class DeadLetterQueue(bootsteps.StartStopStep):  # type: ignore[misc]
    """On RabbitMQ, declare the queue that rejected messages are dead-lettered to (the broker drops them when
    it does not exist). The worker never consumes it: an operator inspects it (docs/OPERATIONS.md)."""

    requires = ("celery.worker.consumer.connection:Connection",)

    def start(self, consumer: Consumer) -> None:
        connection = consumer.connection
        if connection is None or connection.transport.driver_type != "amqp":
            return
        name = consumer.app.conf.get(DEAD_LETTER_QUEUE_KEY)
        if not name:
            return
        queue = Queue(name, Exchange(""), routing_key=name, queue_arguments={"x-max-length": DEAD_LETTER_MAX_MESSAGES})
        queue(connection.default_channel).declare()


# -- the kwargs

MAX_RUN_ID_CHARS = 64  # skill_outcomes.run_id
MAX_SKILL_NAME_CHARS = 128  # skills.name
MAX_AGENT_CHARS = 64  # skill_outcomes.agent
MAX_ASSIGNMENT_KEY_CHARS = 256

# What each field must be, in the words of the one-line refusal.
RULES = {
    "skill_name": f"a non-empty string of at most {MAX_SKILL_NAME_CHARS} characters",
    "agent": f"null or a non-empty string of at most {MAX_AGENT_CHARS} characters",
    "input_context": "a JSON object",
    "force": "true or false",
    "assignment_key": f"null or a non-empty string of at most {MAX_ASSIGNMENT_KEY_CHARS} characters",
}


class MessageError(ValueError):
    """A message that does not fit its model; the text is one line naming the field."""


class RunKwargs(BaseModel):
    """The kwargs of ``wre.execute_skill``, as a producer sends them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    skill_name: Annotated[StrictStr, Field(min_length=1, max_length=MAX_SKILL_NAME_CHARS)]
    input_context: dict[str, Any] = Field(default_factory=dict)
    agent: Annotated[StrictStr, Field(min_length=1, max_length=MAX_AGENT_CHARS)] | None = None
    force: StrictBool = False
    assignment_key: Annotated[StrictStr, Field(min_length=1, max_length=MAX_ASSIGNMENT_KEY_CHARS)] | None = None


def _one_line(error: ValidationError) -> MessageError:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    field = loc[0] if loc else "the kwargs"
    if first["type"] == "extra_forbidden":
        return MessageError(
            f"unknown argument {field!r} in the kwargs; expected {', '.join(RunKwargs.model_fields)}"
        )
    if first["type"] == "missing":
        return MessageError(f"{field} is required in the kwargs")
    rule = RULES.get(field, first["msg"])
    return MessageError(f"{field} must be {rule}, got {first.get('input')!r:.80}")


def parse_run_kwargs(kwargs: object) -> RunKwargs:
    """The producer's kwargs as a :class:`RunKwargs`; :class:`MessageError` (one line) when they do not fit."""
    if not isinstance(kwargs, dict):
        raise MessageError(f"the kwargs must be a JSON object, got {type(kwargs).__name__}")
    try:
        return RunKwargs.model_validate(kwargs)
    except ValidationError as error:
        raise _one_line(error) from None


def check_run_id(run_id: object) -> str:
    """The task id as a run id: a non-empty string that fits its column."""
    if not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_RUN_ID_CHARS:
        raise MessageError(
            f"the task id (run id) must be a non-empty string of at most {MAX_RUN_ID_CHARS} characters, "
            f"got {str(run_id)[:80]!r}"
        )
    return run_id
