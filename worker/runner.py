"""The steps of one skill run, shared by the Celery task and the in-process API (one implementation).

validate → resolve the version (sticky A/B arm) → run the agent → score → decide (worker/react.py) → record
(one transaction). Two drivers only loop and hand over: the Celery task (worker/tasks.py, one attempt per
delivery) and :class:`Orchestrator` at the end of this module, the in-process API with the seed's names (used
by the embedded demo and by tests; its defaults are ``WRE_REACT_MAX_ITER``, ``WRE_REACT_FIDELITY`` and
``WRE_REACT_MODE``, as the seed defines them).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from cachetools import Cache, LRUCache, TTLCache

from db.counters import (
    COUNTER_EVOLUTIONS,
    COUNTER_RETRIES,
    COUNTER_RUNS_RETRIED,
    COUNTER_TOTAL_EXECUTIONS,
    COUNTER_TOTAL_RUNS,
)
from db.memory import LearningEventRecord, OutcomeRecord, PatternMemory
from db.records import AbTestRecord
from db.trials import Assignment, unit_key_for
from worker import react
from worker.agents import AttemptInfo, get_agent, run_attempt
from worker.evolution import evolve_skill
from worker.messages import MessageError, parse_run_kwargs
from worker.scoring import Score, score_within
from worker.settings import Settings, get_settings
from worker.skills import Skill, input_error, parse_variation

# The largest output an attempt may return, as JSON text: the result carries it whole, and the final attempt's
# row stores it whole (``result``). A larger one fails its attempt with this limit named, rather than reaching
# the producer cut into JSON that does not parse.
MAX_OUTPUT_CHARS = 1_000_000
MAX_CACHED_VARIATIONS = 1024
MAX_CACHED_SKILLS = 4096
# A trial's deadline is its first attempt's time limit plus this; a trial still without an outcome then counts
# as a failure of its arm.
TRIAL_SLACK_SECONDS = 30.0


class InvalidRunError(ValueError):
    """A run request that can never succeed (unknown skill or agent, bad context, bad figures).

    It fails at once, is not retried and writes nothing.
    """


@dataclass(frozen=True)
class RunRequest:
    """A validated request to run a skill.

    :param agent: the agent's name (the skill's default when the producer gave none).
    :param input_context: a JSON object under the size limit.
    :param force: run the production version even while an A/B test runs (no routing, no trial).
    :param assignment_key: what the A/B arm is derived from; the run id when None.
    """

    skill_name: str
    agent: str
    input_context: dict[str, Any]
    force: bool = False
    assignment_key: str | None = None

    @cached_property
    def digest(self) -> str:
        """A digest of the arguments that define the run: a run id names one request, never two."""
        canonical = json.dumps(
            [self.skill_name, self.agent, self.input_context, self.force, self.assignment_key],
            sort_keys=True,
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Version:
    """The content a run executes, and the A/B test and arm that chose it (if any)."""

    variation_id: str
    skill: Skill
    test_id: int | None = None
    arm: str | None = None


@dataclass
class AttemptOutcome:
    """One scored attempt and what the ReAct policy decided about it."""

    score: Score
    output: object
    execution_time_ms: float
    decision: react.ReactDecision
    recorded: bool
    usage: dict[str, Any] | None = None
    # Set when the attempt was answered from the store: the version its run was recorded on.
    version: Version | None = None


def _plan(guard: AbTestRecord | None, test: AbTestRecord | None, unit: str) -> list[Assignment]:
    """A run's trials: the guard's arm first; outside its holdout, the arm of the test beside it."""
    if guard is None:
        assert test is not None
        return [Assignment(test.test_id, choose_arm(test.test_id, unit, test.treatment_share))]
    guard_arm = choose_arm(guard.test_id, unit, guard.treatment_share)
    if test is None:
        return [Assignment(guard.test_id, guard_arm)]
    arm = choose_arm(test.test_id, unit, test.treatment_share)
    # While a test runs beside it, the guard counts the outcomes of the units on the test's control coin only, in
    # both of its arms: production's units served the candidate are not production's outcomes, and thinning the
    # holdout by the same coin keeps both arms weighting the test's period alike (thinning one arm only would
    # turn a trend over that period into a difference). Every unit still counts for the guard's split.
    if arm == "control":
        guard_trial = Assignment(guard.test_id, guard_arm)
    else:
        guard_trial = Assignment(guard.test_id, guard_arm, uncounted_while=test.test_id)
    return [guard_trial] if guard_arm == "control" else [guard_trial, Assignment(test.test_id, arm)]


def _served(
    guard: AbTestRecord | None, test: AbTestRecord | None, arms: Mapping[int, str]
) -> tuple[AbTestRecord, str] | None:
    """The test and arm whose version a run executes, given the arms on record per test (None: none running)."""
    if guard is not None and arms.get(guard.test_id) == "control":
        return guard, "control"
    if test is not None and test.test_id in arms:
        return test, arms[test.test_id]
    if guard is not None and guard.test_id in arms:
        return guard, arms[guard.test_id]
    return None


def _version_of(test: AbTestRecord, arm: str) -> str:
    return test.treatment_version if arm == "treatment" else test.control_version


def choose_arm(test_id: int, assignment_key: str, treatment_share: float = 0.5) -> str:
    """The arm of a unit, a pure function of (test id, key, share): retries, redeliveries and every run of
    one key land on the same arm. The digest's first 8 bytes are a uniform draw in [0, 1)."""
    digest = hashlib.sha256(f"{test_id}:{assignment_key}".encode()).digest()
    draw = int.from_bytes(digest[:8], "big") / 2**64
    return "treatment" if draw < treatment_share else "control"


