"""The `wre` command line as a user meets it: real subprocesses against the test database and broker."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from db.memory import PatternMemory
from tests.processes import REPO, broker_app, running, service_env, start_worker

WRE = [sys.executable, "-m", "wre"]


def wre(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WRE, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def env(memory: PatternMemory, database_url: str, broker_url: str) -> dict[str, str]:
    return service_env(database_url, broker_url, COLUMNS="200")


def test_db_upgrade_on_an_empty_database(tmp_path: Path, broker_url: str) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    done = wre(service_env(url, broker_url), "db", "upgrade")
    assert done.returncode == 0, done.stderr
    assert "head" in done.stdout
    assert (tmp_path / "fresh.db").exists()


def test_skill_add_list_show(env: dict[str, str], memory: PatternMemory) -> None:
    added = wre(env, "skill", "add", "skills/summarize_ticket.md", "skills/extract_contact.md")
    assert added.returncode == 0, added.stderr
    assert "registered summarize_ticket" in added.stdout
    listed = wre(env, "skill", "list")
    assert "summarize_ticket" in listed.stdout and "extract_contact" in listed.stdout
    shown = wre(env, "skill", "show", "summarize_ticket")
    assert shown.returncode == 0 and "pass_probability" in shown.stdout
    assert {row.name for row in memory.list_skills()} == {"summarize_ticket", "extract_contact"}


def test_malformed_skill_file_is_one_clear_line(env: dict[str, str], memory: PatternMemory, tmp_path: Path) -> None:
    bad = tmp_path / "bad.md"
    bad.write_text(
        "---\nname: bad\nagent: simulated\nthreshold: 1.5\nsteps:\n  - {id: a, expect: {key: a}}\n"
        "simulation: {pass_probability: 0.5}\n---\nbody\n"
    )
    done = wre(env, "skill", "add", str(bad))
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.md:4" in lines[0] and "threshold" in lines[0], done.stderr
    assert memory.list_skills() == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["skill", "show", "nope"], "unknown skill"),
        (["ab", "show", "99"], "unknown A/B test"),
        (["ab", "rollback", "nope"], "unknown skill"),
        (["ab", "stop", "7"], "not running"),
        (["run", "x", "--context", "[1]"], "JSON object"),
        (["run", "x", "--context", "{oops"], "not JSON"),
    ],
)
def test_user_errors_are_one_line(env: dict[str, str], args: list[str], message: str) -> None:
    done = wre(env, *args)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and message in done.stderr, done.stderr


def test_unreachable_database_is_one_line(broker_url: str) -> None:
    done = wre(service_env("postgresql://postgres@127.0.0.1:1/none", broker_url), "skill", "list")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "cannot reach the database" in done.stderr


def test_unreachable_broker_is_one_line(memory: PatternMemory, database_url: str) -> None:
    env = service_env(database_url, "redis://127.0.0.1:1/0")
    done = wre(env, "run", "echo", "--context", "{}")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "cannot reach the broker" in done.stderr, done.stderr


def test_unknown_policy_is_refused_at_start(env: dict[str, str], memory: PatternMemory) -> None:
    assert wre(env, "skill", "add", "skills/summarize_ticket.md").returncode == 0
    production, content = memory.get_production("summarize_ticket")
    variation = memory.store_variation("summarize_ticket", content + "\nv2\n", parent_version=production)
    done = wre(env, "ab", "start", "summarize_ticket", variation, "--policy", "bayes")
    assert done.returncode == 1 and "unknown policy" in done.stderr
    assert memory.list_ab_tests() == []


def test_ab_start_show_stop_and_rollback(env: dict[str, str], memory: PatternMemory) -> None:
    assert wre(env, "skill", "add", "skills/summarize_ticket.md").returncode == 0
    production, content = memory.get_production("summarize_ticket")
    variation = memory.store_variation("summarize_ticket", content + "\nBe brief.\n", parent_version=production)
    started = wre(env, "ab", "start", "summarize_ticket", variation)
    assert started.returncode == 0, started.stderr
    test = memory.get_active_ab_test("summarize_ticket")
    assert test is not None and test.treatment_version == variation
    assert f"#{test.test_id}" in wre(env, "ab", "list").stdout
    shown = wre(env, "ab", "show", str(test.test_id))
    assert "should_promote" in shown.stdout
    assert wre(env, "ab", "stop", str(test.test_id)).returncode == 0
    assert memory.get_active_ab_test("summarize_ticket") is None
    memory.promote_variation(variation)
    rolled = wre(env, "ab", "rollback", "summarize_ticket")
    assert rolled.returncode == 0, rolled.stderr
    assert memory.get_production("summarize_ticket")[0] == production


def test_run_wait_and_dashboard(env: dict[str, str], memory: PatternMemory, database_url: str, broker_url: str,
                                tmp_path: Path) -> None:
    assert wre(env, "skill", "add", "skills/extract_contact.md").returncode == 0
    app = broker_app(database_url, broker_url)
    with running(start_worker(app, env, tmp_path)):
        done = wre(env, "run", "extract_contact", "--context",
                   '{"text": "Ada, ada@example.org, +44 20 7946 0958"}', "--wait")
    assert done.returncode == 0, done.stderr
    assert '"success": true' in done.stdout and "ada@example.org" in done.stdout
    dashboard = wre(env, "dashboard")
    assert dashboard.returncode == 0
    assert "extract_contact" in dashboard.stdout and "runs" in dashboard.stdout


def test_help_everywhere(env: dict[str, str]) -> None:
    for args in (["--help"], ["skill", "--help"], ["ab", "--help"], ["run", "--help"], ["demo", "--help"],
                 ["dashboard", "--help"], ["db", "upgrade", "--help"]):
        done = wre(env, *args)
        assert done.returncode == 0 and "Usage" in done.stdout, args


def test_skill_add_refuses_a_time_limit_past_the_visibility_timeout(
    memory: PatternMemory, database_url: str, broker_url: str
) -> None:
    # 60 s x 3 attempts reaches a 100 s visibility timeout: the broker would hand the run to a second worker.
    env = service_env(database_url, broker_url, COLUMNS="200", WRE_VISIBILITY_TIMEOUT_SECONDS="100")
    added = wre(env, "skill", "add", "skills/llm_summarize.md")
    assert added.returncode == 1
    message = (added.stdout + added.stderr).strip()
    assert "visibility timeout" in message and "WRE_VISIBILITY_TIMEOUT_SECONDS" in message
    assert memory.list_skills() == []
