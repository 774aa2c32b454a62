"""The ``llm`` agent: runs a skill with a model behind an OpenAI-compatible chat-completions API.

The request: a system message with the variation's instructions and the steps its answer is checked against
(the contract), and a user message with the input context as JSON. On a ReAct retry the user message also
says what the previous attempt got wrong: its fidelity, the step it failed with that step's check, and the
error. When a step checks a key or a JSON Schema the model is asked for a JSON object (``response_format``
where the server supports it) and the answer is read tolerantly (:func:`parse_json_output`).

Settings: ``WRE_LLM_BASE_URL``, ``WRE_LLM_MODEL``, ``WRE_LLM_API_KEY``; a skill may override the model and
the sampling in its front matter::

    llm:
      model: qwen2.5:7b-instruct
      temperature: 0.2
      max_tokens: 512
      timeout: 30          # seconds for one request, within the skill's time_limit

How failures count (see :mod:`worker.agents.llm_client`): timeouts, connection errors, 429 and 5xx are
infrastructure retries; a refused key or an unknown model ends the run at once; the rest are failed attempts.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from worker.react import PREVIOUS_ATTEMPT, RETRY_FLAG
from worker.settings import Settings, get_settings
from worker.skills import Skill, StepCheck

from .base import AgentConfigurationError, AgentReply, AttemptInfo
from .isolation import trim
from .llm_client import chat_completion

LLM_FIELD = "llm"
OVERRIDE_FIELDS = ("model", "temperature", "max_tokens", "timeout")
# Front-matter keys refused with a pointer to the setting: a skill file is stored in every variation row.
SECRET_FIELDS = frozenset({"api_key", "key", "token", "authorization"})
TEMPERATURE_RANGE = (0.0, 2.0)
JSON_CHECK_KINDS = frozenset({"key", "json_schema"})
# Our own request timeout must fire before the runner's time limit, so that a slow server is reported as an
# infrastructure error (retried without spending a ReAct iteration) and not as the attempt's "timed out".
TIME_LIMIT_MARGIN_FRACTION = 0.1
MAX_TIME_LIMIT_MARGIN_SECONDS = 1.0
FENCE = "```"
JSON_INSTRUCTION = "Answer with one JSON object and nothing else: no prose, no Markdown fence."
NO_RESULT = object()
MAX_QUOTE_CHARS = 160


class LlmOverrideError(AgentConfigurationError, ValueError):
    """A skill's ``llm:`` block is malformed: no attempt can run until the file is fixed."""


@dataclass(frozen=True)
class LlmOptions:
    """The model and sampling of one skill: the settings, overridden by the skill's ``llm:`` block.

    :param model: the model's name.
    :param temperature: sampling temperature (0..2), or None for the server's default.
    :param max_tokens: most tokens to generate, or None for the server's default.
    :param timeout: seconds one request may take, or None for "as long as the time limit allows".
    """

    model: str
    temperature: float | None = None
    max_tokens: int | None = None
    timeout: float | None = None


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise LlmOverrideError(f"{where} must be a number, got {value!r}")
    return float(value)


