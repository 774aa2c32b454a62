"""Skill files: Markdown with YAML front matter, parsed and validated into a :class:`Skill`.

A skill file looks like::

    ---
    name: extract_contact
    agent: python
    entrypoint: skills.examples:extract_contact
    steps:
      - id: email
        description: the contact's e-mail address
        expect: {key: email}
    ---
    The instructions (the Markdown body).

The exact text of a file is what a *variation* stores, and its digest is the variation id. Every mistake
in a file is reported as a :class:`SkillFileError` naming the file, the line (taken from the YAML node
positions) and the field, e.g. ``skills/x.md:7: steps[1].expect: unknown check 'foo' (...)``. Field paths
index lists from 0.

Python references (a skill's ``entrypoint``, a ``python`` check) name ``module:function``; the module must
be under the allow-list ``WRE_PYTHON_SKILL_MODULES``. :func:`check_entrypoint` is that rule: the parser
applies it here, and the python agent and the scorer apply it again when they import (the settings may have
changed since the file was parsed).
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, NamedTuple, NoReturn, cast, get_args

import jsonschema
import yaml

from db.catalog import variation_id_for
from worker.settings import get_settings

FRONT_MATTER_DELIMITER = "---"
# The YAML text starts on the line after the opening delimiter; YAML marks count lines from 0.
YAML_FIRST_FILE_LINE = 2
FRONT_MATTER_FIELD = "front matter"
INSTRUCTIONS_FIELD = "instructions"
# A skill's text is stored in Postgres (text columns cannot hold NUL) and digested as UTF-8 (which cannot encode
# a lone surrogate): refused when parsed rather than failing when stored.
UNSTORABLE_CHARACTER = re.compile("[\x00\ud800-\udfff]")
# Skill content is stored in every variation row and may come from an evolver: bound it.
MAX_SKILL_CHARS = 200_000

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")
MAX_NAME_CHARS = 100
STEP_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# skill_outcomes.failed_at_step is 128 characters wide: a longer id could be parsed but never recorded.
MAX_STEP_ID_CHARS = 128
ENTRYPOINT_PATTERN = re.compile(
    r"(?P<module>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*):(?P<function>[A-Za-z_][A-Za-z0-9_]*)"
)

CheckKind = Literal["key", "regex", "json_schema", "equals", "python"]
CHECK_KINDS: tuple[str, ...] = get_args(CheckKind)
STEP_FIELDS = ("id", "description", "expect")
KNOWN_FIELDS = (
    "name",
    "description",
    "agent",
    "threshold",
    "time_limit",
    "entrypoint",
    "evolver",
    "steps",
    "params",
    "input",
)
PARAMS_FIELD = "params"
PARAM_NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
PARAM_FIELDS = ("value", "choices", "min", "max")
ParamValue = str | int | float | bool | None
DEFAULT_EVOLVER = "hints"
# The file format accepts every evolver the design names; whether one is installed is the registry's business.
EVOLVER_CHOICES = ("hints", "simulated", "llm")
PYTHON_AGENT = "python"

FieldPath = tuple[str | int, ...]


class SkillFileError(ValueError):
    """A skill file that cannot be used, with where and what.

    :param source: the file name (or ``<string>``).
    :param line: 1-based line in the file of the offending field.
    :param field: the field's path, e.g. ``steps[1].expect`` (``front matter`` for the whole header).
    :param message: what is wrong, and what was expected.
    """

    def __init__(self, source: str, line: int, field: str, message: str) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.message = message
        super().__init__(f"{source}:{line}: {field}: {message}")


class EntrypointError(ValueError):
    """A ``module:function`` reference that is malformed or cannot be imported."""


class ForbiddenEntrypointError(EntrypointError):
    """A ``module:function`` reference outside the allow-list ``WRE_PYTHON_SKILL_MODULES``."""


@dataclass(frozen=True)
class StepCheck:
    """One declared step of a skill and the check its output must pass.

    :param id: the step's id, unique within the skill.
    :param description: what the step does (free text, may be empty).
    :param kind: which check: ``key``, ``regex``, ``json_schema``, ``equals`` or ``python``.
    :param argument: the check's argument as written (key name, pattern, schema, value, ``module:function``).
    """

    id: str
    description: str
    kind: CheckKind
    argument: Any

    @property
    def expect(self) -> dict[str, Any]:
        """The ``expect`` mapping as it appears in the file."""
        return {self.kind: copy.deepcopy(self.argument)}


@dataclass(frozen=True)
class Param:
    """A tunable parameter of a skill: the value its entrypoint gets, and the values an evolver may pick.

    Declared either with ``choices`` (a list) or with a numeric range ``min``..``max`` (integers when the
    value and both bounds are integers).

    :param name: the keyword the entrypoint receives.
    :param value: the current value.
    :param choices: the values allowed, or None for a range.
    :param minimum: the range's lower bound (None with choices).
    :param maximum: the range's upper bound (None with choices).
    """

    name: str
    value: ParamValue
    choices: tuple[ParamValue, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None

    @property
    def integral(self) -> bool:
        """A range of integers (the value and both bounds are ints)."""
        return self.choices is None and all(
            isinstance(x, int) and not isinstance(x, bool) for x in (self.value, self.minimum, self.maximum)
        )

    def domain(self) -> dict[str, Any]:
        """What may be chosen, as written (without the value): it must not change from parent to proposal."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"min": self.minimum, "max": self.maximum}


