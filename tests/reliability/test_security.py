"""Security: JSON only on the wire, no secret in the code, SQL only with bound parameters.

Covered elsewhere, and not repeated here:
- Flower never runs without auth: tests/test_compose.py::test_refuses_to_render_without_a_secret (compose refuses
  to render without FLOWER_USER/FLOWER_PASSWORD, which have no default) and
  ::test_renders_every_service_with_its_settings (FLOWER_BASIC_AUTH is set from them);
  tests/integration/test_flower.py (a real Flower answers 401 without credentials).
- LLM keys redacted in errors, logs, kwargs and rows: tests/integration/test_llm_agent.py.
- A worker given an API key shows it nowhere (log, broker keys, rows): test_bad_input.py::test_the_secret_is_nowhere.
- Property tests (skill parsing, policies, ReAct): test_properties.py.
"""

from __future__ import annotations

import ast
import re
import subprocess
import uuid
from pathlib import Path

import pytest
from celery import Celery
from celery.result import AsyncResult
from kombu import Connection, Exchange, Producer  # type: ignore[attr-defined]

from db.memory import PatternMemory
from tests.integration.skills_for_tests import python_skill
from tests.processes import REPO, Process, wait_until
from tests.reliability.checks import row_counts
from tests.reliability.servers import PrivateRedis
from worker.client import enqueue_skill
from worker.registry import register_skill_text

PRODUCT_DIRS = ("db", "worker", "scheduler", "wre")
# exec_driver_sql bypasses SQLAlchemy's statement objects: only these reviewed, parameter-free statements.
REVIEWED_DRIVER_SQL = {"BEGIN IMMEDIATE"}  # db/engine.py: SQLite's write lock for the embedded default


