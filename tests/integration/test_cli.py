"""The `wre` command line as a user meets it: real subprocesses against the test database and broker."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from db.memory import PatternMemory
from tests.processes import REPO, broker_app, running, service_env, start_worker
from worker.registry import register_skill_file

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


# Each command's bad input (one line, non-zero exit, nothing written) is driven in process, where it costs
# milliseconds rather than a Python start-up per case: test_cli_in_process.py.


def test_unreachable_database_is_one_line(broker_url: str) -> None:
    done = wre(service_env("postgresql://postgres@127.0.0.1:1/none", broker_url), "skill", "list")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr and "cannot reach the database" in done.stderr


def test_unreachable_broker_is_one_line(memory: PatternMemory, database_url: str) -> None:
    register_skill_file(memory, "skills/summarize_ticket.md")
    env = service_env(database_url, "redis://127.0.0.1:1/0")
    done = wre(env, "run", "summarize_ticket", "--context", "{}")
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
    test = memory.running_test("summarize_ticket")
    assert test is not None and test.treatment_version == variation
    assert f"#{test.test_id}" in wre(env, "ab", "list").stdout
    shown = wre(env, "ab", "show", str(test.test_id))
    assert "the policy now" in shown.stdout and "should promote" in shown.stdout
    assert "treatment" in shown.stdout and variation in shown.stdout
    assert wre(env, "ab", "stop", str(test.test_id)).returncode == 0
    assert memory.get_active_ab_test("summarize_ticket") is None
    memory.promote_variation(variation)
    rolled = wre(env, "ab", "rollback", "summarize_ticket", "--expect", variation)
    assert rolled.returncode == 0, rolled.stderr
    assert memory.get_production("summarize_ticket")[0] == production


def test_run_wait_result_and_dashboard(env: dict[str, str], memory: PatternMemory, database_url: str,
                                      broker_url: str, tmp_path: Path) -> None:
    register_skill_file(memory, "skills/extract_contact.md")
    context_file = tmp_path / "context.json"
    context_file.write_text(json.dumps({"text": "Ada, ada@example.org, +44 20 7946 0958"}))
    app = broker_app(database_url, broker_url)
    with running(start_worker(app, env, tmp_path)):
        done = wre(env, "run", "extract_contact", "--context", f"@{context_file}", "--wait", "--json")
        # From stdin; this message has no e-mail address: the run fails its checks, and --wait says so.
        failed = subprocess.run([*WRE, "run", "extract_contact", "--context", "-", "--wait", "--json"], env=env,
                                cwd=REPO, capture_output=True, text=True, timeout=60,
                                input=json.dumps({"text": "Call Bob on +44 20 7946 0000"}))
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["success"] is True and result["result"]["email"] == "ada@example.org"
    assert [attempt["fidelity"] for attempt in result["_react_metadata"]["all_attempts"]] == [1.0]
    assert failed.returncode == 3, failed.stderr
    assert json.loads(failed.stdout)["success"] is False and "did not succeed" in failed.stderr
    fetched = wre(env, "result", result["execution_id"], "--json")
    assert fetched.returncode == 0, fetched.stderr
    assert json.loads(fetched.stdout)["execution_id"] == result["execution_id"]
    dashboard = wre(env, "dashboard", "--json")
    figures = json.loads(dashboard.stdout)
    assert figures["overall"]["total_runs"] == 2
    assert {row["skill_name"] for row in figures["skills"]} == {"extract_contact"}


def test_run_wait_without_a_worker_is_one_line(env: dict[str, str], memory: PatternMemory) -> None:
    register_skill_file(memory, "skills/summarize_ticket.md")
    done = wre(env, "run", "summarize_ticket", "--wait", "--timeout", "1")
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and "no result in time" in errors[0], done.stderr
    # The AsyncResult's cleanup at interpreter exit used to print a traceback here.
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done.stderr


def test_the_entry_point_answers(env: dict[str, str]) -> None:
    """`python -m wre` and its help (every command's help is checked in process, test_cli_in_process.py)."""
    done = wre(env, "--help")
    assert done.returncode == 0 and "Usage" in done.stdout and "result" in done.stdout
