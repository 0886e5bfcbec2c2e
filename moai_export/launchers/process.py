"""What every launcher needs: a server process in its own session (process group), a readiness
deadline (a server stuck "loading" is killed, not waited on forever), and a launcher that owns
everything it started:

  - SIGTERM / SIGHUP (kill, systemd, docker stop, Kubernetes, a closed terminal) stop the server
    like Ctrl-C does, and the launcher exits 143 / 129 (130 for Ctrl-C);
  - a stop signals the whole process group, then SIGKILLs whatever is left of it after the grace
    period, also when the server itself already died (vLLM's EngineCore / Worker children, Triton's
    python-backend stubs would otherwise live on with parent pid 1);
  - each launch has a work directory `<tmp>/<prefix>XXXX` holding `launcher.json` (launcher pid,
    server process group, their start times); it is removed with anything else the server left
    (e.g. Triton's /dev/shm regions) on every exit path the launcher sees;
  - a launcher killed with SIGKILL sees nothing: the next launch finds its work directory, stops
    the server group it left running, removes its files and says so;
  - ready means THIS server is: its ports must be free before it starts, and the port that
    answers the health check must be held by its process group (another server on the port
    would otherwise answer "ready" while ours fails to bind and exits).

Standard library only (Linux /proc).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from ..core.pids import alive, proc_stat, start_time

STATE_FILE = "launcher.json"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class LaunchError(RuntimeError):
    pass


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so `finally` blocks stop servers."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextmanager
def _handling(signals, handler):
    """`handler` for `signals` within the block, the previous handlers restored after it."""
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def stop_signals_raise():
    """Within the block, SIGTERM / SIGHUP raise Terminated in the main thread (Python's default
    for them is to die at once, skipping every cleanup)."""
    return _handling(STOP_SIGNALS, _raise_terminated)


def signals_ignored():
    """While a server is being stopped: a second signal must not interrupt the stop half-way."""
    return _handling((signal.SIGINT, *STOP_SIGNALS), signal.SIG_IGN)


# -- process groups, read from /proc --------------------------------------------------------

def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies do not count: they hold no port or memory)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields and fields[0] != "Z" and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while group_members(pgid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True


def kill_group(pgid: int, grace: float) -> None:
    """SIGTERM what is left of a group, SIGKILL it after `grace`, return once it is gone."""
    if not group_members(pgid):
        return
    _signal_group(pgid, signal.SIGTERM)
    if not wait_group_gone(pgid, grace):
        _signal_group(pgid, signal.SIGKILL)
        wait_group_gone(pgid, 10.0)


# -- ports ----------------------------------------------------------------------------------------

def port_taken(host: str, port: int) -> bool:
    """Does a socket already listen on host:port? (SO_REUSEADDR: a port left in TIME_WAIT by a
    server that just stopped is free for the next one, as servers themselves bind it.)"""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _listening_inodes(port: int) -> set[str]:
    """Inodes of the sockets listening on TCP `port`, any address (Linux /proc/net)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    return inodes


def group_listens_on(pgid: int, port: int) -> bool | None:
    """Does a process of group `pgid` hold the socket listening on `port`? None: /proc cannot tell."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    for pid in group_members(pgid):
        try:
            descriptors = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in descriptors:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}")[len("socket:["):-1] in inodes:
                    return True
            except OSError:
                continue
    return False


# -- leftovers of killed launchers ------------------------------------------------------------

def remove_leftovers(prefix: str, extra_cleanup=None, log=None) -> list[str]:
    """Work directories `<tmp>/<prefix>*` whose launcher is dead: stop the server group it left,
    remove the directory and what `extra_cleanup(workdir)` names. Returns what was removed.
    Directories without a state file (or of a live launcher) are left alone."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    removed = []
    for workdir in sorted(Path(tempfile.gettempdir()).glob(f"{prefix}*")):
        try:
            state = json.loads((workdir / STATE_FILE).read_text())
        except (OSError, ValueError):
            continue
        if alive(state["launcher_pid"], state.get("launcher_started")):
            continue
        what = []
        pgid = state.get("server_pgid")
        if pgid:
            members = group_members(pgid)
            # While a group has members its id cannot be reused: these are the server's. If the
            # leader still runs, its start time must match too.
            if members and (not alive(pgid) or alive(pgid, state.get("server_started"))):
                kill_group(pgid, grace=5.0)
                what.append(f"server process group {pgid} ({len(members)} processes)")
        if extra_cleanup:
            what += extra_cleanup(workdir)
        _remove_tree(workdir)
        what.append(str(workdir))
        log(f"removed what an earlier launcher (pid {state['launcher_pid']}, killed) left behind: {', '.join(what)}")
        removed += what
    return removed


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# -- the launcher base --------------------------------------------------------------------------

