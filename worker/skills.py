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

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, NoReturn, cast, get_args

import jsonschema
import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError, ValidationInfo, model_validator

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
KNOWN_FIELDS = ("name", "description", "agent", "threshold", "time_limit", "entrypoint", "evolver", "steps", "params", "input")
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
    """One declared step of a skill (its id unique within the skill) and the check its output must pass: the
    check's kind and its argument as written (key name, pattern, schema, value, ``module:function``)."""

    id: str
    description: str
    kind: CheckKind
    argument: Any


@dataclass(frozen=True)
class Param:
    """A tunable parameter of a skill: the value its entrypoint gets, and the values an evolver may pick.

    Declared either with ``choices`` (a list) or with a numeric range ``min``..``max`` (integers when the
    value and both bounds are integers). ``name`` is the keyword the entrypoint receives.
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
    """A parsed, validated skill file (one variation's content), as its front matter declares it.

    ``threshold`` None means ``WRE_REACT_FIDELITY``; ``time_limit`` None means ``WRE_DEFAULT_TIME_LIMIT_SECONDS``;
    ``instructions`` is the Markdown body, stripped; ``extra`` the other front-matter keys (``simulation:``,
    ``llm:``, ...), read-only; ``content`` the exact text stored as the variation; ``params`` are passed to a
    python entrypoint as keywords (evolvers may change their values within what each declares);
    ``input_schema`` is the JSON Schema a run's input context must satisfy, if declared.
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
    """Whether ``module`` equals an allowed name or is a submodule of one (``skills`` covers ``skills.x``)."""
    return any(module == name or module.startswith(f"{name}.") for name in allowed if name)


def check_entrypoint(reference: object, allowed: Sequence[str] | None = None) -> tuple[str, str]:
    """Validate a ``module:function`` reference against the allow-list, without importing anything.

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


# -- the front matter's shape, as pydantic models. Each rule says in its message what was expected; the
# -- translation below adds the file, the line (from the YAML nodes) and the field path.


class _Problem(ValueError):
    """A rule's refusal: the message, and where it is below the field being validated (``at_key``: the key)."""

    def __init__(self, message: str, *below: str | int, at_key: bool = False) -> None:
        super().__init__(message)
        self.below = below
        self.at_key = at_key


def _allowed(info: ValidationInfo) -> Sequence[str] | None:
    return cast("Sequence[str] | None", (info.context or {}).get("allowed_modules"))


def _identifier(value: object) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME_CHARS or not NAME_PATTERN.fullmatch(value):
        raise ValueError(
            f"expected lower-case letters, digits, '_', '.', '-' (starting with a letter or digit, "
            f"at most {MAX_NAME_CHARS} characters), got {value!r}"
        )
    return value


def _text(value: object) -> str:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value or ""


def _number(within: Callable[[float], bool], expected: str) -> Callable[[object], float | None]:
    def check(value: object) -> float | None:
        if value is None:
            return None
        # bool is an int to Python, but `threshold: yes` is a mistake, not 1.0.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {value!r}")
        if not within(value):
            raise ValueError(f"expected {expected}, got {value:g}")
        return float(value)

    return check


def _evolver(value: object) -> str:
    if value not in EVOLVER_CHOICES:
        raise ValueError(f"unknown evolver {value!r} (expected one of {', '.join(EVOLVER_CHOICES)})")
    return str(value)


def _reference(value: object, info: ValidationInfo) -> str | None:
    if value is not None:
        check_entrypoint(value, _allowed(info))  # an EntrypointError is a ValueError: pydantic reports it
    return cast("str | None", value)


def _json_schema(schema: object) -> dict[str, Any]:
    """A JSON Schema, checked as a schema now rather than at the first run that uses it."""
    if not isinstance(schema, dict):
        raise ValueError(f"expected a JSON Schema (a mapping), got {schema!r}")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.path)
        raise _Problem(f"invalid JSON Schema{f' at {where}' if where else ''}: {exc.message}", *exc.path) from None
    return schema


def _step_id(value: object) -> str:
    # YAML reads `id: 1` as an int; ids are names, so say so rather than silently converting.
    if not isinstance(value, str) or not STEP_ID_PATTERN.fullmatch(value) or len(value) > MAX_STEP_ID_CHARS:
        shown = value[: MAX_STEP_ID_CHARS + 10] if isinstance(value, str) else repr(value)
        raise ValueError(
            f"expected a name of letters, digits, '_', '.', '-' of at most {MAX_STEP_ID_CHARS} characters, got {shown}"
        )
    return value