@dataclass(frozen=True)
class Skill:
    """A parsed, validated skill file (one variation's content).

    :param name: the skill's name.
    :param description: one line about the skill.
    :param agent: the default agent's name.
    :param threshold: the fidelity a successful attempt needs; None means ``WRE_REACT_FIDELITY``.
    :param time_limit: seconds an attempt may take; None means ``WRE_DEFAULT_TIME_LIMIT_SECONDS``.
    :param entrypoint: ``module:function`` the python agent calls, if any.
    :param evolver: the evolver that proposes new variations.
    :param steps: the declared step checks, in order.
    :param instructions: the Markdown body, stripped of surrounding whitespace.
    :param extra: the other front-matter keys (``simulation:``, ``llm:``, ...); treat as read-only.
    :param content: the full original text, exactly as stored in a variation.
    :param params: tunable parameters (``params:``), passed to a python entrypoint as keywords; evolvers may
        change their values within what each declares.
    :param input_schema: the JSON Schema a run's input context must satisfy (``input:``), if declared.
    """

    name: str
    description: str
    agent: str
    threshold: float | None
    time_limit: float | None
    entrypoint: str | None
    evolver: str
    steps: tuple[StepCheck, ...]
    instructions: str
    extra: dict[str, Any]
    content: str = field(repr=False)
    params: dict[str, Param] = field(default_factory=dict)
    input_schema: dict[str, Any] | None = None

    def param_values(self) -> dict[str, ParamValue]:
        """The parameters' current values, by name (what the python agent passes as keywords)."""
        return {name: param.value for name, param in self.params.items()}

    def input_error(self, context: object) -> str | None:
        """Why ``context`` fails the skill's ``input:`` schema (the most relevant error), or None if it passes."""
        if self.input_schema is None:
            return None
        return _schema_error(self.input_schema, context, f"skill {self.name!r}'s")

    @property
    def variation_id(self) -> str:
        """The id of the variation whose content this is: the digest of :attr:`content`."""
        return content_digest(self.content)

    def with_instructions(self, instructions: str) -> str:
        """This content with another body: the front matter's text is kept byte for byte (comments too).

        :param instructions: the new Markdown body; surrounding whitespace is dropped, as the parser drops it.
        """
        header = _split_front_matter(self.content, "<skill>").header
        body = instructions.strip()
        return f"{header}\n{body}\n" if body else header

    def front_matter(self) -> dict[str, Any]:
        """A fresh copy of the front matter as written, to build a new variation with :func:`render_skill`."""
        loaded = yaml.safe_load(_split_front_matter(self.content, "<skill>").yaml_text)
        if not isinstance(loaded, dict):  # parse_skill accepted this content, so this cannot happen
            raise AssertionError("a parsed skill's front matter is a mapping")
        return loaded


def input_error(content: str, context: object) -> str | None:
    """Why ``context`` fails the ``input:`` schema of a stored variation's ``content``, or None.

    Reads the front matter alone (registration validated the rest), so a producer can check a run without
    the worker's python-module allow list or agents.
    """
    schema = _input_schema(content)
    return None if schema is None else _schema_error(schema, context, "this skill's")


