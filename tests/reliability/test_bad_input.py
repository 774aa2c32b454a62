"""Bad input, as a new user (or a careless producer, or a broken evolver) would try it.

Each gets a clear error, nothing is half-written, and the worker keeps serving. Already covered, and not
repeated here:
- tests/integration/test_worker_runs.py: unknown skill, unknown agent, a context that is a list or a string,
  a 300 kB context, ``max_iterations=1000`` as a task kwarg, positional args, a forbidden entrypoint stored
  behind wre's back, the worker surviving bad input;
- tests/integration/test_cli.py: a malformed skill file (threshold 1.5) is one line naming path, line and
  field, with exit status 1 and nothing written; ``wre run`` with a context that is not a JSON object;
- tests/unit/test_skills.py: every malformed skill file, with its line and field.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import select

from db.memory import PatternMemory
from db.models import OUTCOMES, Base
from db.screening import fleet_screening_spent
from tests.integration.skills_for_tests import python_skill
from tests.processes import REPO, Process, service_env, wait_until
from tests.reliability.checks import report, row_counts
from tests.reliability.conftest import SECRET
from tests.reliability.servers import PrivateRedis
from worker import evolvers
from worker.client import enqueue_skill
from worker.evolution import evolve_skill
from worker.registry import register_skill_text
from worker.runner import Orchestrator
from worker.settings import Settings, SettingsError

RESULT_TIMEOUT = 60
TEN_MB = 10 * 1024 * 1024


@pytest.fixture
def app(serving_app: Celery) -> Celery:
    return serving_app


@pytest.fixture
def broker(serving_broker: PrivateRedis) -> PrivateRedis:
    return serving_broker


@pytest.fixture
def worker(serving_worker: Process) -> Process:
    return serving_worker


@pytest.fixture
def skills(memory: PatternMemory) -> PatternMemory:
    register_skill_text(memory, python_skill("echo", "echo"))
    # A skill that declares its input: a context without `text` is bad input, refused before any attempt.
    register_skill_text(memory, python_skill("needs_text", "echo").replace(
        "evolver: hints\n", "evolver: hints\ninput: {type: object, required: [text]}\n"))
    return memory


BAD_KWARGS: list[tuple[str, dict[str, Any], str]] = [
    ("10 MB context", {"skill_name": "echo", "input_context": {"blob": "x" * TEN_MB}}, "over the limit"),
    ("NaN in the context", {"skill_name": "echo", "input_context": {"score": float("nan")}}, "not JSON"),
    ("lone surrogate", {"skill_name": "echo", "input_context": {"text": "half \ud800"}}, "not JSON"),
    ("NUL in the context", {"skill_name": "echo", "input_context": {"text": "a\x00b"}}, "NUL"),
    ("skill name not a string", {"skill_name": 123, "input_context": {}}, "skill_name must be"),
    ("force not a bool", {"skill_name": "echo", "input_context": {}, "force": "yes"}, "force must be"),
    ("assignment key too long", {"skill_name": "echo", "input_context": {}, "assignment_key": "k" * 300}, "assignment_key"),
    ("context fails the input schema", {"skill_name": "needs_text", "input_context": {}}, "input schema"),
    ("forged ReAct state", {"skill_name": "echo", "input_context": {}, "react": {"attempt": 99}}, "unknown argument 'react'"),
    ("forged infra-retry count", {"skill_name": "echo", "input_context": {}, "_infra_retries": "x"}, "unknown argument '_infra_retries'"),
    ("skill name too long", {"skill_name": "s" * 129, "input_context": {}}, "at most 128"),
]  # fmt: skip


def test_bad_kwargs_fail_clearly_and_write_nothing(
    app: Celery, worker: Process, broker: PrivateRedis, skills: PatternMemory
) -> None:
    pid = worker.pid
    before = row_counts(skills)
    log_before = len(worker.log())
    figures: dict[str, Any] = {}
    for name, kwargs, message in BAD_KWARGS:
        started = time.monotonic()
        result = app.send_task("wre.execute_skill", kwargs=kwargs)
        with pytest.raises(Exception, match=message):
            outcome = result.get(timeout=RESULT_TIMEOUT)
            pytest.fail(f"{name}: accepted ({str(outcome)[:200]})")
        assert result.state == "FAILURE", name
        figures[name] = round(time.monotonic() - started, 2)
        if name == "10 MB context":
            # What the refused run leaves in Redis: a one-line FAILURE result, not its kwargs.
            stored = broker.client().strlen(f"celery-task-meta-{result.id}")
            assert stored < 2000
            figures["10 MB context: result bytes in Redis"] = stored
    # Nothing half-written: no row in any table, no counter moved.
    assert row_counts(skills) == before
    # Nothing stuck in the broker: every bad message is acked (just after its result is stored), none
    # waits for redelivery.
    wait_until(
        lambda: broker.client().llen("skills") == 0 and broker.client().hlen("unacked") == 0,
        timeout=10,
        what="every message to be acked",
    )
    # The worker logged one line per refusal, not the 10 MB it was sent.
    assert len(worker.log()) - log_before < 100_000
    # And it keeps serving, in the same process.
    assert (
        enqueue_skill("echo", {"text": "still here"}, app=app).get(timeout=RESULT_TIMEOUT)["success"] is True
    )
    assert worker.popen.poll() is None and worker.pid == pid
    report("bad_kwargs_seconds_to_refusal", **figures)


def test_output_and_errors_postgres_cannot_store_are_recorded(
    app: Celery, worker: Process, skills: PatternMemory
) -> None:
    """An agent's output or error with a NUL character or a lone surrogate is recorded (the characters
    replaced by U+FFFD), not lost with the run."""
    text_skill = (
        python_skill("raw", "unstorable_text")
        .replace("expect: {json_schema: {type: object}}", "expect: {regex: before}")
        .replace("expect: {key: answer}", "expect: {regex: after}")
    )
    register_skill_text(skills, text_skill)
    register_skill_text(skills, python_skill("erring", "unstorable_error"))
    runs = [
        enqueue_skill("raw", {"kind": "nul"}, app=app),
        enqueue_skill("raw", {"kind": "surrogate"}, app=app),
        enqueue_skill("erring", {}, app=app),
    ]
    finals = [run.get(timeout=RESULT_TIMEOUT) for run in runs]
    assert [final["success"] for final in finals] == [True, True, False]
    with skills.transaction() as conn:
        rows = {
            row.run_id: row
            for row in conn.execute(select(OUTCOMES).where(OUTCOMES.c.run_id.in_([r.id for r in runs])))
        }
    assert rows[runs[0].id].output == "before \ufffd after"
    assert rows[runs[1].id].output == "before \ufffd after"
    assert "bad \ufffd byte, lone \ufffd half" in rows[runs[2].id].error


def test_react_max_iter_1000_is_refused_as_a_setting_and_clamped_as_an_argument(
    skills: PatternMemory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WRE_REACT_MAX_ITER", "1000")
    with pytest.raises(SettingsError, match=r"WRE_REACT_MAX_ITER=1000 is out of range: must be within \[1, 10\]"):
        Settings(database_url=database_url)
    monkeypatch.delenv("WRE_REACT_MAX_ITER")
    register_skill_text(skills, python_skill("hopeless", "always_fails"))
    # The seed's argument keeps its clamp: a caller's max_iterations=1000 runs the ceiling, 10.
    result = Orchestrator(skills, Settings(database_url=database_url), evolve=False).execute_skill_with_reasoning(
        "hopeless", None, {}, max_iterations=1000
    )
    assert result["_react_metadata"]["iterations"] == result["_react_metadata"]["max_iterations"] == 10
    assert len(skills.run_outcomes(str(result["execution_id"]))) == 10


class GarbageEvolver:
    """An evolver that returns whatever it was built with (or raises it)."""

    name = "hints"

    def __init__(self, proposal: object) -> None:
        self.proposal = proposal

    def propose(self, skill: Any, failures: Any, seed: str, candidate: int = 0) -> Any:
        return self.proposal


def _garbage(base: str) -> list[tuple[str, object]]:
    return [
        ("None", None),
        ("a number", 42),
        ("empty", ""),
        ("not a skill file", "Sure! Here is a better version of your skill."),
        ("the parent unchanged", base),
        ("another skill's name", base.replace("name: evolving", "name: someone_else")),
        ("changed checks", base.replace("expect: {key: answer}", "expect: {key: anything}")),
        ("changed agent settings", base.replace("threshold: 0.9", "threshold: 0.1")),
        ("a NUL character", base.replace("Answer.", "Answer.\x00")),
        ("300 kB", base + "x" * 300_000),
    ]


@pytest.mark.parametrize("case", range(10))
def test_an_evolver_returning_garbage_is_refused(
    case: int, skills: PatternMemory, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A python skill with a parameter (something an evolver can change), six failed runs to screen on, and a
    # budget that pays for it: the evolver is asked, and what it returns is refused before any replay.
    base = python_skill(
        "evolving", "tunable", params="params:\n  mode: {value: strict, choices: [strict, lenient]}\n"
    )
    name, proposal = _garbage(base)[case]
    production = register_skill_text(skills, base).variation_id
    for run in range(10):  # 10 runs x WRE_SCREEN_BUDGET_SHARE 10 pay for the smallest screening (90 calls)
        skills.store_outcome(
            run_id=f"failed-{run}",
            attempt=1,
            skill_name="evolving",
            variation_id=production,
            agent="python",
            success=False,
            execution_success=True,
            pattern_fidelity=0.5,
            failed_at_step="answer",
            input_context={"run": run},
            final=True,
        )
    monkeypatch.setitem(evolvers._FACTORIES, "hints", lambda: GarbageEvolver(proposal))
    before = row_counts(skills)
    settings = Settings(database_url=database_url, evolve_cooldown_seconds=0, screen_budget_share=10)
    outcome = evolve_skill(skills, settings, "evolving")
    assert outcome["status"] == "refused", (name, outcome)
    events = [event.event_type for event in skills.get_evolution_history("evolving")]
    assert events == ["evolution_started", "evolution_refused"], name
    after = row_counts(skills)
    # No variation, no test: only the two learning events. The screening's reservation was given back (the
    # counter's rows may differ, its sum does not).
    assert fleet_screening_spent(skills) == (0, 10)
    assert {**after, "telemetry_counters": 0} == {
        **before, "learning_events": before["learning_events"] + 2, "telemetry_counters": 0
    }
    assert skills.get_active_ab_test("evolving") is None


def _wre(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wre", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_skill_files_a_new_user_gets_wrong_are_one_line_each(
    skills: PatternMemory, database_url: str, tmp_path: Path
) -> None:
    base = python_skill("newcomer", "echo")
    files = {
        "outside_allow_list.md": (
            base.replace("tests.fixtures.entrypoints:echo", "os:system"),
            ":5: entrypoint:",
        ),
        "unknown_agent.md": (base.replace("agent: python", "agent: gpt-9"), "gpt-9"),
        "nul.md": (base.replace("Answer.", "Answer.\x00"), ":17: instructions: character U+0000"),
    }
    env = service_env(database_url, "redis://127.0.0.1:1/0", COLUMNS="300")
    before = row_counts(skills)
    for filename, (text, words) in files.items():
        path = tmp_path / filename
        path.write_text(text)
        done = _wre(env, "skill", "add", str(path))
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert done.returncode == 1, (filename, done.stdout, done.stderr)
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert words in lines[0], (filename, lines[0])
    assert row_counts(skills) == before


def test_the_secret_is_nowhere(
    app: Celery, worker: Process, broker: PrivateRedis, skills: PatternMemory
) -> None:
    """The worker above runs with WRE_LLM_API_KEY set: after every test of this module, the key is in none of
    its log, the broker's keys (messages, results with their kwargs) or any row of any table."""
    assert enqueue_skill("echo", {"text": "hi"}, app=app).get(timeout=RESULT_TIMEOUT)["success"] is True
    assert SECRET not in worker.log()
    client = broker.client()
    for key in client.scan_iter():
        kind = client.type(key)
        values: list[bytes | str] = []
        if kind == b"string":
            values = [client.get(key) or b""]
        elif kind == b"list":
            values = list(client.lrange(key, 0, -1))
        elif kind == b"hash":
            values = list(client.hvals(key))
        stored = b"".join(value.encode() if isinstance(value, str) else value for value in values)
        assert SECRET.encode() not in stored, key
    with skills.transaction() as conn:
        for table in Base.metadata.sorted_tables:
            for row in conn.execute(select(table)):
                assert SECRET not in str(tuple(row)), table.name
    assert os.environ.get("WRE_LLM_API_KEY") != SECRET  # the test process never had it