def _expect(raw: object, info: ValidationInfo) -> tuple[str, Any]:
    expected = f"expected one of {', '.join(CHECK_KINDS)}"
    if not isinstance(raw, dict) or len(raw) != 1:
        raise ValueError(f"expected a mapping with exactly one check ({expected}), got {raw!r}")
    ((kind, argument),) = raw.items()
    if kind not in CHECK_KINDS:
        raise ValueError(f"unknown check {kind!r} ({expected})")
    try:
        if kind == "key" and (not isinstance(argument, str) or not argument):
            raise ValueError(f"expected a non-empty key name, got {argument!r}")
        if kind == "regex":
            if not isinstance(argument, str):
                raise ValueError(f"expected a pattern string, got {argument!r}")
            try:
                re.compile(argument)
            except re.error as exc:
                raise ValueError(f"pattern does not compile: {exc}") from None
        if kind == "json_schema":
            _json_schema(argument)
        if kind == "python":
            check_entrypoint(argument, _allowed(info))
    except ValueError as exc:  # said at the check's argument
        raise _Problem(str(exc), kind) from None
    return kind, argument


def _steps(raw: object) -> object:
    if not isinstance(raw, list) or not raw:
        raise ValueError("expected a non-empty list of {id, description, expect}")
    return raw


def _params(raw: object) -> object:
    if not isinstance(raw, dict) or not raw:
        raise ValueError("expected a mapping of name: {value, choices} or {value, min, max}")
    for name in raw:
        if not PARAM_NAME_PATTERN.fullmatch(name):
            raise _Problem(
                f"a parameter name must be a Python identifier not starting with '_', got {name!r}", name, at_key=True
            )
    return raw


def _plain(value: object) -> object:
    if isinstance(value, dict | list):
        raise ValueError(f"expected a number, string, true/false or null, got {value!r}")
    return value


class _Step(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, BeforeValidator(_step_id)]
    description: Annotated[str, BeforeValidator(_text)] = ""
    expect: Annotated[tuple[str, Any], BeforeValidator(_expect)]


