"""The ``llm`` evolver: asks the model to rewrite a skill's instructions from its recent failures.

The model sees the current content, the declared steps with their checks, and the recent failures (how often
each step failed, the errors, and the lowest-fidelity outputs, trimmed). Only the instructions may change: the
front matter — the steps above all, which are the contract — is kept byte for byte (:meth:`Skill.with_instructions`).
A reply that is a whole skill file is accepted for its body only if its steps are the parent's.

An evolution asks for several candidates: each is sampled at another temperature (:data:`CANDIDATE_TEMPERATURES`)
with its own seed, and told which candidate it is, so that screening chooses among different rewrites. A python
skill's agent does not read instructions: for it the evolver moves one declared parameter instead (no model call).

It uses the ``llm`` agent's connection (``WRE_LLM_*``) and the skill's ``llm:`` overrides. Anything that
keeps the model from answering (the server down, a refused key, a malformed ``llm:`` block) is a refusal:
the evolution is recorded as refused, with the reason, and the skill evolves again after its cooldown.
"""

from __future__ import annotations

import time
from collections import Counter

from worker.agents.base import AgentConfigurationError, AgentInfrastructureError
from worker.agents.isolation import trim
from worker.agents.llm import describe_check, llm_options
from worker.agents.llm_client import LlmResponseError, chat_completion
from worker.settings import get_settings
from worker.skills import FRONT_MATTER_DELIMITER, PYTHON_AGENT, Skill, SkillFileError, parse_skill

from .base import EvolutionRefused, Failure, candidate_rng, tuned_params, validate_proposal

# Enough examples to show a pattern, few enough to keep the prompt small for a local model.
MAX_PROMPT_FAILURES = 8
MAX_PROMPT_OUTPUT_CHARS = 600
FENCE = "```"
# The first candidate samples at the skill's own temperature (or this ladder's first); the others climb it.
CANDIDATE_TEMPERATURES = (0.2, 0.7, 1.0, 1.2)
SEED_RANGE = 2**31

SYSTEM_PROMPT = """You improve the instructions of a skill: a procedure a language model follows to turn an \
input (JSON) into an output that must pass the skill's checks.
You get the skill file (YAML front matter between --- lines, then the instructions in Markdown), the checks \
its output must pass, and recent runs that failed them.
Rewrite the instructions so that the next runs pass every check: be specific about the output's exact shape, \
the keys it must have and the values they take. Keep what already works.
Reply with the new instructions only, in Markdown: no front matter, no explanation, no code fence around the \
whole reply. The checks are fixed; do not try to change them."""


def candidate_temperature(skill_temperature: float | None, candidate: int) -> float:
    """The sampling temperature of a candidate: the skill's own for the first, then the ladder.

    :param skill_temperature: the skill's ``llm.temperature``, or None.
    :param candidate: the candidate's index, from 0.
    """
    if candidate == 0 and skill_temperature is not None:
        return skill_temperature
    return CANDIDATE_TEMPERATURES[candidate % len(CANDIDATE_TEMPERATURES)]


def evolution_prompt(skill: Skill, failures: list[Failure], candidate: int = 0) -> str:
    """The user message: the current content, the checks, and the failures.

    :param failures: recent failed runs, newest first.
    :param candidate: which candidate is asked for; after the first, the model is asked for another angle.
    """
    lines = ["# The skill file", "", skill.content.strip(), "", "# The checks its output must pass", ""]
    for step in skill.steps:
        about = f" ({step.description})" if step.description else ""
        lines.append(f"- Step `{step.id}`{about}: {describe_check(step)}.")
    by_step = Counter(failure.failed_at_step or "(none: the agent failed)" for failure in failures)
    lines += ["", f"# {len(failures)} recent failed run(s)", ""]
    lines += [f"- first failed step `{step}`: {count} run(s)" for step, count in by_step.most_common()]
    # The worst outputs teach the most; the rest are summarised by the counts above.
    worst = sorted(failures, key=lambda failure: failure.pattern_fidelity)[:MAX_PROMPT_FAILURES]
    for number, failure in enumerate(worst, start=1):
        lines += [
            "",
            f"## Failed run {number}: fidelity {failure.pattern_fidelity:.2f}, "
            f"failed at step {failure.failed_at_step or '(none)'}",
        ]
        if failure.error:
            lines.append(f"Error: {trim(failure.error.strip(), MAX_PROMPT_OUTPUT_CHARS)}")
        if failure.output:
            lines += ["Output:", FENCE, trim(failure.output.strip(), MAX_PROMPT_OUTPUT_CHARS), FENCE]
    if candidate:
        lines += [
            "",
            f"Other rewrites are being tried as well (this is number {candidate + 1}): take a different angle "
            "from the most obvious fix, e.g. restructure the instructions or add a worked example.",
        ]
    lines += ["", "Write the new instructions."]
    return "\n".join(lines)


