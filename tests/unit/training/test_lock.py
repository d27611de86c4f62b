"""One writer per output folder: a live holder refuses a second run, a dead one's lock is taken over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from newllm.cli import main
from newllm.training.lock import LOCK_NAME, FolderInUseError, folder_lock

from tests.helpers import STEP_OPTIONS, snapshot, write_data_dir


def _lock(folder, pid, host=None):
    folder.mkdir(parents=True, exist_ok=True)
    record = {"pid": pid, "host": host or socket.gethostname(), "command": "newllm pretrain", "started": "then"}
    (folder / LOCK_NAME).write_text(json.dumps(record))


@pytest.fixture
def live_process():
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process.pid
    process.kill()
    process.wait()


def test_a_second_run_into_a_folder_in_use_is_refused_in_one_line_and_touches_nothing(tmp_path, capsys, live_process):
    data, out = write_data_dir(tmp_path / "data"), tmp_path / "out"
    _lock(out, live_process)
    before = snapshot(out)
    code = main(["-q", "pretrain", *STEP_OPTIONS, "--data-dir", str(data), "--output-dir", str(out), "--overwrite"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith(f"newllm: error: {out.resolve()} is in use by process {live_process} ")
    assert snapshot(out) == before


def test_the_lock_of_a_run_that_is_gone_is_taken_over_and_released(tmp_path, caplog):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "out"
    _lock(folder, int(dead.stdout))
    with folder_lock(folder, "test"):
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()
        with folder_lock(folder, "nested"):  # the pipeline's steps inside `pipeline`
            pass
        assert (folder / LOCK_NAME).is_file()
    assert not (folder / LOCK_NAME).exists()
    assert "taking over the lock of a run that is gone" in caplog.text


def test_another_hosts_lock_is_refused_and_a_new_folder_is_not_left_behind(tmp_path):
    folder = tmp_path / "out"
    _lock(folder, 1, host="elsewhere")
    with pytest.raises(FolderInUseError, match="in use by process 1 on elsewhere"):
        with folder_lock(folder, "test"):
            pass
    fresh = tmp_path / "fresh"
    with folder_lock(fresh, "test"):
        assert fresh.is_dir()
    assert not fresh.exists()  # created for the lock alone, and left empty: removed again
