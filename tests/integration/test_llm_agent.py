"""The ``llm`` agent and evolver through a real worker, against a fake OpenAI-compatible server.

Every test also checks, on the way out, that the API key reached no row of any table, no message that went
through Redis (task kwargs, retries, results, events: a MONITOR connection sees them all) and no line of the
worker's log.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import text

from db.memory import PatternMemory
from db.models import Base
from tests.fake_llm import FakeLlmServer, Recorded, Reply, error_reply
from tests.processes import Process, broker_app, service_env, start_worker, wait_until
from worker.client import enqueue_skill
from worker.registry import register_skill_text

API_KEY = "sk-test-SECRET-4f9c1d7e2b"
DEFAULT_MODEL = "fake-default"
RESULT_TIMEOUT = 30
GOOD_ANSWER = '{"summary": "The printer is jammed.", "priority": "high"}'
TICKET = {"ticket": "My printer jams on every page.", "customer": "ACME"}
PRIORITY_SCHEMA_CHECK = "must validate against the JSON Schema"
BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/]{24,}={0,2}")


def llm_skill(
    name: str,
    model: str | None = None,
    time_limit: float = 10,
    body: str = "Summarize the support ticket and rate its priority.",
) -> str:
    override = f"llm:\n  model: {model}\n  temperature: 0.1\n" if model else ""
    return f"""---
