"""`wre ab start FILE`, `wre skill history` and `wre ab rollback --to/--expect` as an operator meets them."""

from __future__ import annotations

from pathlib import Path

from db.memory import PatternMemory
from tests.integration.test_cli import env, wre  # noqa: F401 - the fixture is used by name

SKILL_FILE = Path("skills/extract_contact.md")


def test_start_a_hand_written_file_then_roll_production_back(
    env: dict[str, str], memory: PatternMemory, tmp_path: Path  # noqa: F811
) -> None:
    assert wre(env, "skill", "add", str(SKILL_FILE)).returncode == 0
    base, content = memory.get_production("extract_contact")
    variant = tmp_path / "variant.md"
    variant.write_text(content.rstrip() + "\nBe terse.\n")
    started = wre(env, "ab", "start", "extract_contact", str(variant))
    assert started.returncode == 0, started.stderr
    [test] = memory.list_ab_tests()
    treatment = test.treatment_version
    assert test.control_version == base and memory.get_variation(treatment).created_by == "operator"  # type: ignore[union-attr]

    # A file of another skill, or one that does not parse, is one line and changes nothing.
    other = tmp_path / "other.md"
    other.write_text(content.replace("name: extract_contact", "name: someone_else"))
    broken = tmp_path / "broken.md"
    broken.write_text("---\nname: extract_contact\nsteps: 3\n---\n")
    for path in (other, broken):
        refused = wre(env, "ab", "start", "extract_contact", str(path))
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert len(memory.list_ab_tests()) == 1

    memory.promote_variation(treatment)  # by hand; stops the test
    history = wre(env, "skill", "history", "extract_contact")
    assert history.returncode == 0, history.stderr
    assert "registration" in history.stdout and "manual" in history.stdout and treatment in history.stdout

    # Without --expect the command names the current version and changes nothing.
    unsure = wre(env, "ab", "rollback", "extract_contact")
    assert unsure.returncode != 0 and f"--expect {treatment}" in unsure.stderr
    stale = wre(env, "ab", "rollback", "extract_contact", "--expect", base)
    assert stale.returncode != 0 and "changed since you looked" in stale.stderr
    assert memory.get_production("extract_contact")[0] == treatment
    done = wre(env, "ab", "rollback", "extract_contact", "--to", base, "--expect", treatment)
    assert done.returncode == 0, done.stderr
    assert memory.get_production("extract_contact")[0] == base
    reasons = [change.reason for change in memory.production_history("extract_contact")]
    assert reasons == ["registration", "manual", "rollback"]