@lru_cache(maxsize=512)
def _input_schema(content: str) -> dict[str, Any] | None:
    loaded = yaml.safe_load(_split_front_matter(content, "<variation>").yaml_text)
    schema = loaded.get("input") if isinstance(loaded, dict) else None
    return schema if isinstance(schema, dict) else None


def _schema_error(schema: dict[str, Any], context: object, whose: str) -> str | None:
    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(cast(Any, context)))
    if error is None:
        return None
    where = "/".join(str(part) for part in error.absolute_path)
    return f"input_context{f' at {where}' if where else ''} fails {whose} input schema: {error.message}"


def content_digest(text: str) -> str:
    """The variation id of a content: the first 16 hex digits of its SHA-256.

    :param text: the exact content (no normalisation: one changed byte is another variation).
    """
    return variation_id_for(text)


def render_skill(front_matter: Mapping[str, Any], instructions: str) -> str:
    """Write a skill file's text from its parts; :func:`parse_skill` reads back the same fields.

    :param front_matter: the front-matter mapping (plain JSON-like values).
    :param instructions: the Markdown body; surrounding whitespace is dropped, as the parser drops it.
    """
    header = yaml.safe_dump(dict(front_matter), sort_keys=False, allow_unicode=True, default_flow_style=False)
    text = f"{FRONT_MATTER_DELIMITER}\n{header}{FRONT_MATTER_DELIMITER}\n"
    body = instructions.strip()
    return f"{text}\n{body}\n" if body else text


def is_module_allowed(module: str, allowed: Sequence[str]) -> bool:
    """Whether ``module`` equals an allowed name or is a submodule of one (``skills`` covers ``skills.x``).

    :param module: a dotted module name.
    :param allowed: the allow-list.
    """
    return any(module == name or module.startswith(f"{name}.") for name in allowed if name)


def check_entrypoint(reference: object, allowed: Sequence[str] | None = None) -> tuple[str, str]:
    """Validate a ``module:function`` reference against the allow-list, without importing anything.

    :param reference: the reference as written.
    :param allowed: the allow-list; None means ``get_settings().python_skill_modules``.
    :returns: ``(module, function)``.
    :raises EntrypointError: the reference is not of the form ``module:function``.
    :raises ForbiddenEntrypointError: the module is outside the allow-list.
    """
    if not isinstance(reference, str) or (match := ENTRYPOINT_PATTERN.fullmatch(reference)) is None:
        raise EntrypointError(
            f"expected 'module:function' (e.g. 'skills.examples:extract_contact'), got {reference!r}"
        )
    module, function = match["module"], match["function"]
    if function.startswith("__"):
        raise ForbiddenEntrypointError(f"{reference!r}: dunder names may not be called")
    allow_list = list(get_settings().python_skill_modules if allowed is None else allowed)
    if not is_module_allowed(module, allow_list):
        raise ForbiddenEntrypointError(
            f"{reference!r}: module {module!r} is not allowed (WRE_PYTHON_SKILL_MODULES allows {allow_list})"
        )
    return module, function


def load_skill_file(path: str | Path, *, allowed_modules: Sequence[str] | None = None) -> Skill:
    """Read and parse a skill file.

    :param path: the file (UTF-8).
    :param allowed_modules: the python allow-list; None means the settings'.
    :raises SkillFileError: the file is malformed (the message names the path and line).
    :raises OSError: the file cannot be read.
    """
    source = str(path)
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SkillFileError(
            source, raw[: exc.start].count(b"\n") + 1, FRONT_MATTER_FIELD, "not UTF-8"
        ) from exc
    return parse_skill(text, source, allowed_modules=allowed_modules)


