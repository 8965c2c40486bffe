"""The README's commands, run as a newcomer would paste them (issue 19): every command of every
```bash block of README.md, in order, from the repository root.

Adapted, and only so: `my_images/` (the reader's own pictures) is a folder of pictures the test
writes, and `output/` (where the commands write) is a temporary folder. The environment is the
one running the tests: its interpreter's bin/ is first on PATH (what `source .venv/bin/activate`
does, run as it stands when this checkout has a .venv) and the checkout is on PYTHONPATH (what
`make build`'s .pth file does). `make` commands are checked with `make --dry-run` (their real
run builds .venv from the network; test_shapes_recipe.py runs `make train`'s job on a few
iterations), and `make test` would run this test again.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.export.tiny_model import load_tool

ROOT = Path(__file__).resolve().parents[1]
TOOL = re.compile(r"(?:^|\s)tools/(\w+)\.py\b")


def readme_commands(text: str) -> list[str]:
    """The commands of the ```bash blocks: lines joined at a trailing backslash, comments and
    blank lines dropped."""
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", text, flags=re.M | re.S):
        joined = re.sub(r"\\\n", "", block)
        for line in joined.splitlines():
            command = _strip_comment(line).strip()
            if command:
                commands.append(command)
    return commands


def _strip_comment(line: str) -> str:
    """The line without a `# ...` comment outside quotes."""
    quote = ""
    for i, char in enumerate(line):
        if char in "\"'" and quote in ("", char):
            quote = "" if quote else char
        elif char == "#" and not quote and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


COMMANDS = readme_commands((ROOT / "README.md").read_text())


def test_readme_activates_the_venv_before_any_python_command() -> None:
    """Was: `python tools/train.py` straight after `make`: "No module named 'torch'"."""
    python = [i for i, c in enumerate(COMMANDS) if re.match(r"(python|torchrun)\b", c)]
    assert python and COMMANDS.index("source .venv/bin/activate") < python[0]


@pytest.mark.parametrize("command", [c for c in COMMANDS if TOOL.search(c)])
def test_readme_tool_flags_exist(command: str) -> None:
    """Quick drift check: every --flag a README command gives its tool is one the tool knows."""
    name = TOOL.search(command).group(1)
    parser = load_tool(name).build_parser()
    known = {s for action in parser._actions for s in action.option_strings}
    words = shlex.split(command)
    start = next(i for i, w in enumerate(words) if w == f"tools/{name}.py") + 1
    after_tool = {w.split("=")[0] for w in words[start:] if w.startswith("--")}
    assert after_tool <= known, (name, after_tool - known)


def _environment() -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "DETECTOR_DEBUG"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", PYTHONPATH=str(ROOT))
    env.update(OMP_NUM_THREADS="1", VIRTUAL_ENV=str(Path(sys.executable).parent.parent))
    return env


def _adapt(command: str, tmp: Path) -> str:
    if command == "source .venv/bin/activate" and not (ROOT / ".venv").is_dir():
        return "true"  # _environment() already did what it does
    if command.startswith("make "):
        return f"make --dry-run {command[5:]}"
    command = re.sub(r"(?<![\w/.])output/", f"{tmp}/output/", command)
    return re.sub(r"(?<![\w/.])my_images/", f"{tmp}/my_images/", command)


def _write_images(folder: Path) -> None:
    folder.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for name, size in (("a.png", (96, 128)), ("b.jpg", (128, 100))):
        Image.fromarray(rng.randint(0, 256, (*size, 3), dtype=np.uint8)).save(folder / name)


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path: Path) -> None:
    _write_images(tmp_path / "my_images")
    (tmp_path / "output").mkdir()
    env = _environment()
    for command in COMMANDS:
        adapted = _adapt(command, tmp_path)
        proc = subprocess.run(
            ["bash", "-c", adapted], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=1200,
        )  # fmt: skip
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    demo = tmp_path / "output" / "readme" / "demo"
    assert sorted(p.name for p in demo.iterdir()) == ["a.png", "b.jpg", "predictions.json"]