def llm_options(skill: Skill, settings: Settings) -> LlmOptions:
    """The skill's model and sampling: ``WRE_LLM_MODEL`` unless its ``llm:`` block overrides it.

    :param skill: the variation (its ``extra['llm']``, if any, is checked).
    :raises LlmOverrideError: the block is not a mapping, names an unknown or secret field, or a value is
        out of range (model: a non-empty string; temperature: 0..2; max_tokens: a positive integer;
        timeout: a positive number of seconds).
    """
    raw = skill.extra.get(LLM_FIELD)
    prefix = f"skill {skill.name!r}: {LLM_FIELD}"
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise LlmOverrideError(f"{prefix} must be a mapping of {', '.join(OVERRIDE_FIELDS)}, got {raw!r}")
    secret = sorted(str(name) for name in raw if str(name).lower() in SECRET_FIELDS)
    if secret:
        raise LlmOverrideError(
            f"{prefix}.{secret[0]} is not allowed: the API key belongs in WRE_LLM_API_KEY, never in a skill file"
        )
    unknown = sorted(str(name) for name in raw if name not in OVERRIDE_FIELDS)
    if unknown:
        raise LlmOverrideError(
            f"{prefix}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(OVERRIDE_FIELDS)}"
        )
    model = raw.get("model", settings.llm_model)
    if not isinstance(model, str) or not model.strip():
        raise LlmOverrideError(f"{prefix}.model must be a non-empty string, got {model!r}")
    temperature = raw.get("temperature")
    if temperature is not None:
        temperature = _number(temperature, f"{prefix}.temperature")
        low, high = TEMPERATURE_RANGE
        if not low <= temperature <= high:
            raise LlmOverrideError(
                f"{prefix}.temperature must be within {low:g}..{high:g}, got {temperature:g}"
            )
    max_tokens = raw.get("max_tokens")
    if max_tokens is not None and (
        isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
    ):
        raise LlmOverrideError(f"{prefix}.max_tokens must be a positive integer, got {max_tokens!r}")
    timeout = raw.get("timeout")
    if timeout is not None:
        timeout = _number(timeout, f"{prefix}.timeout")
        if not 0 < timeout < math.inf:
            raise LlmOverrideError(f"{prefix}.timeout must be a positive number of seconds, got {timeout:g}")
    return LlmOptions(model.strip(), temperature, max_tokens, timeout)


def needs_json(skill: Skill) -> bool:
    """Whether the skill's checks read a JSON value (a ``key`` or ``json_schema`` step)."""
    return any(step.kind in JSON_CHECK_KINDS for step in skill.steps)


def _first_object(text: str) -> object:
    """The first JSON object in ``text`` (prose around it is ignored), or :data:`NO_RESULT`."""
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            start = text.find("{", start + 1)
            continue
        return value
    return NO_RESULT


def _fenced_blocks(text: str) -> list[str]:
    """The insides of the Markdown code fences in ``text``, in order (an unclosed fence runs to the end)."""
    blocks: list[str] = []
    position = 0
    while (opening := text.find(FENCE, position)) != -1:
        body_start = text.find("\n", opening)
        if body_start == -1:
            break
        closing = text.find(FENCE, body_start)
        blocks.append(text[body_start + 1 : closing if closing != -1 else len(text)])
        if closing == -1:
            break
        position = closing + len(FENCE)
    return blocks


def parse_json_output(text: str) -> object:
    """Read a model's answer as JSON, tolerantly.

    In order: the whole answer as JSON; the first fenced code block that is JSON (```json or a bare fence);
    the first JSON object anywhere in the text (leading or trailing prose). If none of these parses, the
    text itself, so that the checks fail on it and the output is kept for the evolver to learn from.

    :param text: the assistant message's text.
    """
    stripped = text.strip()
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    for block in _fenced_blocks(stripped):
        try:
            return json.loads(block)
        except ValueError:
            found = _first_object(block)
            if found is not NO_RESULT:
                return found
    found = _first_object(stripped)
    return text if found is NO_RESULT else found


def quote(text: str) -> str:
    """Text as an inline-code quote: one line, trimmed, no backticks to break out of the quote."""
    flat = " ".join(text.split()).replace("`", "'")
    return f"`{trim(flat, MAX_QUOTE_CHARS)}`"


def describe_check(step: StepCheck) -> str:
    """What a step's check requires, in words."""
    argument = step.argument
    if step.kind == "key":
        return f"the output must be a JSON object with a non-empty {quote(str(argument))}"
    if step.kind == "regex":
        return f"the output must match the regular expression {quote(str(argument))}"
    if step.kind == "json_schema":
        return (
            f"the output must validate against the JSON Schema {quote(json.dumps(argument, sort_keys=True))}"
        )
    if step.kind == "equals":
        return f"the output must equal {quote(json.dumps(argument))}"
    return f"the custom check {quote(str(argument))} must accept the output"