def parse_skill(
    text: str, source: str = "<string>", *, allowed_modules: Sequence[str] | None = None
) -> Skill:
    """Parse and validate a skill file's text.

    :param text: the full file text.
    :param source: the name errors report (a path, or ``<string>``).
    :param allowed_modules: the python allow-list; None means ``get_settings().python_skill_modules``.
    :raises SkillFileError: anything malformed, with its line and field.
    """
    if len(text) > MAX_SKILL_CHARS:
        raise SkillFileError(
            source, 1, FRONT_MATTER_FIELD, f"the file is longer than {MAX_SKILL_CHARS} characters"
        )
    unstorable = UNSTORABLE_CHARACTER.search(text)
    if unstorable is not None:
        line = text.count("\n", 0, unstorable.start()) + 1
        in_body = text.startswith(FRONT_MATTER_DELIMITER) and any(
            row.rstrip() == FRONT_MATTER_DELIMITER for row in text.split("\n")[1:line]
        )
        raise SkillFileError(
            source,
            line,
            INSTRUCTIONS_FIELD if in_body else FRONT_MATTER_FIELD,
            f"character U+{ord(unstorable.group()):04X} is not allowed in a skill file",
        )
    parts = _split_front_matter(text, source)
    root, data = _load_yaml(parts.yaml_text, source, YAML_FIRST_FILE_LINE)
    reader = _FrontMatter(source, root, YAML_FIRST_FILE_LINE, allowed_modules)
    return reader.build(data, parts.body.strip(), text)


class _Parts(NamedTuple):
    header: str  # the front matter with both delimiter lines, ending in a newline
    yaml_text: str
    body: str


def _split_front_matter(text: str, source: str) -> _Parts:
    """Split a skill file's text at its front-matter delimiters."""
    lines = text.split("\n")
    if not lines or lines[0].rstrip() != FRONT_MATTER_DELIMITER:
        raise SkillFileError(
            source, 1, FRONT_MATTER_FIELD, "missing front matter: the file must start with a '---' line"
        )
    for index in range(1, len(lines)):
        if lines[index].rstrip() == FRONT_MATTER_DELIMITER:
            header = "\n".join(lines[: index + 1]) + "\n"
            return _Parts(header, "\n".join(lines[1:index]) + "\n", "\n".join(lines[index + 1 :]))
    raise SkillFileError(
        source, 1, FRONT_MATTER_FIELD, "front matter is not closed: no '---' line after line 1"
    )


def _file_line(yaml_text: str, mark: yaml.Mark, first_line: int) -> int:
    """The file line of a YAML mark. YAML counts \r, NEL and the Unicode separators as line breaks too; the
    file's lines are its \n-separated ones (what an editor and the other errors number)."""
    return first_line + yaml_text.count("\n", 0, max(0, mark.index))


