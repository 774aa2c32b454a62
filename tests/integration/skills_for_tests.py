"""Skill files the integration tests register (python agent, entrypoints in tests/fixtures)."""

from __future__ import annotations


def python_skill(
    name: str, entrypoint: str, threshold: float = 0.9, body: str = "Answer.", params: str = ""
) -> str:
    return f"""---
name: {name}
description: a test skill
agent: python
entrypoint: tests.fixtures.entrypoints:{entrypoint}
threshold: {threshold}
time_limit: 5
evolver: hints
steps:
  - id: shape
    description: an object
    expect: {{json_schema: {{type: object}}}}
  - id: answer
    description: a non-empty answer
    expect: {{key: answer}}
{params}---
{body}
"""
