"""One run per OUTPUT_DIR (the lock), read-only folders, stale temporary checkpoints, and the
one-line errors of tools/train.py and tools/test.py for the run's own faults."""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from detector.data.errors import DatasetError
from detector.engine.checkpoint import CheckpointError, remove_stale_temporaries
from detector.engine.output_dir import LOCK_NAME, OutputDirError, lock_output_dir, write_text_file
from detector.engine.trainer import TrainingDivergedError

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("restore_detector_logger")


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_tool", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def read_only_dir(tmp_path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits: then sysfs)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    if not os.access(folder, os.W_OK):
        return folder
    try:
        (Path("/sys") / "detector-probe").mkdir()
    except OSError:
        return Path("/sys")
    pytest.skip("no folder is read-only for this user")


def test_the_lock_refuses_a_second_holder_naming_its_pid_and_is_released(tmp_path):
    with lock_output_dir(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputDirError) as info, lock_output_dir(tmp_path / "run"):
            pass
        assert f"in use by another training run (pid {os.getpid()}" in str(info.value)
    with lock_output_dir(tmp_path / "run"):  # released on exit
        pass


def test_a_dead_holder_does_not_block(tmp_path):
    code = (
        "import os, sys; from detector.engine.output_dir import lock_output_dir\n"
        f"lock_output_dir({str(tmp_path)!r}).__enter__(); os._exit(0)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    assert (tmp_path / LOCK_NAME).read_text().strip().isdigit()  # its pid stays in the file
    with lock_output_dir(tmp_path):
        pass


def test_read_only_output_dir_is_an_output_dir_error(read_only_dir):
    with pytest.raises(OutputDirError, match=r"OUTPUT_DIR folder .* is not writable \("):
        with lock_output_dir(read_only_dir / "run"):
            pass


@pytest.mark.parametrize("name", ["train", "test"])
def test_tools_refuse_a_read_only_output_dir_in_one_line(name, read_only_dir, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"OUTPUT_DIR: {read_only_dir / 'run'}\nMODEL:\n  DEVICE: cpu\n")
    assert _tool(name).main(["--config-file", str(config)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: OUTPUT_DIR folder {read_only_dir / 'run'}")


DATASET = DatasetError("image file not found: /data/a.jpg")
DIVERGED = TrainingDivergedError("loss became NaN or infinite at iteration 7: loss_mask = nan")
OUTPUT = OutputDirError("OUTPUT_DIR folder /x is not writable (Read-only file system)")
SAVE = CheckpointError("could not save checkpoint /x/model_0000010.pth: No space left on device")
CASES = [("train", e) for e in (DATASET, DIVERGED, OUTPUT, SAVE)] + [
    ("test", e) for e in (DATASET, OUTPUT, SAVE)
]


@pytest.mark.parametrize(
    ("name", "error"), CASES, ids=[f"{n}-{type(e).__name__}" for n, e in CASES]
)
def test_run_errors_are_one_line(name, error, tmp_path, capsys, monkeypatch):
    tool = _tool(name)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(tool, name, fail)  # train.train / test.test: the run itself
    monkeypatch.setattr(tool.comm, "init_distributed", lambda: False)
    config = tmp_path / "c.yaml"
    config.write_text(f"OUTPUT_DIR: {tmp_path / 'run'}\nMODEL:\n  DEVICE: cpu\n")
    assert tool.main(["--config-file", str(config), "DATASETS.TEST", "()"]) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {error}"]


def test_stale_temporaries_are_removed_but_not_a_live_process_s(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".model_0000010.pth.tmp-{dead}"
    live = tmp_path / f".model_0000020.pth.tmp-{os.getpid()}"
    other = tmp_path / "model_0000010.pth"
    for p in (stale, live, other):
        p.write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])


def test_a_file_system_without_locks_warns_and_goes_on(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    logger = logging.getLogger("detector.engine.output_dir")
    logger.addHandler(caplog.handler)  # whatever the 'detector' logger's propagation
    try:
        with lock_output_dir(tmp_path / "run"):
            pass
    finally:
        logger.removeHandler(caplog.handler)
    assert f"cannot lock OUTPUT_DIR {tmp_path / 'run'} (No locks available)" in caplog.text


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_full_disk_while_writing_the_config_is_a_one_line_error(tmp_path):
    """The first file a run writes (OUTPUT_DIR/config.yaml) on a full disk: OutputDirError naming
    it, no traceback into yaml or pathlib (the disk-full sibling of checkpoint writes)."""
    target = tmp_path / "config.yaml"
    target.symlink_to("/dev/full")  # every write to it fails with ENOSPC
    with pytest.raises(OutputDirError, match=r"cannot write .*config.yaml \(No space left"):
        write_text_file(target, "MODEL: {}\n")
    ok = tmp_path / "other.yaml"
    write_text_file(ok, "MODEL: {}\n")
    assert ok.read_text() == "MODEL: {}\n"