def _load_yaml(yaml_text: str, source: str, first_line: int) -> tuple[yaml.Node | None, Any]:
    """Compose (for positions) and construct (for values) the front matter in one pass."""
    try:
        loader = yaml.SafeLoader(yaml_text)
    except yaml.reader.ReaderError as exc:
        # The reader checks every character up front: control characters are refused before any parsing.
        line = first_line + yaml_text.count("\n", 0, max(0, exc.position))
        character = f"#x{exc.character:04x}" if isinstance(exc.character, int) else repr(exc.character)
        raise SkillFileError(
            source, line, FRONT_MATTER_FIELD, f"invalid YAML: unacceptable character {character}"
        ) from exc
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = _file_line(yaml_text, mark, first_line) if mark is not None else 1
        problem = exc.problem or "malformed"
        if exc.context:
            # An unclosed bracket is reported where the text ends; where it was opened helps more.
            context = exc.context_mark
            opened = f" (line {_file_line(yaml_text, context, first_line)})" if context is not None else ""
            problem = f"{exc.context}{opened}: {problem}"
        raise SkillFileError(source, line, FRONT_MATTER_FIELD, f"invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise SkillFileError(source, 1, FRONT_MATTER_FIELD, f"invalid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return root, data


def _field_name(path: FieldPath) -> str:
    if not path:
        return FRONT_MATTER_FIELD
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


class _FrontMatter:
    """Validates a front-matter mapping, reporting errors at the YAML node they are about."""

    def __init__(
        self, source: str, root: yaml.Node | None, first_line: int, allowed_modules: Sequence[str] | None
    ) -> None:
        self.source = source
        self.root = root
        self.first_line = first_line
        self.allowed_modules = allowed_modules

    # -- locating

    def _node(self, path: FieldPath, *, at_key: bool) -> yaml.Node | None:
        """The deepest node along ``path`` (the key node of the last step if ``at_key``)."""
        node = self.root
        for depth, part in enumerate(path):
            last = depth == len(path) - 1
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                match = next((pair for pair in node.value if pair[0].value == part), None)
                if match is None:
                    return node
                node = match[0] if (last and at_key) else match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                return node
        return node

    def line(self, path: FieldPath, *, at_key: bool = False) -> int:
        node = self._node(path, at_key=at_key)
        if node is None:
            return 1
        return self.first_line + node.start_mark.line

    def fail(self, path: FieldPath, message: str, *, at_key: bool = False) -> NoReturn:
        raise SkillFileError(self.source, self.line(path, at_key=at_key), _field_name(path), message)

    # -- checks of the whole front matter

    def check_duplicate_keys(self, node: yaml.Node | None, path: FieldPath, seen: set[int]) -> None:
        # PyYAML silently keeps the last of two equal keys; the author almost certainly meant something else.
        if node is None or id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in keys:
                    raise SkillFileError(
                        self.source,
                        self.first_line + key_node.start_mark.line,
                        _field_name((*path, key)),
                        "duplicate key",
                    )
                if key is not None:
                    keys.add(key)
                self.check_duplicate_keys(value_node, (*path, key) if key is not None else path, seen)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                self.check_duplicate_keys(item, (*path, index), seen)

    def check_json_like(
        self, value: Any, path: FieldPath, ancestors: tuple[int, ...] = (), checked: set[int] | None = None
    ) -> None:
        # Front matter ends up in JSON (outcome rows, task kwargs, checks): refuse what JSON cannot hold.
        checked = set() if checked is None else checked
        if isinstance(value, dict | list):
            if id(value) in ancestors:
                self.fail(path, "recursive YAML alias is not supported")
            # Aliases share one object; checking it once keeps an alias bomb from taking exponential time.
            if id(value) in checked:
                return
            checked.add(id(value))
            inner = (*ancestors, id(value))
            if isinstance(value, list):
                for index, item in enumerate(value):
                    self.check_json_like(item, (*path, index), inner, checked)
                return
            for key, item in value.items():
                if not isinstance(key, str):
                    self.fail(path, f"keys must be strings, got {key!r}")
                self.check_json_like(item, (*path, key), inner, checked)
        elif isinstance(value, float) and not math.isfinite(value):
            self.fail(path, f"{value} is not a finite number")
        elif value is not None and not isinstance(value, str | int | float | bool):
            self.fail(
                path, f"a {type(value).__name__} value is not supported here; quote it to make it a string"
            )

    # -- fields

    def build(self, data: Any, instructions: str, content: str) -> Skill:
        if data is None:
            raise SkillFileError(self.source, 1, FRONT_MATTER_FIELD, "front matter is empty")
        if not isinstance(data, dict):
            self.fail((), f"front matter must be a mapping of fields, got a {type(data).__name__}")
        self.check_duplicate_keys(self.root, (), set())
        self.check_json_like(data, ())
        name = self.identifier(data, "name")
        agent = self.identifier(data, "agent")
        entrypoint = self.entrypoint(data, agent)
        extra = {key: value for key, value in data.items() if key not in KNOWN_FIELDS}
        return Skill(
            name=name,
            description=self.optional_str(data, "description") or "",
            agent=agent,
            threshold=self.threshold(data),
            time_limit=self.time_limit(data),
            entrypoint=entrypoint,
            evolver=self.evolver(data),
            steps=self.steps(data),
            instructions=instructions,
            extra=extra,
            content=content,
            params=self.params(data),
            input_schema=self.input_schema(data),
        )

    def input_schema(self, data: dict[str, Any]) -> dict[str, Any] | None:
        """``input:``, a JSON Schema of the run's input context; checked as a schema now, not at the first run."""
        if "input" not in data:
            return None
        schema = data["input"]
        if not isinstance(schema, dict):
            self.fail(("input",), f"expected a JSON Schema (a mapping), got {schema!r}")
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/".join(str(part) for part in exc.path)
            self.fail(("input", *exc.path), f"invalid JSON Schema{f' at {where}' if where else ''}: {exc.message}")
        return schema

    def identifier(self, data: dict[str, Any], key: str) -> str:
        if key not in data:
            self.fail((key,), "missing required field")
        value = data[key]
        if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or not NAME_PATTERN.fullmatch(value):
            self.fail(
                (key,),
                f"expected lower-case letters, digits, '_', '.', '-' (starting with a letter or digit, "
                f"at most {MAX_NAME_CHARS} characters), got {value!r}",
            )
        return value

    def optional_str(self, data: dict[str, Any], key: str) -> str | None:
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            self.fail((key,), f"expected a string, got {value!r}")
        return value

    def number(self, data: dict[str, Any], key: str) -> float | None:
        value = data.get(key)
        if value is None:
            return None
        # bool is an int to Python, but `threshold: yes` is a mistake, not 1.0.
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail((key,), f"expected a number, got {value!r}")
        return float(value)

    def threshold(self, data: dict[str, Any]) -> float | None:
        value = self.number(data, "threshold")
        if value is not None and not 0.0 <= value <= 1.0:
            self.fail(("threshold",), f"expected a fidelity between 0 and 1, got {value:g}")
        return value

    def time_limit(self, data: dict[str, Any]) -> float | None:
        value = self.number(data, "time_limit")
        if value is not None and value <= 0:
            self.fail(("time_limit",), f"expected a positive number of seconds, got {value:g}")
        return value

    def evolver(self, data: dict[str, Any]) -> str:
        value = data.get("evolver", DEFAULT_EVOLVER)
        if value not in EVOLVER_CHOICES:
            self.fail(
                ("evolver",), f"unknown evolver {value!r} (expected one of {', '.join(EVOLVER_CHOICES)})"
            )
        return str(value)

    def entrypoint(self, data: dict[str, Any], agent: str) -> str | None:
        value = data.get("entrypoint")
        if value is None:
            if agent == PYTHON_AGENT:
                self.fail(("entrypoint",), "the python agent needs an entrypoint 'module:function'")
            return None
        self.python_reference(value, ("entrypoint",))
        return str(value)

    def python_reference(self, value: object, path: FieldPath) -> None:
        try:
            check_entrypoint(value, self.allowed_modules)
        except EntrypointError as exc:
            self.fail(path, str(exc))

    def params(self, data: dict[str, Any]) -> dict[str, Param]:
        raw = data.get(PARAMS_FIELD)
        if raw is None:
            return {}
        if not isinstance(raw, dict) or not raw:
            self.fail((PARAMS_FIELD,), "expected a mapping of name: {value, choices} or {value, min, max}")
        return {name: self.param(name, spec) for name, spec in raw.items()}

    def param(self, name: str, spec: Any) -> Param:
        path: FieldPath = (PARAMS_FIELD, name)
        if not PARAM_NAME_PATTERN.fullmatch(name):
            self.fail(
                path,
                f"a parameter name must be a Python identifier not starting with '_', got {name!r}",
                at_key=True,
            )
        if not isinstance(spec, dict) or "value" not in spec:
            self.fail(path, "expected {value, choices: [...]} or {value, min, max}")
        unknown = sorted(set(spec) - set(PARAM_FIELDS))
        if unknown:
            self.fail((*path, unknown[0]), f"unknown field (expected {', '.join(PARAM_FIELDS)})", at_key=True)
        value = spec["value"]
        if isinstance(value, dict | list):
            self.fail((*path, "value"), f"expected a number, string, true/false or null, got {value!r}")
        if "choices" in spec:
            if "min" in spec or "max" in spec:
                self.fail(path, "declare either choices or min/max, not both")
            choices = spec["choices"]
            if (
                not isinstance(choices, list)
                or len(choices) < 2
                or any(isinstance(c, dict | list) for c in choices)
            ):
                self.fail(
                    (*path, "choices"), f"expected a list of at least two plain values, got {choices!r}"
                )
            if value not in choices:
                self.fail((*path, "value"), f"{value!r} is not one of the choices {choices!r}")
            return Param(name, value, choices=tuple(choices))
        bounds: list[int | float] = []
        for key in ("min", "max"):
            bound = spec.get(key)
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                self.fail((*path, key), f"expected a number (or declare choices), got {bound!r}")
            bounds.append(bound)
        low, high = float(bounds[0]), float(bounds[1])
        if not low < high:
            self.fail(path, f"min must be below max, got {bounds[0]!r}..{bounds[1]!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            self.fail(
                (*path, "value"), f"expected a number within {bounds[0]!r}..{bounds[1]!r}, got {value!r}"
            )
        return Param(name, value, minimum=bounds[0], maximum=bounds[1])

    def steps(self, data: dict[str, Any]) -> tuple[StepCheck, ...]:
        if "steps" not in data:
            self.fail(("steps",), "missing required field (a non-empty list of {id, description, expect})")
        raw_steps = data["steps"]
        if not isinstance(raw_steps, list) or not raw_steps:
            self.fail(("steps",), "expected a non-empty list of {id, description, expect}")
        steps: list[StepCheck] = []
        seen: dict[str, int] = {}
        for index, raw in enumerate(raw_steps):
            step = self.step(raw, ("steps", index))
            if step.id in seen:
                self.fail(
                    ("steps", index, "id"), f"duplicate step id {step.id!r} (also steps[{seen[step.id]}])"
                )
            seen[step.id] = index
            steps.append(step)
        return tuple(steps)

    def step(self, raw: Any, path: FieldPath) -> StepCheck:
        if not isinstance(raw, dict):
            self.fail(path, f"expected a mapping with {', '.join(STEP_FIELDS)}, got {raw!r}")
        for key in raw:
            if key not in STEP_FIELDS:
                self.fail((*path, key), f"unknown field (expected {', '.join(STEP_FIELDS)})", at_key=True)
        if "id" not in raw:
            self.fail((*path, "id"), "missing required field")
        step_id = raw["id"]
        # YAML reads `id: 1` as an int; ids are names, so say so rather than silently converting.
        if not isinstance(step_id, str) or not STEP_ID_PATTERN.fullmatch(step_id) or len(step_id) > MAX_STEP_ID_CHARS:
            self.fail(
                (*path, "id"),
                f"expected a name of letters, digits, '_', '.', '-' of at most {MAX_STEP_ID_CHARS} characters, "
                f"got {step_id[:MAX_STEP_ID_CHARS + 10] if isinstance(step_id, str) else step_id!r}",
            )
        description = raw.get("description")
        if description is not None and not isinstance(description, str):
            self.fail((*path, "description"), f"expected a string, got {description!r}")
        if "expect" not in raw:
            self.fail(
                (*path, "expect"), f"missing required field (a mapping with one of {', '.join(CHECK_KINDS)})"
            )
        kind, argument = self.expect(raw["expect"], (*path, "expect"))
        return StepCheck(id=step_id, description=description or "", kind=kind, argument=argument)

    def expect(self, raw: Any, path: FieldPath) -> tuple[CheckKind, Any]:
        expected = f"expected one of {', '.join(CHECK_KINDS)}"
        if not isinstance(raw, dict) or len(raw) != 1:
            self.fail(path, f"expected a mapping with exactly one check ({expected}), got {raw!r}")
        ((kind, argument),) = raw.items()
        if kind not in CHECK_KINDS:
            self.fail(path, f"unknown check {kind!r} ({expected})")
        arg_path = (*path, kind)
        if kind == "key":
            if not isinstance(argument, str) or not argument:
                self.fail(arg_path, f"expected a non-empty key name, got {argument!r}")
        elif kind == "regex":
            if not isinstance(argument, str):
                self.fail(arg_path, f"expected a pattern string, got {argument!r}")
            try:
                re.compile(argument)
            except re.error as exc:
                self.fail(arg_path, f"pattern does not compile: {exc}")
        elif kind == "json_schema":
            if not isinstance(argument, dict):
                self.fail(arg_path, f"expected a JSON Schema (a mapping), got {argument!r}")
            try:
                jsonschema.validators.validator_for(argument).check_schema(argument)
            except jsonschema.SchemaError as exc:
                where = "/".join(str(part) for part in exc.path)
                self.fail(arg_path, f"invalid JSON Schema{f' at {where}' if where else ''}: {exc.message}")
        elif kind == "python":
            self.python_reference(argument, arg_path)
        return cast(CheckKind, kind), argument


@lru_cache(maxsize=512)
def parse_variation(content: str) -> Skill:
    """A variation's parsed content; cached because a variation's content never changes."""
    return parse_skill(content, source="<variation>")


def check_variation(skill_name: str, content: str) -> None:
    """Refuse content that is not a skill named ``skill_name`` (a ValueError naming what is wrong).

    Run before a variation enters a test: a treatment that cannot parse would fail every run routed to it.
    """
    parsed = parse_variation(content)
    if parsed.name != skill_name:
        raise ValueError(f"the variation is a skill named {parsed.name!r}, not {skill_name!r}")