class _Param(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Annotated[Any, BeforeValidator(_plain)]
    choices: Any = None
    min: Any = None
    max: Any = None

    def build(self, name: str) -> Param:
        value = self.value
        if "choices" in self.model_fields_set:
            if self.model_fields_set & {"min", "max"}:
                raise _Problem("declare either choices or min/max, not both")
            choices = self.choices
            if not isinstance(choices, list) or len(choices) < 2 or any(isinstance(c, dict | list) for c in choices):
                raise _Problem(f"expected a list of at least two plain values, got {choices!r}", "choices")
            if value not in choices:
                raise _Problem(f"{value!r} is not one of the choices {choices!r}", "value")
            return Param(name, value, choices=tuple(choices))
        for key, bound in (("min", self.min), ("max", self.max)):
            if isinstance(bound, bool) or not isinstance(bound, int | float):
                raise _Problem(f"expected a number (or declare choices), got {bound!r}", key)
        if not float(self.min) < float(self.max):
            raise _Problem(f"min must be below max, got {self.min!r}..{self.max!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not self.min <= value <= self.max:
            raise _Problem(f"expected a number within {self.min!r}..{self.max!r}, got {value!r}", "value")
        return Param(name, value, minimum=self.min, maximum=self.max)


class _FrontMatterModel(BaseModel):
    """The known fields of a front matter (the others are kept as the skill's ``extra``)."""

    model_config = ConfigDict(extra="ignore")

    name: Annotated[str, BeforeValidator(_identifier)]
    agent: Annotated[str, BeforeValidator(_identifier)]
    entrypoint: Annotated[str | None, BeforeValidator(_reference)] = None
    description: Annotated[str, BeforeValidator(_text)] = ""
    threshold: Annotated[float | None, BeforeValidator(_number(lambda x: 0 <= x <= 1, "a fidelity between 0 and 1"))] = None
    time_limit: Annotated[float | None, BeforeValidator(_number(lambda x: x > 0, "a positive number of seconds"))] = None
    evolver: Annotated[str, BeforeValidator(_evolver)] = DEFAULT_EVOLVER
    steps: Annotated[list[_Step], BeforeValidator(_steps)]
    params: Annotated[dict[str, _Param] | None, BeforeValidator(lambda raw: raw if raw is None else _params(raw))] = None
    input: Annotated[dict[str, Any] | None, BeforeValidator(lambda raw: raw if raw is None else _json_schema(raw))] = None

    @model_validator(mode="after")
    def _across_fields(self) -> _FrontMatterModel:
        if self.entrypoint is None and self.agent == PYTHON_AGENT:
            raise _Problem("the python agent needs an entrypoint 'module:function'", "entrypoint")
        seen: dict[str, int] = {}
        for index, step in enumerate(self.steps):
            if step.id in seen:
                raise _Problem(f"duplicate step id {step.id!r} (also steps[{seen[step.id]}])", "steps", index, "id")
            seen[step.id] = index
        return self


# What a misshapen mapping should have been, by the field it sits in.
_SHAPES = {"steps": STEP_FIELDS, PARAMS_FIELD: PARAM_FIELDS}


class _FrontMatter:
    """Validates a front-matter mapping, reporting errors at the YAML node they are about."""

    def __init__(
        self, source: str, root: yaml.Node | None, first_line: int, allowed_modules: Sequence[str] | None
    ) -> None:
        self.source = source
        self.root = root
        self.first_line = first_line
        self.allowed_modules = allowed_modules

    def line(self, path: FieldPath, *, at_key: bool = False) -> int:
        """The file line of the deepest node along ``path`` (the key node of the last step if ``at_key``)."""
        node = self.root
        for depth, part in enumerate(path):
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                match = next((pair for pair in node.value if pair[0].value == part), None)
                if match is None:
                    break
                node = match[0] if (at_key and depth == len(path) - 1) else match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
            else:
                break
        return 1 if node is None else self.first_line + node.start_mark.line

    def fail(self, path: FieldPath, message: str, *, at_key: bool = False) -> NoReturn:
        raise SkillFileError(self.source, self.line(path, at_key=at_key), _field_name(path), message)

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
                        self.source, self.first_line + key_node.start_mark.line, _field_name((*path, key)), "duplicate key"
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
            items = enumerate(value) if isinstance(value, list) else value.items()
            for key, item in items:
                if isinstance(value, dict) and not isinstance(key, str):
                    self.fail(path, f"keys must be strings, got {key!r}")
                self.check_json_like(item, (*path, key), inner, checked)
        elif isinstance(value, float) and not math.isfinite(value):
            self.fail(path, f"{value} is not a finite number")
        elif value is not None and not isinstance(value, str | int | float | bool):
            self.fail(path, f"a {type(value).__name__} value is not supported here; quote it to make it a string")

    def build(self, data: Any, instructions: str, content: str) -> Skill:
        if data is None:
            raise SkillFileError(self.source, 1, FRONT_MATTER_FIELD, "front matter is empty")
        if not isinstance(data, dict):
            self.fail((), f"front matter must be a mapping of fields, got a {type(data).__name__}")
        self.check_duplicate_keys(self.root, (), set())
        self.check_json_like(data, ())
        try:
            model = _FrontMatterModel.model_validate(data, context={"allowed_modules": self.allowed_modules})
            params = {name: self._param(name, spec) for name, spec in (model.params or {}).items()}
        except ValidationError as error:
            self.refuse(error)
        return Skill(
            name=model.name,
            description=model.description,
            agent=model.agent,
            threshold=model.threshold,
            time_limit=model.time_limit,
            entrypoint=model.entrypoint,
            evolver=model.evolver,
            steps=tuple(StepCheck(s.id, s.description, cast(CheckKind, s.expect[0]), s.expect[1]) for s in model.steps),
            instructions=instructions,
            extra={key: value for key, value in data.items() if key not in KNOWN_FIELDS},
            content=content,
            params=params,
            input_schema=data.get("input"),
        )

    def _param(self, name: str, spec: _Param) -> Param:
        try:
            return spec.build(name)
        except _Problem as problem:
            self.fail((PARAMS_FIELD, name, *problem.below), str(problem))

    def refuse(self, error: ValidationError) -> NoReturn:
        """The first of pydantic's errors, as a :class:`SkillFileError` at its field's line."""
        first = error.errors(include_url=False)[0]
        path: FieldPath = tuple(first["loc"])
        problem = first.get("ctx", {}).get("error")
        if isinstance(problem, _Problem):
            self.fail((*path, *problem.below), str(problem), at_key=problem.at_key)
        shape = ", ".join(_SHAPES.get(str(path[0]), ())) if path else ""
        if first["type"] == "missing":
            self.fail(path, "missing required field")
        if first["type"] == "extra_forbidden":
            self.fail(path, f"unknown field (expected {shape})", at_key=True)
        if isinstance(problem, ValueError):
            self.fail(path, str(problem))
        self.fail(path, f"expected a mapping with {shape}, got {first['input']!r}" if shape else first["msg"])


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
