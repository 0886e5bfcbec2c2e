"""Failure paths a user meets: one `error:` line and exit 1 for outputs that cannot be written
(checked before any model loads), nothing half-written, leftovers of killed runs removed, and
one meaning per exit code.

Read-only and full file systems are REAL: a small tmpfs mounted by the test (root can write
through file permissions, so chmod would prove nothing). Where a write must fail halfway, the
write call is patched at the OS boundary (stated in the test)."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from moai_export.artifacts.directories import atomic_output_dir, remove_leftovers
from moai_export.commands.export_cli import main
from moai_export.core.errors import MoaiError


def _mount_tmpfs(path: Path, size: str, read_only: bool) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.fixture
def filesystem(tmp_path):
    """mount(kind) -> a directory on a fresh tmpfs: "read-only" or "full" (1 MB)."""
    mounted = []

    def mount(kind: str) -> Path:
        path = tmp_path / kind
        if not _mount_tmpfs(path, "1m", read_only=kind == "read-only"):
            if os.environ.get("CI"):
                pytest.fail("cannot mount a tmpfs (CI runs as root and must)")
            pytest.skip("mounting a tmpfs needs root")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        subprocess.run(["umount", str(path)], capture_output=True)


def _one_error_line(result) -> str:
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize("command", ["merge", "onnx", "triton", "vllm", "example"])
def test_read_only_output_is_refused_before_any_work(command, filesystem, example_dir, merged_dir, request):
    target = filesystem("read-only") / "out"
    args = {
        "merge": ["merge", "--base", str(example_dir / "base"), "--adapter", str(example_dir / "adapter"),
                  "--out", str(target)],
        "onnx": ["onnx", str(merged_dir), "--out", str(target)],
        "triton": ["triton", str(request.getfixturevalue("onnx_fp32_dir")), "--repo", str(target)],
        "vllm": ["vllm", str(merged_dir), "--out", str(target)],
        "example": ["example", "--out", str(target)],
    }[command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert f"cannot write {target}: read-only file system" in _one_error_line(result)


def test_full_disk_is_refused_before_loading_with_the_space_needed(filesystem, example_dir):
    target = filesystem("full") / "merged"
    result = CliRunner().invoke(main, ["merge", "--base", str(example_dir / "base"), "--adapter",
                                       str(example_dir / "adapter"), "--out", str(target)])
    line = _one_error_line(result)
    assert result.exit_code == 1 and "not enough space" in line and "GB needed" in line
    assert list(target.parent.iterdir()) == []


def test_a_write_that_fails_halfway_leaves_nothing(tmp_path):
    """The disk fills during the write (patched at the OS boundary: the write raises ENOSPC)."""
    target = tmp_path / "out"
    with pytest.raises(MoaiError, match="no space left on device \\(nothing was written\\)"):
        with atomic_output_dir(target) as tmp:
            (tmp / "half").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "model.safetensors"))
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_a_killed_run_are_removed_and_named(tmp_path, capsys):
    """A merge killed with SIGKILL leaves `.OUT.tmp-PID-*`; the next run removes it and says so."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    leftover = tmp_path / f".merged.tmp-{dead.pid}-abc123"
    (leftover / "sub").mkdir(parents=True)
    (leftover / "sub" / "model.safetensors").write_bytes(b"\0" * 1000)
    alive = tmp_path / f".merged.tmp-{os.getppid()}-zzz"  # a live process's: not touched
    alive.mkdir()
    other = tmp_path / f".other.tmp-{dead.pid}-abc"  # another output's: not ours to judge
    other.mkdir()
    with atomic_output_dir(tmp_path / "merged") as tmp:
        assert f".merged.tmp-{os.getpid()}-" in tmp.name
        (tmp / "x").write_text("x")
    assert not leftover.exists() and alive.exists() and other.exists()
    assert f"removed {leftover}, left by a run that was killed (process {dead.pid} is gone)" in capsys.readouterr().err
    assert remove_leftovers(tmp_path / "merged") == []


