"""One liveness check for every clean-up decided from a pid (a killed run's temporary
directories, a killed launcher's server group): /proc where it can see the process (a zombie
has finished; a start time catches a reused pid), the kernel's signal 0 where it cannot (no
/proc, or another user's process hidden by hidepid), so a live run is never taken for gone."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import pytest

from moai_export.artifacts.admission import file_record, sha256_file
from moai_export.artifacts.directories import remove_leftovers, weights_digest
from moai_export.core import pids


@pytest.fixture
def zombie():
    """A child that has exited and was not waited for yet."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    while (pids.proc_stat(child.pid) or ["Z"])[0] != "Z":
        time.sleep(0.01)
    yield child.pid
    child.wait()


@pytest.fixture
def no_proc(monkeypatch):
    """A system without a readable /proc entry for any process (macOS, hidepid)."""
    monkeypatch.setattr(pids, "proc_stat", lambda pid: None)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_proc_answers_a_zombie_is_gone_and_a_reused_pid_is_another_process(zombie):
    me = os.getpid()
    assert pids.alive(me) and pids.alive(me, pids.start_time(me))
    assert not pids.alive(me, pids.start_time(me) + 1)  # same pid, another start: reused
    assert not pids.alive(zombie)
    assert not pids.alive(_dead_pid())


def test_without_proc_the_kernel_answers_and_a_live_process_is_never_gone(no_proc, zombie, monkeypatch):
    me = os.getpid()
    assert pids.start_time(me) is None
    assert pids.alive(me) and pids.alive(me, started=12345)  # no start time to compare: alive
    assert pids.alive(zombie)  # the kernel still holds it: kept, like any process it knows
    assert not pids.alive(_dead_pid())
    def not_permitted(pid, sig):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(pids.os, "kill", not_permitted)  # what kill says of another user's process
    assert pids.alive(me + 1)


def test_a_zombie_runs_temporary_directory_is_removed_and_kept_where_proc_cannot_tell(tmp_path, zombie,
                                                                                    monkeypatch):
    leftover = tmp_path / f".merged.tmp-{zombie}-abc"
    leftover.mkdir()
    monkeypatch.setattr(pids, "proc_stat", lambda pid: None)
    assert remove_leftovers(tmp_path / "merged", log=lambda m: None) == [] and leftover.exists()
    monkeypatch.undo()
    assert remove_leftovers(tmp_path / "merged", log=lambda m: None) == [leftover] and not leftover.exists()


def test_one_hasher_for_manifests_and_weight_records(tmp_path):
    data = os.urandom((1 << 22) + 17)  # more than one read block
    (tmp_path / "model.safetensors").write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(tmp_path / "model.safetensors") == expected
    assert file_record(tmp_path / "model.safetensors") == {"sha256": expected, "bytes": len(data)}
    assert weights_digest(tmp_path) == {"model.safetensors": expected}