class SkillRunner:
    """Runs the steps of a skill run against one store with one set of settings.

    :param settings: wre's settings (limits, thresholds, ReAct figures).
    """

    def __init__(self, memory: PatternMemory, settings: Settings) -> None:
        self.memory = memory
        self.settings = settings
        # Within the cache window the hot path reads nothing; a promotion reaches every worker after it.
        window = settings.production_cache_seconds
        self._resolved: TTLCache[str, Any] = TTLCache(MAX_CACHED_SKILLS, window)
        self._skills: TTLCache[str, Any] = TTLCache(MAX_CACHED_SKILLS, window)
        # A variation never changes: kept once read.
        self._variations: LRUCache[str, str] = LRUCache(MAX_CACHED_VARIATIONS)
        self._lock = threading.Lock()  # cachetools' caches are not thread-safe; worker threads share a runner

    # 1. validate
    def validate(self, kwargs: Mapping[str, Any]) -> RunRequest:
        """Check a run's kwargs (typed at the boundary, worker/messages.py), then what needs the store and
        the limits; raise :class:`InvalidRunError` naming what is wrong."""
        try:
            fields = parse_run_kwargs(dict(kwargs))
        except MessageError as error:
            raise InvalidRunError(str(error)) from None
        context = fields.input_context
        try:
            text = json.dumps(context, allow_nan=False, ensure_ascii=False)
            # A lone surrogate is not text: UTF-8 cannot encode it (and Postgres refuses its JSON escape).
            size = len(text.encode())
        except (TypeError, ValueError) as error:
            raise InvalidRunError(f"input_context is not JSON: {error}") from None
        if "\\u0000" in text:
            raise InvalidRunError("input_context contains a NUL character (\\u0000), which cannot be stored")
        if size > self.settings.max_context_bytes:
            raise InvalidRunError(
                f"input_context is {size} bytes, over the limit of {self.settings.max_context_bytes} "
                "(WRE_MAX_CONTEXT_BYTES)"
            )
        skill_row = self._skill_row(fields.skill_name)
        if skill_row is None:
            raise InvalidRunError(f"unknown skill {fields.skill_name!r}; register it with `wre skill add PATH`")
        agent = fields.agent or skill_row.default_agent
        try:
            get_agent(agent)
        except ValueError as error:
            raise InvalidRunError(str(error)) from None
        # The production version's `input:` schema: a context that fails it is bad input, no attempt spent.
        problem = input_error(self._production_and_test(fields.skill_name)[1], context)
        if problem is not None:
            raise InvalidRunError(problem)
        return RunRequest(fields.skill_name, agent, context, fields.force, fields.assignment_key)

    # 2. resolve the version
    def resolve(self, request: RunRequest, run_id: str) -> Version:
        """The version this run executes: production, or the arm chosen from the key of the running test or guard.

        With a guard open, the guard splits first: its holdout runs the version it keeps, the rest run
        production or, with a test beside the guard, that test's arm (independent hashes, so the test's split is
        random within the guard's). A routed run is written to the trial ledger now, at assignment (one write
        for all its trials): it counts from this moment whatever becomes of it. If a test closed since this
        worker looked, look again once.
        """
        unit = request.assignment_key or run_id
        for _ in range(2):
            production_id, production_content, (guard, test) = self._production_and_test(request.skill_name)
            if request.force or (guard is None and test is None):
                return Version(production_id, parse_variation(production_content))
            plan = _plan(guard, test, unit)
            chosen = _served(guard, test, {assignment.test_id: assignment.arm for assignment in plan})
            assert chosen is not None  # a plan always serves its last assignment
            variation_id = _version_of(*chosen)
            skill = parse_variation(production_content) if variation_id == production_id else self._skill(variation_id)
            time_limit = skill.time_limit or self.settings.default_time_limit_seconds
            recorded = self.memory.assign_trials(
                run_id,
                unit_key_for(run_id, request.assignment_key),
                time_limit + TRIAL_SLACK_SECONDS,
                plan,
            )
            served = _served(guard, test, recorded)
            if served is not None:
                record, arm = served
                if _version_of(record, arm) != variation_id:
                    # The ledger is the fact: a run assigned before keeps the arm it was given then.
                    variation_id = _version_of(record, arm)
                    skill = self._skill(variation_id)
                return Version(variation_id, skill, record.test_id, arm)
            # The test is no longer running: read production and the running test afresh.
            self._forget(request.skill_name)
        production_id, production_content = self.memory.get_production(request.skill_name)
        return Version(production_id, parse_variation(production_content))

    def resume(
        self, request: RunRequest, run_id: str, attempt: int, read_store: bool = True
    ) -> tuple[Version, react.ReactState, dict[str, Any] | None]:
        """The version and ReAct state of a delivery of ``attempt`` of ``run_id``, and the attempt's row if it
        is recorded already (then it is answered from the store, not run again).

        A new run (attempt 1, ``read_store`` False: a first delivery) resolves its version. Anything else is
        rebuilt from the store, never taken from the message: attempt N > 1 exists only if attempts 1..N-1
        of the same run are recorded, none final, on one version, test and arm; otherwise the delivery is
        refused as forged.

        :raises InvalidRunError: a forged attempt, or a run id recorded with other arguments.
        """
        rows = self.memory.run_outcomes(run_id) if read_store or attempt > 1 else []
        if not rows and attempt == 1:
            if read_store:
                # A redelivery may have been assigned to a test this worker's cached view does not show yet:
                # read afresh, so that it finds its trial in the ledger instead of leaving it pending.
                self._forget(request.skill_name)
            version = self.resolve(request, run_id)
            return version, self.start_state(request, version), None
        _check_same_request(request, run_id, rows)
        earlier = [row for row in rows if row["attempt"] < attempt]
        if (
            [row["attempt"] for row in earlier] != list(range(1, attempt))
            or any(row["final"] for row in earlier)
            or len({(row["variation_id"], row["test_id"], row["arm"]) for row in rows}) > 1
        ):
            raise InvalidRunError(
                f"attempt {attempt} of run {run_id} is refused as forged: it must follow recorded, unfinished "
                f"attempts 1..{attempt - 1} of that run on one version (recorded: "
                f"{[(row['attempt'], row['final']) for row in rows]})"
            )
        version, state = self._state_from_rows(request, rows, attempt)
        this = next((row for row in rows if row["attempt"] == attempt), None)
        return version, state, this

    def _state_from_rows(
        self, request: RunRequest, rows: list[dict[str, Any]], attempt: int
    ) -> tuple[Version, react.ReactState]:
        """The version of a recorded run and its state before ``attempt``, from its recorded attempts."""
        first = rows[0]
        version = Version(first["variation_id"], self._skill(first["variation_id"]), first["test_id"], first["arm"])
        start = self.start_state(request, version)
        summaries = tuple(_summary(row["attempt"], _stored_score(row)) for row in rows if row["attempt"] < attempt)
        # A budget lowered since the run started still lets the recorded attempts stand.
        state = replace(
            start, attempt=attempt, max_iterations=max(start.max_iterations, attempt), attempts=summaries
        )
        return version, state

    def start_state(
        self,
        request: RunRequest,
        version: Version,
        max_iterations: int | None = None,
        threshold: float | None = None,
        react_mode: bool | None = None,
    ) -> react.ReactState:
        """The ReAct state of a new run: the skill's threshold (or the setting's), the settings' budget."""
        if threshold is None:
            threshold = version.skill.threshold
        return react.start(
            max_iterations=self.settings.react_max_iter if max_iterations is None else max_iterations,
            threshold=self.settings.react_fidelity if threshold is None else threshold,
            react_mode=self.settings.react_mode if react_mode is None else react_mode,
            arm=version.arm,
            variation_id=version.variation_id,
            test_id=version.test_id,
        )

    # 3–6. run, score, decide, record
    def attempt(
        self, request: RunRequest, version: Version, state: react.ReactState, run_id: str
    ) -> AttemptOutcome:
        """Run one attempt and record it; agent failures are scored, infrastructure errors propagate."""
        context = react.retry_context(request.input_context, state)
        agent = get_agent(request.agent)
        time_limit = version.skill.time_limit or self.settings.default_time_limit_seconds
        started = time.perf_counter()
        result = run_attempt(
            agent,
            version.skill,
            context,
            AttemptInfo(run_id, state.attempt, version.variation_id),
            time_limit,
        )
        text = _as_text(result.output)  # serialized once: measured here, stored below
        if result.error is None and text is not None and len(text) > MAX_OUTPUT_CHARS:
            error = f"the output is {len(text):,} characters, over the limit of {MAX_OUTPUT_CHARS:,} (MAX_OUTPUT_CHARS)"
            result, text = replace(result, output=None, error=error), None
        scored = score_within(version.skill, result.output, result.error, state.threshold, time_limit)
        elapsed_ms = (time.perf_counter() - started) * 1000
        summary = _summary(state.attempt, scored)
        decision = react.next_step(state, summary, fatal=result.fatal)
        outcome = OutcomeRecord(
            run_id=run_id,
            attempt=state.attempt,
            skill_name=request.skill_name,
            variation_id=version.variation_id,
            agent=request.agent,
            success=scored.success,
            execution_success=scored.execution_success,
            pattern_fidelity=scored.pattern_fidelity,
            failed_at_step=scored.failed_at_step,
            error=scored.error,
            step_results=[dict(step) for step in scored.step_results],
            input_context=request.input_context,
            output=text,
            execution_time_ms=elapsed_ms,
            test_id=version.test_id,
            arm=version.arm,
            final=decision.action != "retry",
            token_usage=result.usage,
            request_digest=request.digest,
            result=_json_safe(result.output) if decision.action != "retry" else None,
            # The evolution outbox: the trigger is stored with the final attempt; a beat sweep enqueues it.
            evolve_pending=decision.evolve,
        )
        recorded = self.memory.record_attempt(
            outcome, counters=_counters(state, decision), learning_event=_react_event(request, decision)
        )
        if not recorded:
            return self._as_recorded(request, state, run_id)
        return AttemptOutcome(scored, result.output, elapsed_ms, decision, recorded, result.usage)

    def _as_recorded(self, request: RunRequest, state: react.ReactState, run_id: str) -> AttemptOutcome:
        """A redelivered or repeated attempt: the run goes on from what was recorded, not from this rerun.

        An agent need not answer the same twice; deciding from the rerun could end a run whose recorded
        attempt failed, or retry one whose recorded attempt was final. A run already finished answers with
        its final attempt at once; a run id recorded with other arguments is refused.
        """
        rows = self.memory.run_outcomes(run_id)
        _check_same_request(request, run_id, rows)
        final = next((row for row in rows if row["final"]), None)
        stored = final or next(row for row in rows if row["attempt"] == state.attempt)
        if stored["attempt"] != state.attempt:
            _, state = self._state_from_rows(request, rows, stored["attempt"])
        return self.recorded_attempt(state, stored)

    def recorded_attempt(self, state: react.ReactState, stored: dict[str, Any]) -> AttemptOutcome:
        """The outcome of an attempt already recorded (``stored`` is its row), decided as it was then."""
        scored = _stored_score(stored)
        summary = _summary(state.attempt, scored)
        # A final failed row before the budget was spent was a fatal error: it ends the run without evolving.
        fatal = stored["final"] and not stored["success"] and state.attempt < state.max_iterations
        decision = react.next_step(state, summary, fatal=fatal)
        # The final attempt's exact output (types kept); the bounded text preview only for older rows.
        output = stored["result"] if stored["result"] is not None else _from_text(stored["output"])
        version = Version(
            stored["variation_id"], self._skill(stored["variation_id"]), stored["test_id"], stored["arm"]
        )
        return AttemptOutcome(
            scored, output, stored["execution_time_ms"], decision, False, stored["token_usage"], version=version
        )

    def result(
        self, request: RunRequest, version: Version, run_id: str, outcome: AttemptOutcome
    ) -> dict[str, Any]:
        """The run's result as the seed shaped it, plus the ReAct metadata and the version that ran."""
        version = outcome.version or version
        return {
            "execution_id": run_id,
            "skill_name": request.skill_name,
            "agent": request.agent,
            "success": outcome.score.success,
            "pattern_fidelity": outcome.score.pattern_fidelity,
            "execution_time_ms": outcome.execution_time_ms,
            "evolution_triggered": outcome.decision.evolve,
            "result": _json_safe(outcome.output),
            "failed_at_step": outcome.score.failed_at_step,
            "error": outcome.score.error,
            "step_results": [dict(step) for step in outcome.score.step_results],
            "variation_id": version.variation_id,
            "test_id": version.test_id,
            "arm": version.arm,
            "_react_metadata": outcome.decision.metadata,
        }

    def _production_and_test(self, skill_name: str) -> tuple[str, str, Any]:
        def load(name: str) -> tuple[str, str, Any]:
            return (*self.memory.get_production(name), self.memory.running_routes(name))

        return self._cached(self._resolved, skill_name, load)  # type: ignore[no-any-return]

    def _forget(self, skill_name: str) -> None:
        with self._lock:
            self._resolved.pop(skill_name, None)

    def _skill_row(self, skill_name: str) -> Any:
        """The skill's row (default agent), cached like the production view; an unknown skill is not cached."""
        return self._cached(self._skills, skill_name, self.memory.get_skill)

    def _skill(self, variation_id: str) -> Skill:
        """A variation's parsed content."""

        def load(key: str) -> str:
            row = self.memory.get_variation(key)
            if row is None:
                raise InvalidRunError(f"variation {key!r} does not exist")
            return str(row.variation_content)

        return parse_variation(self._cached(self._variations, variation_id, load))

    def _cached(self, cache: Cache[str, Any], key: str, load: Callable[[str], Any]) -> Any:
        """``cache[key]``, loaded (outside the lock: a store read) when missing; None is not kept."""
        with self._lock:
            value = cache.get(key)
        if value is None:
            value = load(key)
            if value is not None:
                with self._lock:
                    cache[key] = value
        return value