name: {name}
description: an llm test skill
agent: llm
evolver: llm
threshold: 0.9
time_limit: {time_limit}
steps:
  - id: summary
    description: one sentence on the customer's problem
    expect: {{key: summary}}
  - id: priority
    description: low, normal or high
    expect: {{json_schema: {{type: object, required: [priority], properties: {{priority: {{enum: [low, normal, high]}}}}}}}}
{override}---
{body}
"""


# -- the fake server, the worker, and the leak detectors


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLlmServer]:
    with FakeLlmServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def app(database_url: str, broker_url: str) -> Celery:
    return broker_app(database_url, broker_url)


@pytest.fixture(scope="module")
def worker(
    app: Celery,
    server: FakeLlmServer,
    database_url: str,
    broker_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Process]:
    env = service_env(
        database_url,
        broker_url,
        WRE_LLM_BASE_URL=server.base_url,
        WRE_LLM_API_KEY=API_KEY,
        WRE_LLM_MODEL=DEFAULT_MODEL,
        WRE_SCREEN_BUDGET_SHARE="10",  # a handful of runs pays for a screening
    )
    process = start_worker(app, env, tmp_path_factory.mktemp("llm-worker"))
    yield process
    process.stop()


class BrokerTap:
    """Every command the Redis server executes while the tap runs (Redis MONITOR), as text."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url)
        self._monitor = self._client.monitor().__enter__()  # sends MONITOR; stop() leaves it
        self.commands: list[str] = []
        self._thread = threading.Thread(target=self._listen, name="broker-tap", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        try:
            while True:
                self.commands.append(str(self._monitor.next_command()["command"]))
        except (redis.exceptions.ConnectionError, OSError, ValueError, AttributeError):
            return  # closed by stop()

    def stop(self) -> None:
        self._monitor.__exit__(None, None, None)
        self._thread.join(5)
        self._client.close()

    def texts(self) -> Iterator[str]:
        """Each command, and every base64 payload in it decoded (kombu base64-encodes message bodies)."""
        for command in list(self.commands):
            yield command
            for token in BASE64_TOKEN.findall(command):
                try:
                    yield base64.b64decode(token + "=" * (-len(token) % 4)).decode("utf-8", "replace")
                except (binascii.Error, ValueError):
                    continue


@pytest.fixture(scope="module")
def broker_tap(broker_url: str) -> Iterator[BrokerTap]:
    tap = BrokerTap(broker_url)
    yield tap
    tap.stop()


def dump_tables(store: PatternMemory) -> str:
    """Every row of every table, as Postgres prints it."""
    lines: list[str] = []
    with store.transaction() as conn:
        for table in Base.metadata.sorted_tables:
            rows = conn.execute(text(f'SELECT t::text FROM "{table.name}" AS t')).scalars()  # noqa: S608
            lines += [f"{table.name}: {row}" for row in rows]
    return "\n".join(lines)


@pytest.fixture
def skills(
    memory: PatternMemory, worker: Process, server: FakeLlmServer, broker_tap: BrokerTap
) -> Iterator[PatternMemory]:
    """The store, checked after the test: the key is in no row, no broker traffic and no worker log line."""
    yield memory
    dump = dump_tables(memory)
    assert "skill_outcomes" in dump  # the dump did read the rows it searches
    assert API_KEY not in dump
    broker_texts = list(broker_tap.texts())
    assert any(TICKET["ticket"] in line for line in broker_texts)  # the tap does read the task kwargs
    assert not [line for line in broker_texts if API_KEY in line]
    log = worker.log()  # type: ignore[attr-defined]
    assert "wre.execute_skill" in log and API_KEY not in log
    # ... and yet every request carried it, where it belongs.
    assert server.requests
    assert {request.headers.get("authorization") for request in server.requests} == {f"Bearer {API_KEY}"}


def run(app: Celery, skill: str, context: dict[str, Any] | None = None) -> dict[str, Any]:
    """One run through the worker; also checks the task's final kwargs (result_extended) hold no key."""
    result = enqueue_skill(skill, context or TICKET, app=app)
    outcome: dict[str, Any] = result.get(timeout=RESULT_TIMEOUT)
    assert API_KEY not in json.dumps([result.args, result.kwargs, outcome])
    return outcome


# -- runs


def test_a_passing_run(app: Celery, server: FakeLlmServer, skills: PatternMemory) -> None:
    register_skill_text(skills, llm_skill("llm_pass"))  # no llm: block, so WRE_LLM_MODEL
    server.script(DEFAULT_MODEL, Reply(GOOD_ANSWER))
    result = run(app, "llm_pass")
    assert result["success"] is True
    assert result["result"] == json.loads(GOOD_ANSWER)
    assert result["_react_metadata"]["iterations"] == 1
    [request] = server.requests_for(DEFAULT_MODEL)
    assert request.path == "/v1/chat/completions"
    assert request.body["response_format"] == {"type": "json_object"}
    assert "temperature" not in request.body
    system = request.message("system")
    assert "Summarize the support ticket" in system
    assert "Step `priority` (low, normal or high)" in system and PRIORITY_SCHEMA_CHECK in system
    assert json.loads(request.message("user")) == TICKET
    [row] = skills.run_outcomes(str(result["execution_id"]))
    assert row["token_usage"] == {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18}
    assert skills.get_skill_dashboard("llm_pass")["total_tokens"] == 18


def test_json_inside_a_fence_with_prose(app: Celery, server: FakeLlmServer, skills: PatternMemory) -> None:
    register_skill_text(skills, llm_skill("llm_fence", model="m-fence"))
    server.script("m-fence", Reply(f"Sure! Here is the answer:\n```json\n{GOOD_ANSWER}\n```\nAnything else?"))
    result = run(app, "llm_fence")
    assert result["success"] is True
    assert result["result"] == json.loads(GOOD_ANSWER)
    [request] = server.requests_for("m-fence")
    assert request.body["model"] == "m-fence" and request.body["temperature"] == 0.1


def test_a_server_without_response_format_is_asked_in_words(
    app: Celery, server: FakeLlmServer, skills: PatternMemory
) -> None:
    register_skill_text(skills, llm_skill("llm_nofmt", model="m-nofmt"))
    refusal = error_reply(400, "'response_format.type' must be 'json_schema' or 'text'")  # LM Studio's words
    server.script("m-nofmt", refusal, Reply(GOOD_ANSWER), Reply(GOOD_ANSWER))
    assert run(app, "llm_nofmt")["success"] is True
    assert run(app, "llm_nofmt")["_react_metadata"]["iterations"] == 1
    first, second, third = server.requests_for("m-nofmt")
    assert first.body["response_format"] == {"type": "json_object"}
    # Asked again without it at once, and not offered it again by this worker.
    assert "response_format" not in second.body and "response_format" not in third.body
    assert "one JSON object" in second.message("system")


def test_retries_carry_the_feedback(app: Celery, server: FakeLlmServer, skills: PatternMemory) -> None:
    register_skill_text(skills, llm_skill("llm_learns", model="m-learn"))
    server.script(
        "m-learn",
        error_reply(400, "this model's maximum context length is 8 tokens"),  # an attempt error
        Reply('{"summary": "The printer is jammed.", "priority": "whenever"}'),  # fails `priority`
        Reply(GOOD_ANSWER),
    )
    result = run(app, "llm_learns")
    assert result["success"] is True
    assert result["_react_metadata"]["iterations"] == 3
    first, second, third = server.requests_for("m-learn")
    assert json.loads(first.message("user")) == TICKET
    # The second attempt hears about the first one's error.
    feedback = second.message("user")
    assert "maximum context length is 8 tokens" in feedback and "pattern fidelity: 0.00" in feedback
    # The third hears the fidelity, the step that failed and that step's check.
    feedback = third.message("user")
    assert "pattern fidelity: 0.50" in feedback
    assert "failed at step `priority` (low, normal or high)" in feedback and PRIORITY_SCHEMA_CHECK in feedback
    # The input's JSON is the producer's context: the ReAct keys are feedback, not input.
    input_json = feedback.split("\n\n", 1)[0]
    assert json.loads(input_json) == TICKET
    rows = skills.run_outcomes(str(result["execution_id"]))
    assert [r["input_context"] for r in rows] == [TICKET] * 3


def test_rate_limit_is_an_infrastructure_retry(
    app: Celery, server: FakeLlmServer, skills: PatternMemory
) -> None:
    register_skill_text(skills, llm_skill("llm_429", model="m-429"))
    server.script("m-429", error_reply(429, "slow down", Retry_After="1"), Reply(GOOD_ANSWER))
    result = run(app, "llm_429")
    assert result["success"] is True
    assert result["_react_metadata"]["iterations"] == 1  # not two: the 429 spent no ReAct iteration
    first, second = server.requests_for("m-429")
    assert second.received_at - first.received_at >= 0.9  # Retry-After honoured
    assert len(skills.run_outcomes(str(result["execution_id"]))) == 1


def test_timeout_is_an_infrastructure_retry(
    app: Celery, server: FakeLlmServer, skills: PatternMemory
) -> None:
    register_skill_text(skills, llm_skill("llm_slow", model="m-slow", time_limit=1.5))
    server.script("m-slow", Reply(GOOD_ANSWER, delay=3.0), Reply(GOOD_ANSWER))
    result = run(app, "llm_slow")
    assert result["success"] is True
    assert result["_react_metadata"]["iterations"] == 1
    assert len(server.requests_for("m-slow")) == 2
    [row] = skills.run_outcomes(str(result["execution_id"]))
    assert row["success"] is True


def test_a_refused_key_ends_the_run_at_once(
    app: Celery, server: FakeLlmServer, skills: PatternMemory
) -> None:
    register_skill_text(skills, llm_skill("llm_badkey", model="m-401"))
    # Servers echo keys, partly masked: that must not reach the outcome either.
    server.script("m-401", error_reply(401, "Incorrect API key provided: sk-test-SEC*****4f9c"))
    result = run(app, "llm_badkey")
    assert result["success"] is False
    assert "LLM server refused the API key (401)" in str(result["error"])
    assert "sk-test" not in str(result["error"])
    meta = result["_react_metadata"]
    assert (meta["iterations"], meta["max_iterations"]) == (1, 3)
    assert result["evolution_triggered"] is False
    time.sleep(1.0)  # a retry, had one been scheduled, would have asked by now
    assert len(server.requests_for("m-401")) == 1
    [row] = skills.run_outcomes(str(result["execution_id"]))
    assert row["final"] is True and "refused the API key" in row["error"]
    assert skills.list_ab_tests(skill_name="llm_badkey") == []


# -- evolution


def test_the_evolvers_rewrite_is_screened_then_tested(
    app: Celery, server: FakeLlmServer, skills: PatternMemory
) -> None:
    register_skill_text(skills, llm_skill("llm_evolves", model="m-evolve"))
    parent_id, parent_content = skills.get_production("llm_evolves")
    new_instructions = "Summarize the ticket in one sentence.\n\nSet `priority` to exactly low, normal or high."
    refined = f"{new_instructions}\n\nKeep the summary short."

    def answer(request: Recorded) -> Reply:
        if request.message("system").startswith("You improve the instructions"):
            # Each candidate is sampled at its own temperature; only the coldest keeps the fix, and from a
            # parent that has the fix it adds a line (evolving from the refined one again adds nothing new).
            if request.body["temperature"] < 0.5:
                fixed = new_instructions in request.message("user")
                return Reply(f"```markdown\n{refined if fixed else new_instructions}\n```")
            return Reply(f"Summarize the ticket. (Sampled at {request.body['temperature']}.)")
        good, bad = '{"summary": "Printer jam.", "priority": "high"}', '{"summary": "Printer jam.", "priority": "P1"}'
        if "Keep the summary short." in request.message("system"):
            return Reply(good)
        if "exactly low, normal or high" in request.message("system"):
            # The first fix holds on even-numbered tickets only: the refined one, on every ticket, is better.
            number = re.search(r"#(\d+)", request.message("user"))
            return Reply(good if number is not None and int(number.group(1)) % 2 == 0 else bad)
        return Reply(bad)

    server.respond("m-evolve", answer)
    # The budget (10 replay calls per live run here) pays for the smallest screening, 90 calls, at run 9.
    results = [run(app, "llm_evolves", {"ticket": f"{TICKET['ticket']} #{n}"}) for n in range(9)]
    assert all(r["success"] is False and r["evolution_triggered"] is True for r in results)
    wait_until(
        lambda: skills.get_active_ab_test("llm_evolves") is not None, what="the evolved variation's test"
    )
    test = skills.running_test("llm_evolves")
    assert test is not None and test.control_version == parent_id
    variation = skills.get_variation(test.treatment_version)
    assert variation is not None
    assert variation.created_by == "evolver:llm" and variation.parent_version == parent_id
    assert results[-1]["execution_id"] in variation.learned_from
    # Only the instructions changed: the front matter is the parent's, byte for byte. Two rounds of search:
    # the first found a partial fix, the second, evolving from it, found the whole one.
    header = parent_content[: parent_content.index("---\n", 4) + 4]
    assert variation.variation_content == f"{header}\n{refined}\n"
    # The evolver's requests: one per candidate, each at its own temperature and seed; the prompt holds the
    # current content, the checks, the failed steps and their outputs.
    evolver_requests = [
        r for r in server.requests_for("m-evolve") if r.message("system").startswith("You improve")
    ]
    first_round, later = evolver_requests[:4], evolver_requests[4:]
    assert sorted(r.body["temperature"] for r in first_round) == [0.1, 0.7, 1.0, 1.2]
    assert len({r.body["seed"] for r in first_round}) == 4
    prompt = first_round[0].message("user")
    assert parent_content.strip() in prompt
    assert PRIORITY_SCHEMA_CHECK in prompt and "first failed step `priority`" in prompt
    assert '"priority": "P1"' in prompt
    assert "response_format" not in first_round[0].body
    # Later rounds ask for three new candidates beside the survivor, with the survivor as the parent.
    assert len(later) == 6 and all(new_instructions in r.message("user") for r in later)
    # The screening: the rewrite passed every replay the parent failed; the calls and tokens are counted.
    (screening,) = [e for e in skills.get_evolution_history("llm_evolves") if e.event_type == "candidates_screened"]
    details = screening.details
    assert details["chosen"] == variation.variation_id
    rounds = details["rounds"]
    assert len(rounds) == 2 and rounds[1]["from"] == rounds[0]["survivor"] != variation.variation_id
    assert details["refused"][-1].startswith("round 3: no new candidate to screen")
    # Successive halving in each round, within the budget; the fake server reports 18 tokens per call.
    assert details["calls"] == sum(item["calls"] for item in rounds) <= 90
    assert details["tokens"] == details["calls"] * 18
    chosen = next(c for c in details["candidates"] if c["variation_id"] == variation.variation_id)
    assert chosen["wins"] == chosen["replays"] == rounds[-1]["inputs"] and chosen["losses"] == 0
