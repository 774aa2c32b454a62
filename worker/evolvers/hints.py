"""The ``hints`` evolver: deterministic; adds what recent runs got wrong to the instructions.

It appends (or replaces) a ``## Hints from failed runs`` section naming, for the steps that recent runs
failed most, the check they must pass, how often they failed, the most common error and an example output.
An agent that reads its instructions (an LLM) can act on it; the front matter is kept byte for byte.

The python agent does not read instructions: for a python skill that declares ``params:`` the evolver also
moves one parameter, a seeded draw per candidate (the hints stay, as a record of what failed).
"""

from __future__ import annotations

import re
from collections import Counter

from worker.agents.llm import describe_check, quote
from worker.skills import PYTHON_AGENT, Skill, parse_skill

from .base import EvolutionRefused, Failure, tuned_params, validate_proposal

HINTS_HEADING = "## Hints from failed runs"
# The section runs from its heading to the next heading of the same or a higher level, or the end.
HINTS_SECTION = re.compile(
    rf"^{re.escape(HINTS_HEADING)}[ \t]*$.*?(?=^#{{1,2}} |\Z)", re.MULTILINE | re.DOTALL
)
MAX_HINT_STEPS = 3


def hints_section(skill: Skill, failures: list[Failure]) -> str:
    """The hints section for these failures (without a trailing newline).

    :param skill: the parent skill (for its steps and their checks).
    :param failures: recent failed runs, newest first.
    """
    steps = {step.id: step for step in skill.steps}
    order = {step.id: index for index, step in enumerate(skill.steps)}
    by_step = Counter(failure.failed_at_step for failure in failures if failure.failed_at_step in steps)
    # Most failures first; ties in the skill's step order, so the section does not depend on dict order.
    ranked = sorted(by_step, key=lambda step_id: (-by_step[step_id], order[step_id]))[:MAX_HINT_STEPS]
    runs = "run" if len(failures) == 1 else "runs"
    lines = [HINTS_HEADING, "", f"Learned from the {len(failures)} most recent failed {runs}.", ""]
    for step_id in ranked:
        step = steps[step_id]
        at_step = [failure for failure in failures if failure.failed_at_step == step_id]
        errors = Counter(failure.error for failure in at_step if failure.error)
        line = f"- Step `{step_id}` failed first in {len(at_step)} of {len(failures)} runs: {describe_check(step)}."
        if errors:
            error, count = errors.most_common(1)[0]
            line += f" Most common error ({count}x): {quote(error)}."
        else:
            example = next((failure.output for failure in at_step if failure.output), "")
            line += " The agent finished, but its output did not pass the check"
            line += f", e.g. {quote(example)}." if example else "."
        lines.append(line)
    unplaced = Counter(
        failure.error for failure in failures if failure.failed_at_step not in steps and failure.error
    )
    if unplaced:
        error, count = unplaced.most_common(1)[0]
        lines.append(f"- Runs failed before any step could be checked ({count}x): {quote(error)}.")
    return "\n".join(lines)


class HintsEvolver:
    """Adds a ``## Hints from failed runs`` section to the instructions, deterministically."""

    name = "hints"

    def propose(self, skill: Skill, failures: list[Failure], seed: str, candidate: int = 0) -> str:
        """Propose the parent with fresh hints (a python skill with params: and one parameter moved).

        :param failures: recent failed runs, newest first (at least one).
        :param seed: draws a python skill's parameter change; hints themselves are deterministic.
        :param candidate: which candidate (a python skill's draw); the hints are the same for every one.
        :raises EvolutionRefused: no failures, or the hints are the ones the parent already has.
        """
        if not failures:
            raise EvolutionRefused(f"no failed runs of {skill.name!r} to learn from")
        parent = skill
        if skill.agent == PYTHON_AGENT and skill.params:
            skill = parse_skill(tuned_params(skill, seed, candidate), source=f"<proposal for {skill.name}>")
        section = hints_section(skill, failures)
        instructions = HINTS_SECTION.sub("", skill.instructions).strip()
        return validate_proposal(parent, skill.with_instructions(f"{instructions}\n\n{section}")).content