def _check_same_request(request: RunRequest, run_id: str, rows: list[dict[str, Any]]) -> None:
    recorded = next((row["request_digest"] for row in rows if row["request_digest"] is not None), None)
    if recorded is not None and recorded != request.digest:
        raise InvalidRunError(
            f"run id {run_id} is already recorded with other arguments (skill, agent, context, force or "
            "assignment key); send a new run id"
        )


def _stored_score(row: Mapping[str, Any]) -> Score:
    return Score(
        step_results=list(row["step_results"]),
        pattern_fidelity=row["pattern_fidelity"],
        failed_at_step=row["failed_at_step"],
        error=row["error"],
        success=row["success"],
        execution_success=row["execution_success"],
    )


def _summary(attempt: int, scored: Score) -> react.AttemptSummary:
    return react.AttemptSummary(attempt, scored.pattern_fidelity, scored.success, scored.failed_at_step, scored.error)


def _counters(state: react.ReactState, decision: react.ReactDecision) -> dict[str, int]:
    counters = {COUNTER_TOTAL_EXECUTIONS: 1}
    if state.attempt == 1:
        counters[COUNTER_TOTAL_RUNS] = 1
        if decision.action == "retry":
            counters[COUNTER_RUNS_RETRIED] = 1
    if decision.action == "retry":
        counters[COUNTER_RETRIES] = 1
    if decision.evolve:
        counters[COUNTER_EVOLUTIONS] = 1
    return counters


