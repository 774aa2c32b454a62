"""The llm agent's and evolver's pure parts: tolerant JSON, ``llm:`` overrides, prompts, redaction,
Retry-After, and how a configuration error ends a run (run_attempt's ``fatal``, ReAct's ``fatal``)."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from worker import react
from worker.agents import (
    AgentConfigurationError,
    AgentInfrastructureError,
    AttemptInfo,
    llm_client,
    run_attempt,
)
from worker.agents.llm import (
    LlmOptions,
    LlmOverrideError,
    build_messages,
    llm_options,
    needs_json,
    parse_json_output,
    time_budget,
)
from worker.agents.llm_client import (
    MAX_RETRY_AFTER_SECONDS,
    REDACTED,
    LlmResponseError,
    _raise_for_status,
    _usage,
    chat_completion,
    chat_url,
    redact,
    retry_after_seconds,
)
from worker.evolvers import EvolutionRefused
from worker.evolvers.base import Failure
from worker.evolvers.llm import evolution_prompt, proposed_instructions
from worker.settings import Settings
from worker.skills import Skill, load_skill_file, parse_skill

SETTINGS = Settings(llm_model="default-model", default_time_limit_seconds=60)
KEY = "sk-live-abcdef0123456789"


def skill(llm: str = "", steps: str | None = None, time_limit: str = "", body: str = "Do it.") -> Skill:
    steps = steps or (
        "  - id: answer\n    description: the answer\n    expect: {key: answer}\n"
        "  - id: tone\n    description: polite\n    expect: {regex: 'please'}\n"
    )
    return parse_skill(
        f"---\nname: s\nagent: llm\nevolver: llm\n{time_limit}steps:\n{steps}{llm}---\n{body}\n"
    )


# -- tolerant JSON


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"answer": 1}', {"answer": 1}),
        ('  \n{"answer": 1}\n', {"answer": 1}),
        ('```json\n{"answer": 1}\n```', {"answer": 1}),
        ('```\n{"answer": 1}\n```', {"answer": 1}),
        ('Sure! Here it is:\n```json\n{"answer": 1}\n```\nAnything else?', {"answer": 1}),
        ('```json\n{"answer": 1}', {"answer": 1}),  # an unclosed fence (the model ran out of tokens after it)
        ('```python\nprint(1)\n```\nand the answer: {"answer": 1}', {"answer": 1}),
        ('The answer is {"answer": {"nested": [1, 2]}} as requested.', {"answer": {"nested": [1, 2]}}),
        ('Note {not json} then {"answer": 1} then {"other": 2}', {"answer": 1}),
        ("[1, 2]", [1, 2]),
        ('```json\nprose {"answer": 1} prose\n```', {"answer": 1}),
    ],
)
def test_parse_json_output_finds_the_object(text: str, expected: object) -> None:
    assert parse_json_output(text) == expected


@pytest.mark.parametrize("text", ["no JSON here", "", "{broken", "```json\n{broken\n```"])
def test_parse_json_output_keeps_text_it_cannot_read(text: str) -> None:
    assert parse_json_output(text) == text


def test_json_mode_follows_the_checks() -> None:
    assert needs_json(skill())
    regex_only = "  - id: tone\n    description: polite\n    expect: {regex: 'please'}\n"
    assert not needs_json(skill(steps=regex_only))
    schema = "  - id: shape\n    description: an object\n    expect: {json_schema: {type: object}}\n"
    assert needs_json(skill(steps=schema))


# -- overrides


def test_options_default_to_the_settings() -> None:
    assert llm_options(skill(), SETTINGS) == LlmOptions("default-model")


def test_options_overridden_by_the_skill() -> None:
    block = "llm:\n  model: qwen2.5\n  temperature: 0\n  max_tokens: 256\n  timeout: 12.5\n"
    assert llm_options(skill(block), SETTINGS) == LlmOptions("qwen2.5", 0.0, 256, 12.5)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("llm: qwen\n", "llm must be a mapping"),
        (
            "llm:\n  modle: qwen\n",
            "unknown field\\(s\\) modle; allowed: model, temperature, max_tokens, timeout",
        ),
        ("llm:\n  api_key: sk-123\n", "llm.api_key is not allowed: the API key belongs in WRE_LLM_API_KEY"),
        ("llm:\n  model: ''\n", "llm.model must be a non-empty string"),
        ("llm:\n  model: 7\n", "llm.model must be a non-empty string"),
        ("llm:\n  temperature: 3\n", "llm.temperature must be within 0..2, got 3"),
        ("llm:\n  temperature: hot\n", "llm.temperature must be a number"),
        ("llm:\n  temperature: true\n", "llm.temperature must be a number"),
        ("llm:\n  max_tokens: 0\n", "llm.max_tokens must be a positive integer"),
        ("llm:\n  max_tokens: 1.5\n", "llm.max_tokens must be a positive integer"),
        ("llm:\n  timeout: -1\n", "llm.timeout must be a positive number of seconds"),
    ],
)
def test_bad_overrides_are_refused_clearly(block: str, message: str) -> None:
    with pytest.raises(LlmOverrideError, match=message) as caught:
        llm_options(skill(block), SETTINGS)
    assert "skill 's'" in str(caught.value)
    # A configuration error: the run ends at once instead of retrying what cannot work.
    assert isinstance(caught.value, AgentConfigurationError)


def test_time_budget_leaves_the_runner_a_margin() -> None:
    assert time_budget(skill(time_limit="time_limit: 2\n"), SETTINGS, LlmOptions("m")) == pytest.approx(1.8)
    assert time_budget(skill(), SETTINGS, LlmOptions("m")) == pytest.approx(59.0)  # the default limit
    assert time_budget(skill(), SETTINGS, LlmOptions("m", timeout=5)) == 5


# -- the messages


def test_messages_carry_the_contract_and_the_input() -> None:
    system, user = build_messages(skill(body="Answer politely."), {"question": "why?"}, json_mode=True)
    assert system["role"] == "system" and user["role"] == "user"
    assert system["content"].startswith("Answer politely.")
    assert (
        "Step `answer` (the answer): the output must be a JSON object with a non-empty `answer`"
        in (system["content"])
    )
    assert "Step `tone` (polite): the output must match the regular expression `please`" in system["content"]
    assert "one JSON object" in system["content"]
    assert json.loads(user["content"]) == {"question": "why?"}


def test_retry_messages_add_the_feedback_not_the_react_keys() -> None:
    state = react.start(3, 0.9, True, variation_id="v")
    failed = react.AttemptSummary(1, 0.5, False, "tone", None)
    context = react.retry_context({"question": "why?"}, react.next_step(state, failed).next_state)  # type: ignore[arg-type]
    _, user = build_messages(skill(), context, json_mode=True)
    data, feedback = user["content"].split("\n\n", 1)
    assert json.loads(data) == {"question": "why?"}
    assert "pattern fidelity: 0.50" in feedback
    assert "failed at step `tone` (polite): the output must match the regular expression `please`" in feedback
    _, user = build_messages(
        skill(),
        {
            "_react_retry": True,
            "_previous_attempt": {
                "fidelity": 0.0,
                "failed_at_step": "answer",
                "error": "LlmResponseError: too long",
            },
        },
        json_mode=True,
    )
    assert "error: LlmResponseError: too long" in user["content"]
    assert "failed at step `answer` (the answer)" in user["content"]


# -- the client's pure parts


def test_redact_removes_the_key_and_echoed_fragments() -> None:
    assert redact(f"Bearer {KEY} refused", KEY) == f"Bearer {REDACTED} refused"
    assert redact("Incorrect API key provided: sk-live-abc*****6789.", KEY) == (
        f"Incorrect API key provided: {REDACTED}"  # the whole token goes, its full stop too
    )
    assert redact("nothing secret here, sk-other", KEY) == "nothing secret here, sk-other"
    assert redact(f"text {KEY}", "") == f"text {KEY}"


def test_retry_after() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("1") == 1.0
    assert retry_after_seconds(" 2.5 ") == 2.5
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert retry_after_seconds("86400") == MAX_RETRY_AFTER_SECONDS
    for garbage in (None, "", "soon", "nan", "-5x"):
        assert retry_after_seconds(garbage) is None
    assert retry_after_seconds("-5") == 0.0


def test_usage_and_url() -> None:
    assert _usage({"usage": {"prompt_tokens": 3, "completion_tokens": 4}}) == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
    }
    assert _usage({"usage": None}) is None and _usage({}) is None
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"


# -- the evolver's reading of a reply


def test_the_evolver_takes_plain_or_fenced_instructions() -> None:
    parent = skill()
    assert proposed_instructions(parent, "  Be polite, please.\n") == "Be polite, please."
    assert proposed_instructions(parent, "```markdown\n# Title\n\nBe polite.\n```") == "# Title\n\nBe polite."


def test_the_evolver_takes_a_whole_file_only_with_the_same_steps() -> None:
    parent = skill()
    same_steps = parent.with_instructions("New body.")
    assert proposed_instructions(parent, same_steps) == "New body."
    other_steps = same_steps.replace("expect: {regex: 'please'}", "expect: {regex: 'thanks'}")
    with pytest.raises(EvolutionRefused, match="other steps"):
        proposed_instructions(parent, other_steps)
    with pytest.raises(EvolutionRefused, match="malformed skill file"):
        proposed_instructions(parent, "---\nname: [\n---\nbody")
    for empty in ("", "   ", "```\n\n```"):
        with pytest.raises(EvolutionRefused, match="empty"):
            proposed_instructions(parent, empty)


def test_the_evolution_prompt_shows_failures_trimmed() -> None:
    parent = skill()
    failures = [
        Failure("r1", 0.5, "tone", None, '{"answer": "no"}' + "x" * 5000),
        Failure("r2", 0.0, "answer", "LlmResponseError: refused", ""),
    ]
    prompt = evolution_prompt(parent, failures)
    assert parent.content.strip() in prompt
    assert "first failed step `tone`: 1 run(s)" in prompt and "first failed step `answer`: 1 run(s)" in prompt
    assert "Error: LlmResponseError: refused" in prompt
    assert '{"answer": "no"}' in prompt and "x" * 700 not in prompt
    # the worst run first
    assert prompt.index("fidelity 0.00") < prompt.index("fidelity 0.50")


# -- a configuration error ends the run: no retries, no evolution


class RefusedKey:
    name = "refused"

    def run(self, skill: Skill, context: dict[str, Any], attempt: AttemptInfo) -> object:
        raise AgentConfigurationError("LLM server refused the API key (401)")


def test_run_attempt_marks_configuration_errors_fatal() -> None:
    result = run_attempt(RefusedKey(), skill(), {}, AttemptInfo("r", 1, "v"), time_limit=5)
    assert result.fatal and result.output is None
    assert result.error == "AgentConfigurationError: LLM server refused the API key (401)"


def test_a_fatal_attempt_finishes_the_run_without_evolving() -> None:
    state = react.start(3, 0.9, True, variation_id="v")
    failed = react.AttemptSummary(1, 0.0, False, "answer", "AgentConfigurationError: refused")
    decision = react.next_step(state, failed, fatal=True)
    assert decision.action == "finish_exhausted" and not decision.evolve and decision.next_state is None
    assert decision.metadata["iterations"] == 1 and decision.metadata["max_iterations"] == 3
    assert react.next_step(state, failed).action == "retry"  # the same failure, not fatal: retried
    succeeded = react.AttemptSummary(1, 1.0, True, None, None)
    assert react.next_step(state, succeeded, fatal=True).action == "finish_success"


def test_the_example_llm_skill_is_valid() -> None:
    example = load_skill_file(Path(__file__).resolve().parents[2] / "skills" / "llm_summarize.md")
    assert (example.agent, example.evolver) == ("llm", "llm")
    assert llm_options(example, SETTINGS) == LlmOptions("llama3.1", 0.2, 400, 45.0)
    assert needs_json(example)


# -- who is told to fix what: status codes and transport errors


@pytest.mark.parametrize(
    ("status", "headers", "error", "retry_after"),
    [
        (429, {"Retry-After": "3"}, AgentInfrastructureError, 3.0),
        (503, {"Retry-After": "2"}, AgentInfrastructureError, 2.0),
        (500, {}, AgentInfrastructureError, None),
        (408, {}, AgentInfrastructureError, None),
        (401, {}, AgentConfigurationError, None),
        (403, {}, AgentConfigurationError, None),
        (404, {}, AgentConfigurationError, None),
        (400, {}, LlmResponseError, None),
        (413, {}, LlmResponseError, None),
    ],
)
def test_statuses_are_sorted_by_who_can_fix_them(
    status: int, headers: dict[str, str], error: type[Exception], retry_after: float | None
) -> None:
    response = httpx.Response(status, headers=headers, json={"error": {"message": f"echo {KEY}"}})
    with pytest.raises(error) as caught:
        _raise_for_status(response, "http://h/v1/chat/completions", "m")
    assert f"echo {KEY}" in str(caught.value)  # the server's words; chat_completion redacts them (below)
    assert getattr(caught.value, "retry_after", None) == retry_after


def test_transport_failures_are_infrastructure_or_configuration() -> None:
    deadline = time.monotonic() + 5
    messages = [{"role": "user", "content": "hi"}]
    # Port 1 on the loopback: nothing listens, the connection is refused at once.
    refused = Settings(llm_base_url="http://127.0.0.1:1/v1", llm_api_key=SecretStr(KEY))
    with pytest.raises(
        AgentInfrastructureError, match="cannot reach the LLM server at http://127.0.0.1:1/v1"
    ):
        chat_completion(refused, messages, model="m", deadline=deadline)
    # Refused when a process starts; the client still says so if handed one anyway.
    with pytest.raises(ValueError, match="WRE_LLM_BASE_URL=127.0.0.1:11434/v1 is not valid"):
        Settings(llm_base_url="127.0.0.1:11434/v1")
    schemeless = Settings.model_construct(llm_base_url="127.0.0.1:11434/v1")
    with pytest.raises(AgentConfigurationError, match="not an http\\(s\\) URL"):
        chat_completion(schemeless, messages, model="m", deadline=deadline)
    with pytest.raises(AgentInfrastructureError, match="no time left"):
        chat_completion(refused, messages, model="m", deadline=time.monotonic() - 1)


def test_chat_completion_redacts_what_the_server_echoes(monkeypatch: pytest.MonkeyPatch) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"] == f"Bearer {KEY}"
        return httpx.Response(401, json={"error": {"message": f"bad key {KEY}"}})

    monkeypatch.setattr(llm_client, "_CLIENT", httpx.Client(transport=httpx.MockTransport(handler)))
    settings = Settings(llm_base_url="http://fake/v1", llm_api_key=SecretStr(KEY))
    with pytest.raises(AgentConfigurationError) as caught:
        chat_completion(settings, [], model="m", deadline=time.monotonic() + 5)
    assert KEY not in str(caught.value) and "refused the API key (401)" in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__context__ is None  # no unredacted original
