"""`wre demo` end to end: an embedded store and broker, a real worker and beat in-process, a promotion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.processes import REPO


def test_demo_shows_the_loop_and_ends_on_the_dashboard(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WRE_")}
    env.update({"COLUMNS": "160", "PYTHONPATH": str(REPO)})
    done = subprocess.run(
        [sys.executable, "-m", "wre", "demo", "--runs", "150"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "registered summarize_ticket" in out
    assert "evolved" in out and "enters A/B test" in out
    assert "promoted" in out and "wins its A/B test" in out
    assert "dashboard" in out and "running A/B tests" in out
    # The closing screen names both fidelities and says what the decided tests compared.
    assert "first-attempt fidelity" in out and "delivered fidelity" in out
    assert "what improved" in out and "promoted; first-attempt fidelity (mean) control" in out
    assert (tmp_path / "wre-demo.db").exists()
    assert "Traceback" not in done.stderr