def system_message(skill: Skill, json_mode: bool) -> str:
    """The variation's instructions and the steps its answer is checked against.

    :param json_mode: whether the answer must be a JSON object.
    """
    lines = [skill.instructions or f"Perform the skill {skill.name!r}.", ""]
    if skill.steps:
        lines += ["## How your answer is checked", ""]
        for step in skill.steps:
            about = f" ({step.description})" if step.description else ""
            lines.append(f"- Step `{step.id}`{about}: {describe_check(step)}.")
        lines.append("")
    lines.append("The user message is the input, as JSON.")
    if json_mode:
        lines.append(JSON_INSTRUCTION)
    return "\n".join(lines).strip()


def feedback(skill: Skill, previous: Mapping[str, Any]) -> str:
    """What the next attempt is told about the previous one: fidelity, failed step with its check, error.

    :param skill: the variation (to look the failed step up).
    :param previous: ``{fidelity, failed_at_step, error}`` from the ReAct retry context.
    """
    lines = ["Your previous answer to this input failed its checks. Answer again, fixing this:"]
    fidelity = previous.get("fidelity")
    if isinstance(fidelity, int | float) and not isinstance(fidelity, bool):
        lines.append(f"- pattern fidelity: {fidelity:.2f} (the share of the checks it passed)")
    failed = previous.get("failed_at_step")
    step = next((step for step in skill.steps if step.id == failed), None)
    if step is not None:
        about = f" ({step.description})" if step.description else ""
        lines.append(f"- it failed at step `{step.id}`{about}: {describe_check(step)}")
    elif failed:
        lines.append(f"- it failed at step `{failed}`")
    error = previous.get("error")
    if error:
        lines.append(f"- error: {error}")
    return "\n".join(lines)


def build_messages(skill: Skill, context: Mapping[str, Any], json_mode: bool) -> list[dict[str, str]]:
    """The chat messages of one attempt.

    :param context: the attempt's context; the ReAct keys become feedback, not part of the input's JSON.
    :param json_mode: whether the answer must be a JSON object.
    """
    payload = {key: value for key, value in context.items() if key not in (RETRY_FLAG, PREVIOUS_ATTEMPT)}
    user = json.dumps(payload, ensure_ascii=False, indent=2)
    previous = context.get(PREVIOUS_ATTEMPT)
    # One user message, not two: some chat templates (Mistral's, Llama 2's) refuse two user turns in a row.
    if context.get(RETRY_FLAG) and isinstance(previous, Mapping):
        user = f"{user}\n\n{feedback(skill, previous)}"
    return [
        {"role": "system", "content": system_message(skill, json_mode)},
        {"role": "user", "content": user},
    ]


def time_budget(skill: Skill, settings: Settings, options: LlmOptions) -> float:
    """Seconds the attempt's requests may take: within the time limit, with a margin so ours fires first.

    :param skill: the variation (its ``time_limit``; ``WRE_DEFAULT_TIME_LIMIT_SECONDS`` when None).
    :param options: the skill's ``llm.timeout``, if any.
    """
    limit = skill.time_limit or settings.default_time_limit_seconds
    budget = limit - min(MAX_TIME_LIMIT_MARGIN_SECONDS, limit * TIME_LIMIT_MARGIN_FRACTION)
    return budget if options.timeout is None else min(budget, options.timeout)


class LlmAgent:
    """Runs a skill with a model behind an OpenAI-compatible chat-completions API."""

    name = "llm"

    def run(self, skill: Skill, context: dict[str, Any], attempt: AttemptInfo) -> AgentReply:
        """Ask the model; the answer (parsed as JSON when the checks need keys) and its token usage.

        :param skill: the variation; its instructions and steps make the system message.
        :param context: the input (and on a retry ``_react_retry``/``_previous_attempt``, sent as feedback).
        :param attempt: unused: the retry's feedback arrives through ``context``.
        :raises LlmOverrideError: the skill's ``llm:`` block is malformed.
        """
        settings = get_settings()
        options = llm_options(skill, settings)
        json_mode = needs_json(skill)
        completion = chat_completion(
            settings,
            build_messages(skill, context, json_mode),
            model=options.model,
            deadline=time.monotonic() + time_budget(skill, settings, options),
            temperature=options.temperature,
            max_tokens=options.max_tokens,
            json_mode=json_mode,
        )
        output = parse_json_output(completion.text) if json_mode else completion.text
        return AgentReply(output, dict(completion.usage) if completion.usage else None)
