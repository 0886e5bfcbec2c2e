"""The Triton launcher's watch: readiness that tells the truth, and healing.

Triton's own readiness (`/v2/health/ready`, the model's ready state) stays 200 when a python
backend stub dies: every request then fails ("Stub process ... is not healthy") and nothing
restarts it. So the launcher embeds one fixed short text through each ensemble, over Triton's
HTTP API, every `interval` seconds and at once when Triton's failure counter (`/metrics`) moves
(i.e. after any failed request). The first good answer is the reference; later answers must
stay within the artifact's gate (min cosine) of it.

When a probe fails, the launcher heals:
  1. reload: unload and load again the ensemble's composing models through Triton's model
     control API (the server runs with `--model-control-mode=explicit`): fresh stubs, the other
     models untouched, about 2-3 s on the example on 2 CPUs;
  2. restart: if the ensemble still does not answer right, the whole server (stop, start, wait
     ready; about 6 s on the example).
The server's exit still ends the launcher (with its code), as before.

Standard library only.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts.admission import read_manifest
from ..artifacts.triton_admission import recorded_repository_config

PROBE_TEXT = "health probe: 카드 연회비는 얼마인가요?"  # short, two scripts: tokenizer and encoder both run
PROBE_INTERVAL = 2.0  # seconds between probes of a quiet server
TICK = 0.5  # seconds between looks at the process and the failure counter
UNVERIFIED_MIN_COSINE = 0.99  # a repository no gate admitted: the loosest gate of the table
RELOAD_TIMEOUT = 60.0  # seconds for the model control API to load an ensemble again
RESTART_TIMEOUT = 180.0  # seconds for a restarted server to get ready (the launcher's default)
SETTLE = 5.0  # seconds a reloaded or restarted ensemble gets to answer right (loads return when done)
FAILURE_METRIC = re.compile(r"^nv_inference_request_failure\{[^}]*\}\s+([0-9.eE+-]+)", re.MULTILINE)


class ProbeFailed(Exception):
    pass


def admitted_min_cosine(ensemble_dir: Path) -> float:
    """The min cosine threshold of the gate that admitted the repository in its recorded
    configuration: the entry's `gate.thresholds`, not `gate.min_cosine`, which is the figure the
    gate measured (1.0 for fp32: two answers a rounding apart would fail it)."""
    config = recorded_repository_config(ensemble_dir)
    for entry in (read_manifest(ensemble_dir) or {}).get("admitted_for", []):
        threshold = ((entry.get("gate") or {}).get("thresholds") or {}).get("min_cosine")
        if config.matches(entry) and threshold:
            return float(threshold)
    return UNVERIFIED_MIN_COSINE


def _http(url: str, payload: dict | None = None, timeout: float = 10.0) -> bytes:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.read()


def _cosine(a: list[float], b: list[float]) -> float:
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norms if norms else 0.0


@dataclass
class EnsembleProbe:
    """One real embedding through one ensemble, compared with the first good answer."""

    http_url: str  # http://HOST:PORT
    model: str
    min_cosine: float
    timeout: float = 10.0
    reference: list[float] | None = None

    def embed(self) -> list[float]:
        payload = {"inputs": [{"name": "TEXT", "shape": [1, 1], "datatype": "BYTES", "data": [PROBE_TEXT]},
                              {"name": "KIND", "shape": [1, 1], "datatype": "BYTES", "data": ["query"]}],
                   "outputs": [{"name": "EMBEDDING"}]}
        try:
            answer = json.loads(_http(f"{self.http_url}/v2/models/{self.model}/infer", payload, self.timeout))
            vector = [float(x) for x in answer["outputs"][0]["data"]]
        except urllib.error.HTTPError as exc:
            raise ProbeFailed(f"HTTP {exc.code}: {exc.read().decode(errors='replace')[:300]}") from None
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise ProbeFailed(f"{type(exc).__name__}: {exc}") from None
        if not vector or not all(math.isfinite(x) for x in vector) or not any(vector):
            raise ProbeFailed("the answer is empty, zero or not finite")
        return vector

    def check(self) -> None:
        """Raises ProbeFailed unless the ensemble answers within the gate of its first answer."""
        vector = self.embed()
        if self.reference is None:
            self.reference = vector
            return
        if len(vector) != len(self.reference):
            raise ProbeFailed(f"{len(vector)} dimensions, {len(self.reference)} at the first answer")
        cosine = _cosine(vector, self.reference)
        if cosine < self.min_cosine:
            raise ProbeFailed(f"cosine {cosine:.6f} to the first answer, under the gate's {self.min_cosine}")

    def composing_models(self) -> list[str]:
        config = json.loads(_http(f"{self.http_url}/v2/models/{self.model}/config", timeout=self.timeout))
        return [step["model_name"] for step in config.get("ensemble_scheduling", {}).get("step", [])]


@dataclass
class TritonWatch:
    """Watches a running TritonServer (`server.process`) and heals it; `run()` returns the
    server's exit code, like Popen.wait()."""

    server: object  # a TritonServer: http_url, metrics_port, process, restart()
    probes: list[EnsembleProbe]
    interval: float = PROBE_INTERVAL
    log: object = field(default=lambda message: print(message, file=sys.stderr, flush=True))
    _failures: float = 0.0

    def run(self) -> int:
        self._failures = self._failure_count()
        next_probe = 0.0
        while True:
            code = self._wait_exit(TICK)
            if code is not None:
                return code
            failures = self._failure_count()
            if time.monotonic() >= next_probe or failures > self._failures:
                self.check_and_heal()
                self._failures = self._failure_count()
                next_probe = time.monotonic() + self.interval

    def _wait_exit(self, timeout: float) -> int | None:
        import subprocess

        try:
            return self.server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _failure_count(self) -> float:
        """Triton's count of failed requests (every model, every reason); 0 when unreadable."""
        try:
            text = _http(f"http://127.0.0.1:{self.server.metrics_port}/metrics", timeout=2.0).decode()
        except (OSError, ValueError):
            return 0.0
        return sum(float(value) for value in FAILURE_METRIC.findall(text))

    def failing(self) -> list[tuple[EnsembleProbe, str]]:
        failed = []
        for probe in self.probes:
            try:
                probe.check()
            except ProbeFailed as exc:
                failed.append((probe, str(exc)))
        return failed

    def check_and_heal(self) -> None:
        failed = self.failing()
        if not failed:
            return
        started = time.monotonic()
        for probe, reason in failed:
            self.log(f"NOT READY: {probe.model} fails its end-to-end probe ({reason}); reloading its models")
            self.reload(probe)
        if self._wait_passing(SETTLE):
            self.log(f"healed: {', '.join(p.model for p, _ in failed)} reloaded, serving again after "
                     f"{time.monotonic() - started:.1f} s")
            return
        self.log("NOT READY: the reload did not heal it; restarting tritonserver")
        self.server.restart(RESTART_TIMEOUT)
        if self._wait_passing(SETTLE):
            self.log(f"healed: tritonserver restarted, serving again after {time.monotonic() - started:.1f} s")
        else:
            self.log("NOT READY: still failing after a restart; probing again")

    def _wait_passing(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server.process.poll() is not None:
                return False
            if not self.failing():
                return True
            time.sleep(0.2)
        return False

    def reload(self, probe: EnsembleProbe) -> None:
        """Unload the ensemble's composing models and load them again at once: Triton starts
        fresh instances (their stubs included) and reloads the ensemble with them. A load of a
        model still loaded would be a no-op, and waiting for the unload of an instance whose stub
        is dead takes Triton ~10 s, so the load follows the unload without waiting for it."""
        base = f"{probe.http_url}/v2/repository/models"
        try:
            models = probe.composing_models()
            for model in models:
                _http(f"{base}/{model}/unload", {})
            for model in [*models, probe.model]:
                _http(f"{base}/{model}/load", {}, timeout=RELOAD_TIMEOUT)
        except (OSError, ValueError, KeyError) as exc:
            self.log(f"reload of {probe.model} failed: {exc}")
