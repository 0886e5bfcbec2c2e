"""What every launcher needs: a server process in its own session, a readiness deadline (a
server stuck "loading" is killed, not waited on forever), and a clean stop (SIGINT, then
SIGKILL after a grace period). Standard library only."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


class LaunchError(RuntimeError):
    pass


class ManagedServer:
    """Subclasses define `label`, `health_url`, `command()` and optionally `cleanup()`."""

    label = "server"
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def health_url(self) -> str:
        raise NotImplementedError

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        raise NotImplementedError

    def cleanup(self) -> None:
        """Remove whatever command() prepared."""

    def start(self, timeout: float) -> "ManagedServer":
        command, env = self.command()
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def run_foreground(self, timeout: float, banner) -> int:
        """For the shell launchers: the server logs to the terminal, `banner()` is printed once
        it is ready; returns the exit code (130 on Ctrl-C)."""
        try:
            command, env = self.command()
            self.process = subprocess.Popen(command, env=env, start_new_session=True)
            self.wait_ready(timeout)
            print(banner(), flush=True)
            return self.process.wait()
        except LaunchError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            self.stop()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        hint = f"; see {self.log_path}" if self.log_path else ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LaunchError(f"{self.label} exited with code {self.process.returncode}{hint}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise LaunchError(f"{self.label} not ready after {timeout:.0f} s (killed){hint}")

    def stop(self, grace: float = 20.0) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.cleanup()

    def __enter__(self):
        return self if self.process is not None else self.start(timeout=300)

    def __exit__(self, *exc) -> None:
        self.stop()


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now (for servers that must not collide with others)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