def _unfenced(text: str) -> str:
    """The reply without a code fence wrapped around all of it (models add one despite being asked not to)."""
    stripped = text.strip()
    if stripped.startswith(FENCE) and stripped.endswith(FENCE) and len(stripped) > 2 * len(FENCE):
        first_line_end = stripped.find("\n")
        if first_line_end != -1:
            return stripped[first_line_end + 1 : -len(FENCE)].strip()
    return stripped


def proposed_instructions(parent: Skill, reply: str) -> str:
    """The new instructions in a model's reply.

    :param reply: the model's text: instructions, or a whole skill file (then its steps must be the parent's).
    :raises EvolutionRefused: the reply is empty, or a skill file that is malformed or changes the steps.
    """
    text = _unfenced(reply)
    if text.startswith(FRONT_MATTER_DELIMITER):
        try:
            whole = parse_skill(text + "\n", source=f"<llm proposal for {parent.name}>")
        except SkillFileError as error:
            raise EvolutionRefused(f"the model answered a malformed skill file: {error}") from None
        if whole.steps != parent.steps:
            raise EvolutionRefused(
                "the model answered a skill file with other steps: the checks are the contract and may not evolve"
            )
        text = whole.instructions
    if not text.strip():
        raise EvolutionRefused(f"the model proposed empty instructions for {parent.name!r}")
    return text


class LlmEvolver:
    """Asks the model for better instructions; the front matter (the steps above all) stays as it is."""

    name = "llm"

    def propose(self, skill: Skill, failures: list[Failure], seed: str, candidate: int = 0) -> str:
        """Propose the parent with rewritten instructions (a python skill: with one parameter moved).

        :param skill: the parent (the production variation).
        :param failures: recent failed runs, newest first (at least one).
        :param seed: sent to the server as its sampling seed (per candidate); servers that honour it repeat
            an answer, others ignore it.
        :param candidate: which candidate (its temperature and prompt).
        :raises EvolutionRefused: no failures; the model could not be asked (the reason says why); or the
            proposal is empty, unchanged or malformed.
        """
        if not failures:
            raise EvolutionRefused(f"no failed runs of {skill.name!r} to learn from")
        if skill.agent == PYTHON_AGENT:
            return validate_proposal(skill, tuned_params(skill, seed, candidate)).content
        settings = get_settings()
        try:
            options = llm_options(skill, settings)
            completion = chat_completion(
                settings,
                [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": evolution_prompt(skill, failures, candidate)},
                ],
                model=options.model,
                deadline=time.monotonic() + (options.timeout or settings.default_time_limit_seconds),
                temperature=candidate_temperature(options.temperature, candidate),
                max_tokens=options.max_tokens,
                seed=candidate_rng(seed, skill, candidate).randrange(SEED_RANGE),
            )
        except (AgentConfigurationError, AgentInfrastructureError, LlmResponseError) as error:
            # The messages are already redacted: they name the server and status, never the key.
            raise EvolutionRefused(f"the llm evolver could not ask the model: {error}") from None
        instructions = proposed_instructions(skill, completion.text)
        return validate_proposal(skill, skill.with_instructions(instructions)).content
