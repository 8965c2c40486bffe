"""Running a tool as a new user does: `python tools/<name>.py ...` in a subprocess, from the
repository root, with the checkout on the import path; and the one-line error it prints."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ToolRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """The stderr lines that start with `error:`."""
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]


def run_tool(name: str, *args: str | Path, env: dict[str, str] | None = None) -> ToolRun:
    """Runs tools/<name>.py with one CPU thread; returns its status and output."""
    environ = {k: v for k, v in os.environ.items() if k != "DETECTOR_DEBUG"}
    environ.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})})
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / f"{name}.py"), *map(str, args)],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return ToolRun(proc.returncode, proc.stdout, proc.stderr)


def assert_user_error(run: ToolRun, message: str, status: int = 1) -> None:
    """The run failed with `status` and printed exactly one line, `message`, and no traceback."""
    assert run.returncode == status, run.stderr
    assert run.error_lines == [message], run.stderr
    assert "Traceback" not in run.stderr, run.stderr