def _react_event(request: RunRequest, decision: react.ReactDecision) -> LearningEventRecord | None:
    """A finished run's ``react_execution`` event: iterations, first and final fidelity."""
    if decision.action == "retry":
        return None
    attempts = decision.metadata["all_attempts"]
    return LearningEventRecord(
        skill_name=request.skill_name,
        event_type="react_execution",
        fidelity_before=attempts[0]["pattern_fidelity"],
        fidelity_after=attempts[-1]["pattern_fidelity"],
        description=f"{len(attempts)} iteration(s), {'success' if decision.action == 'finish_success' else 'exhausted'}",
        details={"iterations": len(attempts), "early_success": decision.metadata["early_success"]},
    )


def _as_text(output: object) -> str | None:
    if output is None:
        return None
    if isinstance(output, str):
        return output
    return json.dumps(output, default=str)


def _from_text(stored: str | None) -> object:
    if stored is None:
        return None
    try:
        return json.loads(stored)
    except ValueError:
        return stored


def _json_safe(output: object) -> object:
    """The output as the result carries it: itself when it is JSON, else its text (both within the limit)."""
    try:
        json.dumps(output)
    except (TypeError, ValueError):
        return str(output)
    return output


class Orchestrator:
    """Runs skills in this process against a store.

    :param memory: the store (a PatternMemory on WRE_DATABASE_URL when None).
    :param settings: wre's settings (read from the environment when None).
    :param evolve: run the evolver in-process when a run ends below threshold.
    """

    def __init__(
        self, memory: PatternMemory | None = None, settings: Settings | None = None, evolve: bool = True
    ) -> None:
        self.settings = settings or get_settings()
        self.memory = memory or PatternMemory(self.settings.store_url)
        self.runner = SkillRunner(self.memory, self.settings)
        self.evolve = evolve

    def execute_skill(
        self, skill_name: str, agent: str | None, input_context: dict[str, Any], force: bool = False
    ) -> dict[str, Any]:
        """The default entry point: with ReAct when ``WRE_REACT_MODE`` is on (the default), else one attempt."""
        if self.settings.react_mode:
            return self.execute_skill_with_reasoning(skill_name, agent, input_context, force=force)
        return self._run(skill_name, agent, input_context, force, max_iterations=1, threshold=None)

    def execute_skill_with_reasoning(
        self,
        skill_name: str,
        agent: str | None,
        input_context: dict[str, Any],
        max_iterations: int | None = None,
        fidelity_threshold: float | None = None,
        force: bool = False,
    ) -> dict[str, Any]:
        """Up to ``max_iterations`` attempts (clamped to 1..10), each told what the previous one failed.

        :param max_iterations: None means ``WRE_REACT_MAX_ITER`` (3).
        :param fidelity_threshold: the fidelity that ends the run early; None means ``WRE_REACT_FIDELITY``
            (0.90), as the seed defines it. Pass a skill's own threshold to judge as the Celery task does.
        """
        if max_iterations is None:
            max_iterations = self.settings.react_max_iter
        if fidelity_threshold is None:
            fidelity_threshold = self.settings.react_fidelity
        return self._run(skill_name, agent, input_context, force, max_iterations, fidelity_threshold)

    def _run(
        self,
        skill_name: str,
        agent: str | None,
        input_context: dict[str, Any],
        force: bool,
        max_iterations: int,
        threshold: float | None,
    ) -> dict[str, Any]:
        run_id = uuid.uuid4().hex
        request = self.runner.validate(
            {"skill_name": skill_name, "agent": agent, "input_context": input_context, "force": force}
        )
        version = self.runner.resolve(request, run_id)
        state = self.runner.start_state(request, version, max_iterations, threshold, react_mode=True)
        outcome = self.runner.attempt(request, version, state, run_id)
        while outcome.decision.action == "retry" and outcome.decision.next_state is not None:
            state = outcome.decision.next_state
            outcome = self.runner.attempt(request, version, state, run_id)
        if outcome.decision.evolve and self.evolve:
            evolve_skill(self.memory, self.settings, skill_name)
        return self.runner.result(request, version, run_id, outcome)