class ManagedServer:
    """Subclasses define `label`, `workdir_prefix`, `health_url`, `command()`, `listen_ports()`
    (the ports the server binds; the first answers the health check) and optionally
    `cleanup_workdir(workdir)` (what else the server leaves, named for the log)."""

    label = "server"
    listen_host = "127.0.0.1"
    workdir_prefix = "moai-server-"
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    _workdir: Path | None = None
    stop_grace: float = 20.0

    @property
    def health_url(self) -> str:
        raise NotImplementedError

    @property
    def workdir(self) -> Path:
        """This launch's work directory (created by the first use, recorded in launcher.json)."""
        if self._workdir is None:
            self._workdir = Path(tempfile.mkdtemp(prefix=self.workdir_prefix))
        return self._workdir

    def command(self) -> tuple[list[str], dict[str, str] | None]:
        raise NotImplementedError

    def cleanup_workdir(self, workdir: Path) -> list[str]:
        """Remove what the server left outside its work directory; returns what was removed."""
        return []

    def listen_ports(self) -> dict[str, int]:
        """{what: port} the server binds on `listen_host`, the health check's first."""
        return {}

    def _check_ports_free(self) -> None:
        for what, port in self.listen_ports().items():
            if port_taken(self.listen_host, port):
                raise LaunchError(f"{self.label} cannot start: {what} port {port} on {self.listen_host} is already "
                                  "in use (another server?); stop it or choose other ports")

    def _spawn(self, log) -> None:
        remove_leftovers(self.workdir_prefix, self.cleanup_workdir)  # may free ports a killed launcher left held
        self._check_ports_free()
        command, env = self.command()
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT if log else None,
                                        start_new_session=True)
        state = {"launcher_pid": os.getpid(), "launcher_started": start_time(os.getpid()),
                 "server_pgid": self.process.pid, "server_started": start_time(self.process.pid),
                 "label": self.label}
        (self.workdir / STATE_FILE).write_text(json.dumps(state))

    def start(self, timeout: float) -> "ManagedServer":
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        try:
            try:
                self._spawn(log)
            finally:  # the server holds its own copy of the descriptor; the launcher's would leak
                if log is not subprocess.DEVNULL:
                    log.close()
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def run_foreground(self, timeout: float, banner) -> int:
        """For the shell launchers: the server logs to the terminal, `banner()` is printed once
        it is ready. Returns the exit code: the server's own when it exits (stopping what it
        left), 130 on Ctrl-C, 143 on SIGTERM, 129 on SIGHUP, 1 when it never got ready."""
        with stop_signals_raise():
            try:
                self._spawn(None)
                self.wait_ready(timeout)
                print(banner(), flush=True)
                code = self.watch()
                print(f"error: {self.label} exited with code {code}", file=sys.stderr, flush=True)
                return code if code > 0 else 1
            except LaunchError as exc:
                print(f"error: {exc}", file=sys.stderr, flush=True)
                return 1
            except KeyboardInterrupt:
                return 130
            except Terminated as stop:
                print(f"{stop}: stopping {self.label}", file=sys.stderr, flush=True)
                return stop.exit_code
            finally:
                with signals_ignored():
                    self.stop()

    def watch(self) -> int:
        """Wait for the running server to exit and return its code; a subclass may watch its
        health meanwhile and heal it (restart())."""
        return self.process.wait()

    def restart(self, timeout: float) -> None:
        """Stop the server and start it again, until ready; for the foreground launcher, so its
        output goes to the terminal (or is appended to log_path)."""
        self.stop()
        if self.log_path:
            with open(self.log_path, "ab") as log:  # the server keeps its own copy of the descriptor
                self._spawn(log)
        else:
            self._spawn(None)
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        hint = f"; see {self.log_path}" if self.log_path else ""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise LaunchError(f"{self.label} exited with code {self.process.returncode}{hint}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=2) as response:
                    if response.status == 200:
                        self._check_answer_is_ours()
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise LaunchError(f"{self.label} not ready after {timeout:.0f} s (killed){hint}")

    def _check_answer_is_ours(self) -> None:
        """A 200 from a port another process holds is not this server being ready."""
        ports = list(self.listen_ports().items())
        if ports and group_listens_on(self.process.pid, ports[0][1]) is False:
            what, port = ports[0]
            raise LaunchError(f"{self.label} is not the server answering on {what} port {port}: another process "
                              "holds it; stop it or choose other ports")

    def stop(self, grace: float | None = None) -> None:
        """SIGINT to the group (what Ctrl-C sends), SIGKILL after `grace`; then whatever is left of
        the group (children of a server that died), then the work directory and leftovers."""
        grace = self.stop_grace if grace is None else grace
        if self.process is not None:
            pgid = self.process.pid
            if self.process.poll() is None:
                _signal_group(pgid, signal.SIGINT)
                try:
                    self.process.wait(grace)
                except subprocess.TimeoutExpired:
                    _signal_group(pgid, signal.SIGKILL)
                    self.process.wait()
            kill_group(pgid, grace=5.0)
        if self._workdir is not None:
            self.cleanup_workdir(self._workdir)
            _remove_tree(self._workdir)
            self._workdir = None

    def __enter__(self):
        return self if self.process is not None else self.start(timeout=300)

    def __exit__(self, *exc) -> None:
        self.stop()


class HttpHealthServer(ManagedServer):
    """A server reached at http://host:port that reports ready at /health (vLLM, the gateway)."""

    host: str
    port: int

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.base_url}/health"

    @property
    def listen_host(self) -> str:
        return self.host

    def listen_ports(self) -> dict[str, int]:
        return {"HTTP": self.port}


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