def test_a_real_sigkill_during_merge_is_cleaned_by_the_next_run(example_dir, tmp_path):
    """The whole story with a real process: SIGKILL mid-merge, then a second merge."""
    import signal
    import time

    out = tmp_path / "merged"
    command = [sys.executable, "-m", "moai_export.commands.export_cli", "merge", "--base", str(example_dir / "base"),
               "--adapter", str(example_dir / "adapter"), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(tmp_path.glob(".merged.tmp-*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert list(tmp_path.glob(".merged.tmp-*")), "the merge finished before it could be killed"
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert f"left by a run that was killed (process {process.pid} is gone)" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_exit_codes_mean_one_thing(example_dir, tmp_path):
    usage = CliRunner().invoke(main, ["onnx", str(tmp_path), "--out", str(tmp_path / "o"), "--precision", "fp23"])
    assert usage.exit_code == 2  # click's usage error
    from moai_export.commands.base import EXIT_ERROR, EXIT_USAGE, EXIT_VERIFICATION_FAILED

    assert (EXIT_ERROR, EXIT_USAGE, EXIT_VERIFICATION_FAILED) == (1, 2, 3)
    failed = CliRunner().invoke(main, ["merge", "--base", str(example_dir / "base"), "--adapter",
                                       str(example_dir / "adapter"), "--out", str(tmp_path / "m"), "--max-abs", "0"])
    assert failed.exit_code == 3 and "verification FAILED" in failed.output


def test_verify_json_that_cannot_be_written_fails_before_the_work(filesystem, tmp_path):
    json_path = filesystem("read-only") / "v.json"
    result = CliRunner().invoke(main, ["verify", str(tmp_path), "--reference", "x+y", "--json", str(json_path)])
    assert result.exit_code == 1 and "read-only file system" in _one_error_line(result)


def test_bench_output_that_cannot_be_written_fails_before_loading(filesystem, merged_dir):
    from moai_export.commands.bench_cli import main as bench

    out = filesystem("read-only") / "bench"
    result = CliRunner().invoke(bench, ["parity", "--reference", f"torch:{merged_dir}", "--target",
                                        f"torch:{merged_dir}", "--out", str(out)])
    assert result.exit_code == 1 and "read-only file system" in _one_error_line(result)


def test_adapter_field_of_the_wrong_type_is_named(example_dir, tmp_path):
    import shutil

    adapter = tmp_path / "adapter"
    shutil.copytree(example_dir / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config["r"] = "sixty-four"
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["merge", "--base", str(example_dir / "base"), "--adapter", str(adapter),
                                       "--out", str(tmp_path / "m")])
    assert result.exit_code == 1
    assert "'r' must be a positive integer, not 'sixty-four'" in _one_error_line(result)


class _NoSpaceLeft:
    """A file opened for writing on a full disk: the open works, every write fails with ENOSPC
    (as the kernel reports it: no file name)."""

    def __init__(self, handle):
        self._handle = handle

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._handle.close()

    def __getattr__(self, name):
        return getattr(self._handle, name)


@pytest.fixture
def disk_full_in(monkeypatch):
    """disk_full_in(directory): files opened for writing in `directory` cannot be written, patched
    at Python's one open() (pathlib and os.fdopen go through it); no mount or root needed."""

    def patch(directory: Path) -> None:
        real_open, directory = io.open, Path(directory).resolve()

        def open_(file, mode="r", *args, **kwargs):
            handle = real_open(file, mode, *args, **kwargs)
            if set(mode) & set("wax+") and Path(os.readlink(f"/proc/self/fd/{handle.fileno()}")).parent == directory:
                return _NoSpaceLeft(handle)
            return handle

        monkeypatch.setattr(io, "open", open_)
        monkeypatch.setattr(builtins, "open", open_)

    return patch


def _merge_args(example_dir, out, *extra):
    return ["merge", "--base", str(example_dir / "base"), "--adapter", str(example_dir / "adapter"),
            "--out", str(out), *extra]


def test_merge_report_that_cannot_be_written_is_refused_before_the_work(example_dir, tmp_path):
    (tmp_path / "a-file").write_text("x")
    report = tmp_path / "a-file" / "report.json"  # a path under a file: unwritable, also for root
    result = CliRunner().invoke(main, _merge_args(example_dir, tmp_path / "merged", "--report", str(report)))
    assert result.exit_code == 1
    assert f"cannot write {report}" in _one_error_line(result)
    assert "loading reference" not in result.output  # refused before any model loaded
    assert not (tmp_path / "merged").exists()


def test_merge_report_that_fails_while_written_publishes_nothing(example_dir, tmp_path, disk_full_in):
    (tmp_path / "reports").mkdir()
    disk_full_in(tmp_path / "reports")
    report = tmp_path / "reports" / "report.json"
    result = CliRunner().invoke(main, _merge_args(example_dir, tmp_path / "merged", "--report", str(report)))
    assert result.exit_code == 1
    assert f"cannot write {report}: no space left on device" in _one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports"] and not any((tmp_path / "reports").iterdir())


def test_verify_json_on_a_full_disk_names_the_path_and_keeps_the_old_report(merged_dir, tmp_path, disk_full_in):
    json_path = tmp_path / "verify.json"
    json_path.write_text('{"old": true}\n')
    disk_full_in(tmp_path)
    result = CliRunner().invoke(main, ["verify", f"torch:{merged_dir}", "--reference", f"torch:{merged_dir}",
                                       "--no-admit", "--json", str(json_path)])
    assert result.exit_code == 1
    assert f"cannot write {json_path}: no space left on device" in _one_error_line(result)
    assert json_path.read_text() == '{"old": true}\n'  # not a 0-byte file
    assert [p.name for p in tmp_path.iterdir()] == ["verify.json"]  # no temporary file left


@pytest.fixture
def truncated_merged(merged_dir, tmp_path) -> Path:
    copy = tmp_path / "truncated"
    shutil.copytree(merged_dir, copy)
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as handle:
        handle.truncate(weights.stat().st_size // 2)
    return copy


@pytest.mark.parametrize("command", ["onnx", "onnx-unverified", "verify"])
def test_a_truncated_weight_file_is_one_error_line(truncated_merged, merged_dir, tmp_path, command):
    args = {"onnx": ["onnx", str(truncated_merged), "--out", str(tmp_path / "onnx")],
            # past the chain's refusal, to the weights' own check
            "onnx-unverified": ["onnx", str(truncated_merged), "--out", str(tmp_path / "onnx"), "--allow-unverified"],
            "verify": ["verify", str(truncated_merged), "--reference", f"torch:{merged_dir}", "--no-admit",
                       "--json", str(tmp_path / "verify.json")]}[command]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)  # not safetensors' traceback
    expected = ("model.safetensors changed size" if command == "onnx"  # the chain refuses it first
                else f"{truncated_merged / 'model.safetensors'}: truncated safetensors file")
    assert expected in _one_error_line(result)
    assert not (tmp_path / "onnx").exists() and not (tmp_path / "verify.json").exists()


def test_triton_repository_on_a_full_disk_is_one_error_line(onnx_fp32_dir, tmp_path, monkeypatch):
    """tokenizers' save raises a plain Exception ("... (os error 28)"), not an OSError, when the
    disk is full: simulated here by its exact message."""
    import tokenizers

    real = tokenizers.Tokenizer

    class FullDiskTokenizer:
        def __init__(self, tokenizer):
            self._tokenizer = tokenizer

        @staticmethod
        def from_file(path):
            return FullDiskTokenizer(real.from_file(path))

        def save(self, path, *args, **kwargs):
            raise Exception("No space left on device (os error 28)")

        def __getattr__(self, name):
            return getattr(self._tokenizer, name)

    monkeypatch.setattr(tokenizers, "Tokenizer", FullDiskTokenizer)
    repo = tmp_path / "repo"
    result = CliRunner().invoke(main, ["triton", str(onnx_fp32_dir), "--repo", str(repo), "--no-verify"])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"cannot write {repo}: no space left on device (nothing was written)" in _one_error_line(result)
    assert list(tmp_path.iterdir()) == []
