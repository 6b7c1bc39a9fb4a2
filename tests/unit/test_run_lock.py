"""One writer per directory (``srpo_mcore.run_lock``): both mechanisms, refusal, stale takeover.

flock locks belong to open file descriptions, so two ``hold_dir`` calls in one process conflict as
two processes would; the cross-process cases (a SIGKILLed holder) are in tests/e2e/test_job_lifetime.py.
"""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

from srpo_mcore.checkpoint.train_state import resume_problem
from srpo_mcore.run_lock import DirLocked, hold_dir, lock_path


def _dead_pid() -> int:
    pid = 4_000_000  # above Linux's pid_max (2**22): never a live process
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    return pid


@pytest.mark.parametrize("mode", ["flock", "lease"])
def test_second_writer_is_refused_naming_the_holder(tmp_path, mode) -> None:
    run = tmp_path / "run"
    with hold_dir(run, "the GRPO trainer", mode=mode) as path:
        assert path == run / ".lock"
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        refused = rf"is being written by the GRPO trainer \(pid {os.getpid()} on "
        with pytest.raises(DirLocked, match=refused), hold_dir(run, "another trainer", mode=mode):
            pytest.fail("two writers held one directory")
        assert json.loads(path.read_text()) == record, "the refused writer changed the holder's record"
    with hold_dir(run, "the next trainer", mode=mode):  # released on exit
        assert json.loads((run / ".lock").read_text())["what"] == "the next trainer"


def test_refusal_says_how_to_proceed(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    with hold_dir(tmp_path, "the SFT trainer"):
        monkeypatch.delenv("SLURM_JOB_ID")
        with pytest.raises(DirLocked) as e, hold_dir(tmp_path, "x"):
            pass
    msg = str(e.value)
    assert "SLURM job 4242" in msg and "scancel 4242" in msg and "taken over automatically" in msg


def test_a_released_flock_leaves_a_record_and_no_lock(tmp_path) -> None:
    """The kernel drops a dead holder's flock: the stale record alone never blocks."""
    with hold_dir(tmp_path, "first"):
        pass
    assert json.loads((tmp_path / ".lock").read_text())["what"] == "first"
    with hold_dir(tmp_path, "second"):
        assert json.loads((tmp_path / ".lock").read_text())["what"] == "second"


def test_stale_lease_of_a_dead_process_is_taken_over(tmp_path) -> None:
    path = lock_path(tmp_path)
    path.write_text(json.dumps({"what": "killed job", "pid": _dead_pid(), "host": socket.gethostname()}))
    with hold_dir(tmp_path, "new job", mode="lease"):
        assert json.loads(path.read_text())["what"] == "new job"
    assert not path.exists(), "a lease is removed on release"
    assert not list(tmp_path.glob(".lock.stale-*"))


def test_lease_of_another_host_expires_without_heartbeat(tmp_path) -> None:
    path = lock_path(tmp_path)
    path.write_text(json.dumps({"what": "elsewhere", "pid": 1, "host": "other-node-17"}))
    with pytest.raises(DirLocked, match="other-node-17"), hold_dir(tmp_path, "me", mode="lease", stale_s=60):
        pass  # fresh: the other host may be alive
    old = time.time() - 120
    os.utime(path, (old, old))
    with hold_dir(tmp_path, "me", mode="lease", stale_s=60):
        assert json.loads(path.read_text())["what"] == "me"


def test_lease_heartbeat_keeps_it_fresh(tmp_path) -> None:
    path = lock_path(tmp_path)
    with hold_dir(tmp_path, "me", mode="lease", heartbeat_s=0.05):
        old = time.time() - 120
        os.utime(path, (old, old))
        time.sleep(0.5)
        assert time.time() - path.stat().st_mtime < 5, "the holder did not refresh its lease"


def test_directory_that_appears_at_end_locks_its_sibling(tmp_path) -> None:
    out = tmp_path / "hf_out"
    with hold_dir(out, "a converter", appears_at_end=True) as path:
        assert path == tmp_path / ".hf_out.lock" and not out.exists()


def test_unknown_mode_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SRPO_LOCK", "posix")
    with pytest.raises(ValueError, match="SRPO_LOCK='posix'"), hold_dir(tmp_path, "x"):
        pass


def test_dp_reshardable_refuses_another_model_parallel_layout() -> None:
    saved = {"optimizer_format": "dp_reshardable", "layout": {"tp": 2, "pp": 1, "cp": 1, "dp": 1}}
    assert resume_problem(saved, {"tp": 2, "pp": 1, "cp": 1, "dp": 4}) is None  # DP may change
    msg = resume_problem(saved, {"tp": 1, "pp": 2, "cp": 1, "dp": 1})
    assert msg is not None and "tp 2 -> 1, pp 1 -> 2" in msg and "fully_reshardable" in msg
    assert resume_problem({**saved, "optimizer_format": "fully_reshardable"}, {"tp": 1, "pp": 2, "cp": 1}) is None
    assert resume_problem({"step": 3}, {"tp": 4}) is None  # no layout recorded (older checkpoints): not checked


def test_trainer_command_lines_take_the_lock_before_heavy_imports() -> None:
    """``python -m srpo_mcore.train`` / ``.sft`` import no torch until the lock is held: a second writer
    refuses in about a second, not after torch's import (~5-10 s on a busy 2-core machine)."""
    import subprocess
    import sys

    code = (
        "import sys, srpo_mcore.train, srpo_mcore.sft, srpo_mcore.trainer_cli; "
        "heavy = [m for m in ('torch', 'megatron', 'transformers', 'vllm') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
