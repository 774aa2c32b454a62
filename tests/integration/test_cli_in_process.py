"""`wre` commands run in this process (a subprocess per case would cost seconds each): every command given
bad input (one line on stderr, a non-zero exit, no traceback, nothing written), skill add, piped tables.
What only a separate process shows (a worker, the interpreter's exit) is in test_cli.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from db.memory import PatternMemory
from db.models import Base
from worker.settings import get_settings
from wre.cli import main
from wre.context import store

SCHEMA_SKILL = """---
name: needs_text
agent: python
entrypoint: skills.examples:extract_contact
input:
  type: object
  required: [text]
  properties: {text: {type: string, minLength: 1}}
steps:
  - {id: email, expect: {key: email}}
---
Extract the contact.
"""
BAD_FILE = "---\nname: bad\nagent: simulated\nthreshold: 1.5\nsteps:\n  - {id: a, expect: {key: a}}\n---\nbody\n"


@pytest.fixture
def cli_env(
    memory: PatternMemory, database_url: str, broker_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[PatternMemory]:
    monkeypatch.setenv("WRE_DATABASE_URL", database_url)
    monkeypatch.setenv("WRE_BROKER_URL", broker_url)
    monkeypatch.setenv("COLUMNS", "200")
    get_settings.cache_clear()
    store.cache_clear()
    yield memory
    get_settings.cache_clear()
    store.cache_clear()


def invoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `wre ARGS` in this process; (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        main(list(args))
    out, err = capsys.readouterr()
    code = exited.value.code
    return (code if isinstance(code, int) else 1), out, err


def snapshot(memory: PatternMemory, broker_url: str) -> dict[str, int]:
    """Rows in every table and messages on the broker: what "nothing written" compares."""
    with memory.transaction() as conn:
        counts = {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                  for t in Base.metadata.sorted_tables}
    # The broker's queues (lists); results of earlier tests' runs expire meanwhile, so keys are not counted.
    client = redis.Redis.from_url(broker_url)
    for key in client.scan_iter():
        if client.type(key) == b"list":
            counts[f"queue {key.decode()}"] = int(client.llen(key))
    return counts


def seeded(memory: PatternMemory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    schema_file = tmp_path / "needs_text.md"
    schema_file.write_text(SCHEMA_SKILL)
    code, _, err = invoke(capsys, "skill", "add", "skills/summarize_ticket.md", str(schema_file))
    assert code == 0, err


CASES: list[tuple[list[str], str]] = [
    (["--bogus"], "No such option"),
    (["nosuchcmd"], "No such command"),
    (["db", "upgrade", "no_such_revision"], "no_such_revision"),
    (["db", "downgrade", "no_such_revision"], "no_such_revision"),
    (["skill", "add", "no/such/file.md"], "file.md"),
    (["skill", "add", "skills/summarize_ticket.md", "@BAD"], "bad.md:4"),
    (["skill", "add", "@CHANGED"], "differs from production in"),
    (["skill", "show", "nope"], "unknown skill"),
    (["skill", "list", "--json", "extra"], "unexpected extra argument"),
    (["ab", "list", "--status", "foo"], "--status must be one of"),
    (["ab", "list", "--skill", "nope"], "unknown skill"),
    (["ab", "show", "99"], "unknown A/B test"),
    (["ab", "show", "x"], "TEST_ID"),
    (["ab", "start", "nope", "feedfeedfeedfeed"], "unknown skill"),
    (["ab", "start", "summarize_ticket", "feedfeedfeedfeed"], "neither a skill file nor a known variation id"),
    (["ab", "start", "summarize_ticket", "feedfeedfeedfeed", "--policy", "foo"], "foo"),
    (["ab", "start", "summarize_ticket", "@CHANGED", "--policy", "margin"], "margin rule is kept for comparison only"),
    (["ab", "stop", "7"], "not open"),
    (["ab", "rollback", "nope"], "unknown skill"),
    (["run", "nope"], "unknown skill 'nope'"),
    (["run", "summarize_ticket", "--agent", "nope"], "unknown agent 'nope'"),
    (["run", "summarize_ticket", "--context", "[1]"], "JSON object"),
    (["run", "summarize_ticket", "--context", "{oops"], "not JSON"),
    (["run", "summarize_ticket", "--context", "@no/such/context.json"], "cannot read"),
    (["run", "summarize_ticket", "--wait", "--timeout", "-1"], "--timeout must be"),
    (["run", "summarize_ticket", "--timeout", "abc"], "--timeout"),
    (["run", "needs_text", "--context", "{}"], "'text' is a required property"),
    (["run", "needs_text", "--context", '{"text": 5}'], "at text"),
    (["result", "not-a-run-id"], "is not a run id"),
    (["result", "0b8e5a52-5d7c-4d4c-9d0e-2b1f7b3c9a10", "--timeout", "0"], "--timeout must be"),
    (["dashboard", "--window", "-5"], "--window"),
    (["dashboard", "--window", "0"], "--window"),
    (["exporter", "--port", "0"], "--port"),
    (["exporter", "--window", "0"], "--window"),
    (["report", "--buckets", "0"], "--buckets"),
    (["report", "-o", "no/such/dir/report.html"], "no/such/dir"),
    (["demo", "--runs", "5"], "--runs"),
]


@pytest.mark.parametrize(("args", "expected"), CASES, ids=[" ".join(args) for args, _ in CASES])
def test_bad_input_is_one_line_and_changes_nothing(
    cli_env: PatternMemory, broker_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    args: list[str], expected: str,
) -> None:
    seeded(cli_env, tmp_path, capsys)
    (tmp_path / "bad.md").write_text(BAD_FILE)
    (tmp_path / "changed.md").write_text(Path("skills/summarize_ticket.md").read_text() + "\nBe brief.\n")
    files = {"@BAD": str(tmp_path / "bad.md"), "@CHANGED": str(tmp_path / "changed.md")}
    args = [files.get(arg, arg) for arg in args]
    before = snapshot(cli_env, broker_url)
    code, out, err = invoke(capsys, *args)
    assert code != 0, (out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err + out
    assert snapshot(cli_env, broker_url) == before


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("WRE_DATABASE_URL", "notaurl", "WRE_DATABASE_URL: not a database URL"),
        ("WRE_DATABASE_URL", "mysql://root@127.0.0.1/wre", "mysql:// is not supported"),
        ("WRE_AB_POLICY", "foo", "WRE_AB_POLICY"),
        ("WRE_AB_POLICY", "margin", "WRE_AB_POLICY=margin is out of range: must be 'sequential'"),
        ("WRE_AB_EVAL_SECONDS", "0", "WRE_AB_EVAL_SECONDS=0 is out of range: must be within [1, 3600]"),
        ("WRE_SCREEN_MAX_CALLS", "10", "WRE_SCREEN_MAX_CALLS=10 is out of range: must be within [90, 10000]"),
        ("WRE_REACT_MAX_ITER", "50", "WRE_REACT_MAX_ITER=50 is out of range: must be within [1, 10]"),
        ("WRE_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/none", "cannot reach the database"),
    ],
)
def test_bad_settings_are_one_line(
    cli_env: PatternMemory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    variable: str, value: str, expected: str,
) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    store.cache_clear()
    for args in (["skill", "list"], ["dashboard"], ["run", "summarize_ticket"]):
        code, _, err = invoke(capsys, *args)
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and expected in lines[0], (args, err)


def test_skill_add_is_idempotent_and_all_or_nothing(
    cli_env: PatternMemory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    memory = cli_env
    assert invoke(capsys, "skill", "add", "skills/summarize_ticket.md")[0] == 0
    baseline, content = memory.get_production("summarize_ticket")
    evolved = memory.store_variation("summarize_ticket", content + "\nBe brief.\n", parent_version=baseline,
                                     created_by="evolver")
    memory.promote_variation(evolved)
    code, out, err = invoke(capsys, "skill", "add", "skills/summarize_ticket.md", "skills/extract_contact.md")
    assert code == 0, err
    assert "unchanged summarize_ticket" in out and f"production {evolved}" in out
    assert memory.get_production("summarize_ticket")[0] == evolved  # the promotion stands
    changed = tmp_path / "summarize_ticket.md"
    changed.write_text(Path("skills/summarize_ticket.md").read_text().replace("Summarize", "Sum up", 1))
    other = tmp_path / "classify.md"
    other.write_text(Path("skills/classify_intent.md").read_text())
    code, out, err = invoke(capsys, "skill", "add", str(other), str(changed))
    assert code == 1
    assert "differs from production in description" in err and "--replace" in err and "evolved" in err
    assert "classify_intent" not in {row.name for row in memory.list_skills()}  # all or nothing
    code, out, err = invoke(capsys, "skill", "add", "--replace", str(changed))
    assert code == 0 and f"was {evolved}" in out, err
    assert memory.get_skill("summarize_ticket").previous_variation_id == evolved  # type: ignore[union-attr]


def test_version_json_and_piped_tables_keep_whole_names(
    cli_env: PatternMemory, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    long_name = "classify_intent_of_a_customer_message_with_a_long_name"
    text = Path("skills/classify_intent.md").read_text().replace("name: classify_intent", f"name: {long_name}")
    (tmp_path / "long.md").write_text(text)
    assert invoke(capsys, "skill", "add", str(tmp_path / "long.md"))[0] == 0
    monkeypatch.delenv("COLUMNS")  # a pipe: 80 columns by default
    code, out, _ = invoke(capsys, "--version")
    assert code == 0 and out.startswith("wre ")
    code, out, _ = invoke(capsys, "skill", "list")
    assert code == 0 and [line for line in out.splitlines() if long_name in line], out
    code, out, _ = invoke(capsys, "skill", "list", "--json")
    assert json.loads(out)[0]["name"] == long_name
    code, out, _ = invoke(capsys, "skill", "show", long_name, "--json")
    assert json.loads(out)["metrics"]["median_fidelity_reads"] == "first attempts"
    code, out, _ = invoke(capsys, "ab", "list", "--json")
    assert code == 0 and json.loads(out) == []


def test_ab_show_is_a_panel_of_every_field(
    cli_env: PatternMemory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    memory = cli_env
    assert invoke(capsys, "skill", "add", "skills/summarize_ticket.md")[0] == 0
    production, content = memory.get_production("summarize_ticket")
    variation = memory.store_variation("summarize_ticket", content + "\nv2\n", parent_version=production)
    test_id = memory.schedule_ab_test("summarize_ticket", production, variation, sample_size_target=1,
                                      policy="margin")
    memory.record_ab_outcome(test_id, "control", False)
    memory.record_ab_outcome(test_id, "treatment", True)
    assert [c.winner for c in memory.evaluate_running_tests()] == ["treatment"]
    # A field the record grows later (a pause flag, a guard phase) shows up without a change here.
    from db.records import AbTestRecord

    plain = AbTestRecord.to_dict
    monkeypatch.setattr(AbTestRecord, "to_dict", lambda self: {**plain(self), "guard_phase": "holdout"})
    code, out, err = invoke(capsys, "ab", "show", str(test_id))
    assert code == 0, err
    assert f"A/B test #{test_id}" in out and "the decision" in out
    assert "guard phase" in out and "holdout" in out
    assert f"{variation}: 1/1 (100%) successes" in out
    assert "{" not in out  # a panel, not a Python dict
    code, out, _ = invoke(capsys, "ab", "show", str(test_id), "--json")
    shown = json.loads(out)
    assert shown["winner"] == "treatment" and shown["guard_phase"] == "holdout" and shown["verdict_now"] is None


def test_help_names_values_in_words(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command's help: no Python type placeholders (`<bool>`, `<list[Path]>`), exit 0."""
    import typer.main

    from wre.cli import app

    def paths(command: object, prefix: list[str]) -> Iterator[list[str]]:
        yield prefix
        for name, sub in getattr(command, "commands", {}).items():
            yield from paths(sub, [*prefix, name])

    every = list(paths(typer.main.get_command(app), []))
    assert ["run"] in every and ["result"] in every and ["ab", "show"] in every and ["skill", "add"] in every
    for path in every:
        code, out, err = invoke(capsys, *path, "--help")
        assert code == 0 and "Usage" in out, (path, err)
        assert not re.search(r"<[a-z]", out), (path, out)  # e.g. <bool>, <list[Path]>, <str>
