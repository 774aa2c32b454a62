"""A worker, beat, producer or `wre` command started with a bad setting, or pointed at a database that cannot
serve it, exits at once with one line saying why."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import create_database, drop_database
from tests.processes import REPO, broker_app, service_env, start_beat, start_worker

EXIT_SECONDS = 30


@pytest.fixture(scope="module")
def unmigrated_url() -> Iterator[str]:
    url = create_database("wre_unmigrated")
    yield url
    drop_database(url)


def _missing_url(database_url: str) -> str:
    return make_url(database_url).set(database="wre_no_such_database").render_as_string(hide_password=False)


@pytest.mark.parametrize("case", ["missing", "unmigrated"])
def test_worker_and_beat_exit_with_one_line(
    case: str, database_url: str, unmigrated_url: str, broker_url: str, tmp_path: Path
) -> None:
    url = _missing_url(database_url) if case == "missing" else unmigrated_url
    expected = "does not exist" if case == "missing" else "is not migrated"
    env = service_env(url, broker_url)
    with pytest.raises(RuntimeError, match="exited at start") as caught:
        start_worker(broker_app(url, broker_url), env, tmp_path, concurrency=1)
    lines = [line for line in str(caught.value).splitlines() if "wre: cannot start" in line]
    assert len(lines) == 1 and expected in lines[0], str(caught.value)[-2000:]
    beat = start_beat(env, tmp_path)
    try:
        status = beat.popen.wait(EXIT_SECONDS)
    except subprocess.TimeoutExpired:
        beat.stop()
        pytest.fail(f"beat kept running against a {case} database:\n{beat.log()[-2000:]}")
    beat.stop()
    assert status != 0
    # beat routes stderr through its logger: the line comes prefixed with a timestamp.
    assert sum(expected in line for line in beat.log().splitlines() if "wre: cannot start" in line) == 1



def test_a_bad_setting_stops_every_process_at_start_in_one_line(
    database_url: str, broker_url: str, tmp_path: Path
) -> None:
    env = service_env(
        database_url, broker_url, WRE_AB_EVAL_SECONDS="0", WRE_DATABASE_URL="mysql://root:fakepassword@127.0.0.1/wre"
    )
    expected = (
        "WRE_DATABASE_URL: mysql:// is not supported",
        "WRE_AB_EVAL_SECONDS=0 is out of range: must be within [1, 3600]",
    )
    with pytest.raises(RuntimeError, match="exited at start") as caught:
        start_worker(broker_app(database_url, broker_url), env, tmp_path, concurrency=1)
    outputs = {"worker": str(caught.value).split("\n", 1)[1]}
    beat = start_beat(env, tmp_path)
    try:
        assert beat.popen.wait(EXIT_SECONDS) != 0
    finally:
        beat.stop()
    outputs["beat"] = beat.log()
    for name, command in {
        "producer": [sys.executable, "-c", "from worker.client import enqueue_skill"],
        "wre": [sys.executable, "-m", "wre", "skill", "list"],
    }.items():
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=EXIT_SECONDS)
        assert done.returncode != 0, (name, done.stdout)
        outputs[name] = done.stdout + done.stderr
    for name, output in outputs.items():
        refusals = [line for line in output.splitlines() if all(part in line for part in expected)]
        assert len(refusals) == 1 and "Traceback" not in output and "fakepassword" not in output, (name, output)