class Trap:
    """Unpickling this creates a file: proof that a pickled message was (or was not) deserialized."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def test_a_pickled_message_is_refused(
    serving_app: Celery,
    serving_worker: Process,
    serving_broker: PrivateRedis,
    memory: PatternMemory,
    tmp_path: Path,
) -> None:
    register_skill_text(memory, python_skill("echo", "echo"))
    marker = tmp_path / "unpickled"
    task_id = str(uuid.uuid4())
    before = row_counts(memory)
    log_before = len(serving_worker.log())
    body: tuple[object, ...] = ((), {"skill_name": "echo", "input_context": {"trap": Trap(marker)}}, {})
    headers = {"lang": "py", "task": "wre.execute_skill", "id": task_id, "root_id": task_id, "retries": 0}
    with Connection(serving_broker.url()) as conn:
        producer = Producer(conn, exchange=Exchange("skills", type="direct"), routing_key="skills")
        producer.publish(body, serializer="pickle", headers=headers, correlation_id=task_id)
    wait_until(
        lambda: "content type must be application/json" in serving_worker.log()[log_before:],
        timeout=30,
        what="the worker to refuse the pickled message",
    )
    assert not marker.exists(), "the worker unpickled the message"
    # Not executed: no outcome, a FAILURE result saying why; and not left for redelivery.
    assert row_counts(memory) == before
    refused = AsyncResult(task_id, app=serving_app)
    wait_until(lambda: refused.state == "FAILURE", timeout=10, what="the refusal's result")
    assert "application/x-python-serialize" in str(refused.result)
    client = serving_broker.client()
    wait_until(
        lambda: client.llen("skills") == 0 and client.hlen("unacked") == 0,
        timeout=10,
        what="the refused message to be dropped",
    )
    # The worker is alive and serves the next (JSON) run.
    assert serving_worker.popen.poll() is None
    assert enqueue_skill("echo", {"text": "json"}, app=serving_app).get(timeout=30)["success"] is True


def test_the_app_accepts_json_only() -> None:
    from worker.app import celery_config
    from worker.settings import Settings

    config = celery_config(Settings())
    assert config["accept_content"] == ["json"] and config["result_accept_content"] == ["json"]
    assert config["task_serializer"] == config["result_serializer"] == "json"


# -- secrets in the code

KEY_LIKE = re.compile(
    r"sk-[A-Za-z0-9_-]{16,}"  # OpenAI-style API keys
    r"|AKIA[0-9A-Z]{16}"  # AWS access keys
    r"|gh[pousr]_[A-Za-z0-9]{30,}"  # GitHub tokens
    r"|xox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"
)
ASSIGNED_SECRET = re.compile(
    r"(?i)(password|passwd|secret|api_?key|token)[\"']?\s*[:=]\s*[\"'][^\"'${}\s]{6,}[\"']"
)
URL_WITH_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:([^\s@/'\"]+)@")
# A test may hold a fake key, and says so in it.
FAKE = re.compile(r"(?i)test|fake|dummy|example|secret|abcdef")


def _tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, timeout=30
    ).stdout.decode()
    return [REPO / name for name in listed.split("\0") if name and (REPO / name).is_file()]


def test_no_secret_in_tracked_files() -> None:
    found = []
    for path in _tracked_files():
        try:
            text = path.read_text()
        except (UnicodeDecodeError, OSError):
            continue
        relative = path.relative_to(REPO).as_posix()
        in_tests = relative.startswith("tests/")
        for number, line in enumerate(text.splitlines(), start=1):
            for match in KEY_LIKE.finditer(line):
                if not (in_tests and FAKE.search(match.group())):
                    found.append(f"{relative}:{number}: {match.group()[:12]}…")
            if not in_tests and ASSIGNED_SECRET.search(line):
                found.append(f"{relative}:{number}: a secret assigned in code")
            for match in URL_WITH_PASSWORD.finditer(line):
                password = match.group(1)
                # ${VAR} from the environment, or a placeholder, is how a password may appear.
                if not (password.startswith("$") or set(password) <= {"*"} or FAKE.search(password)):
                    found.append(f"{relative}:{number}: a URL with a password")
    assert found == []


# -- SQL only through bound parameters


def _sql_violations(source: str, filename: str) -> list[str]:
    tree = ast.parse(source, filename=filename)
    text_names = {"text"}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sqlalchemy"):
            text_names |= {alias.asname for alias in node.names if alias.name == "text" and alias.asname}
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        function = node.func
        name = function.id if isinstance(function, ast.Name) else getattr(function, "attr", None)
        first = node.args[0]
        where = f"{filename}:{node.lineno}"
        if name in text_names and not (isinstance(first, ast.Constant) and isinstance(first.value, str)):
            found.append(f"{where}: text() of a built string: {ast.unparse(first)[:60]}")
        if name == "exec_driver_sql" and not (
            isinstance(first, ast.Constant) and first.value in REVIEWED_DRIVER_SQL
        ):
            found.append(f"{where}: exec_driver_sql({ast.unparse(first)[:60]}) is not a reviewed statement")
        # A constant statement (db/engine.py's SQLite PRAGMAs) cannot carry a value; a built one can.
        if name in ("execute", "executemany") and (
            isinstance(first, ast.JoinedStr | ast.BinOp)
            or (isinstance(first, ast.Call) and getattr(first.func, "attr", None) == "format")
        ):
            found.append(f"{where}: {name}() of a string: {ast.unparse(first)[:60]}")
    return found


def test_sql_goes_through_bound_parameters_only() -> None:
    files = [path for directory in PRODUCT_DIRS for path in sorted((REPO / directory).rglob("*.py"))]
    assert len(files) > 20
    violations = [
        violation
        for path in files
        for violation in _sql_violations(path.read_text(), path.relative_to(REPO).as_posix())
    ]
    assert violations == []


@pytest.mark.parametrize(
    ("source", "caught"),
    [
        ('conn.execute(text(f"SELECT * FROM t WHERE a = {a}"))', True),
        ('conn.execute(text("SELECT * FROM t WHERE a = %s" % a))', True),
        ('conn.execute(text("SELECT * FROM t WHERE a = {}".format(a)))', True),
        ('cursor.execute(f"DELETE FROM t WHERE a = {a}")', True),
        ('conn.exec_driver_sql("DROP TABLE t")', True),
        ('conn.execute(text("SELECT * FROM t WHERE a = :a"), {"a": a})', False),
        ("conn.execute(select(T).where(T.c.a == a))", False),
    ],
)
def test_the_sql_check_catches_what_it_should(source: str, caught: bool) -> None:
    sample = f"from sqlalchemy import select, text\n{source}\n"
    assert bool(_sql_violations(sample, "sample.py")) is caught
