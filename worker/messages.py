"""What a ``wre.execute_skill`` message may carry, as typed models checked once at the boundary.

Two parts, from two writers:

- :class:`RunKwargs` — the producer's kwargs (any Celery client can write them): the skill, the agent, the
  input context, ``force`` and the A/B ``assignment_key``. Nothing else: retry bookkeeping is not a kwarg.
- :class:`Bookkeeping` — what wre's own retry layer (worker/retries.py) writes in the message headers: the
  ReAct attempt number and the infrastructure retries spent. Headers can be forged too, so the attempt number
  is checked against the store before it is believed (worker/runner.py, ``SkillRunner.resume``), and the
  retry count only ever shortens a run's own outage budget.

Widths follow the store's columns (db/models.py): a name that cannot be stored is refused here, before any
agent runs, with one line saying which field and why.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

MAX_RUN_ID_CHARS = 64  # skill_outcomes.run_id
MAX_SKILL_NAME_CHARS = 128  # skills.name
MAX_AGENT_CHARS = 64  # skill_outcomes.agent
MAX_ASSIGNMENT_KEY_CHARS = 256
ATTEMPT_HEADER = "wre_attempt"
INFRA_RETRIES_HEADER = "wre_infra_retries"
MAX_ATTEMPT = 10  # REACT_MAX_ITER_BOUNDS' ceiling
MAX_INFRA_RETRIES = 30

# What each field must be, in the words of the one-line refusal.
RULES = {
    "skill_name": f"a non-empty string of at most {MAX_SKILL_NAME_CHARS} characters",
    "agent": f"null or a non-empty string of at most {MAX_AGENT_CHARS} characters",
    "input_context": "a JSON object",
    "force": "true or false",
    "assignment_key": f"null or a non-empty string of at most {MAX_ASSIGNMENT_KEY_CHARS} characters",
    ATTEMPT_HEADER: f"an integer within 1..{MAX_ATTEMPT}",
    INFRA_RETRIES_HEADER: f"an integer within 0..{MAX_INFRA_RETRIES}",
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


class Bookkeeping(BaseModel):
    """The retry layer's headers: which attempt this delivery runs, and the outage retries already spent."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    attempt: Annotated[StrictInt, Field(ge=1, le=MAX_ATTEMPT, alias=ATTEMPT_HEADER)] = 1
    infra_retries: Annotated[StrictInt, Field(ge=0, le=MAX_INFRA_RETRIES, alias=INFRA_RETRIES_HEADER)] = 0

    def headers(self) -> dict[str, int]:
        return {ATTEMPT_HEADER: self.attempt, INFRA_RETRIES_HEADER: self.infra_retries}


def _one_line(error: ValidationError, what: str) -> MessageError:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    field = loc[0] if loc else what
    if first["type"] == "extra_forbidden":
        return MessageError(
            f"unknown argument {field!r} in {what}; expected {', '.join(RunKwargs.model_fields)}"
        )
    if first["type"] == "missing":
        return MessageError(f"{field} is required in {what}")
    rule = RULES.get(field, first["msg"])
    return MessageError(f"{field} must be {rule}, got {first.get('input')!r:.80}")


def parse_run_kwargs(kwargs: object) -> RunKwargs:
    """The producer's kwargs as a :class:`RunKwargs`; :class:`MessageError` (one line) when they do not fit."""
    if not isinstance(kwargs, dict):
        raise MessageError(f"the kwargs must be a JSON object, got {type(kwargs).__name__}")
    try:
        return RunKwargs.model_validate(kwargs)
    except ValidationError as error:
        raise _one_line(error, "the kwargs") from None


def parse_bookkeeping(headers: object) -> Bookkeeping:
    """The retry layer's headers (absent on a producer's first message: attempt 1, no retries spent)."""
    known = {}
    if isinstance(headers, dict):
        known = {key: headers[key] for key in (ATTEMPT_HEADER, INFRA_RETRIES_HEADER) if key in headers}
    try:
        return Bookkeeping.model_validate(known)
    except ValidationError as error:
        raise _one_line(error, "the headers") from None


def check_run_id(run_id: object) -> str:
    """The task id as a run id: a non-empty string that fits its column."""
    if not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_RUN_ID_CHARS:
        raise MessageError(
            f"the task id (run id) must be a non-empty string of at most {MAX_RUN_ID_CHARS} characters, "
            f"got {str(run_id)[:80]!r}"
        )
    return run_id
