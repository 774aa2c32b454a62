"""Python code of the example skills: the ``extract_contact`` entrypoint and a custom check.

Deliberately plain regular expressions: the skill fails on inputs without a phone number, so the demo has
honest failures to learn from.
"""

from __future__ import annotations

import re
from typing import Any

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
PHONE = re.compile(r"\+?\d[\d ()-]{6,}\d")
NAME_LINE = re.compile(
    r"^(?:name|from|regards|best|thanks)[:,]?\s*(?P<name>[A-Z][\w'-]+(?: [A-Z][\w'-]+)*)\s*$", re.I | re.M
)


def extract_contact(context: dict[str, Any]) -> dict[str, Any]:
    """Pull a name, e-mail address and phone number out of ``context["text"]``.

    :param context: the run's input; ``text`` is the message to read.
    :returns: ``{"name", "email", "phone"}``, each None when not found.
    :raises ValueError: ``text`` is missing or not a string.
    """
    text = context.get("text")
    if not isinstance(text, str):
        raise ValueError("context['text'] must be the message to read (a string)")
    email = EMAIL.search(text)
    phone = PHONE.search(text)
    name = NAME_LINE.search(text)
    return {
        "name": name["name"] if name else None,
        "email": email.group(0) if email else None,
        "phone": re.sub(r"[^\d+]", "", phone.group(0)) if phone else None,
    }


def has_valid_email(output: object) -> bool:
    """Custom check: the output's ``email`` has one ``@`` and a dotted domain.

    :param output: the agent's output (a JSON object from ``extract_contact``).
    """
    if not isinstance(output, dict):
        return False
    email = output.get("email")
    return isinstance(email, str) and EMAIL.fullmatch(email) is not None
