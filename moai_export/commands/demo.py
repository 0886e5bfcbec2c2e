"""`moai-export demo`: the main job end to end on the built-in example, one table at the end.

example -> merge (verified) -> ONNX fp32 and int8 (each gated) -> Triton repository served by a
real local tritonserver (and the OpenAI-compatible gateway in front of it) -> vLLM directory (gated on a real engine) served by vLLM's server ->
every variant compared with the PEFT reference on the probe set (parity) and timed side by side
on the example's texts.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from ..artifacts.kinds import load_embedder, parse_spec
from ..benchmark.throughput import time_side_by_side
from ..core.text_tables import format_table
from ..evaluation.finance_triplets import TRIPLETS
from ..example import build_example
from ..export.merge import MergeOptions, merge
from ..export.onnx import OnnxOptions, export_onnx
from ..gates.parity import ReferenceFigures
from ..gates.table import gate_for

ONNX_PRECISIONS = ("fp32", "int8")


def _variant(spec: str, name: str) -> tuple:
    """A row of the table: the variant loaded through the registry, as any user would load it,
    and the gate of its kind's family in the precision it serves."""
    embedder = load_embedder(spec, name=name)
    return embedder, gate_for(parse_spec(spec)[0].gate_family(embedder), embedder.precision)


def _start_vllm(out: Path, merged_dir: Path, reference, force: bool, log, running: ExitStack) -> list:
    """Export the vLLM directory (gated on a real vLLM server), serve it with vLLM's
    OpenAI-compatible server, and return its Embedder (/v2/embed, server-side prompt)."""
    from ..core.errors import MoaiError
    from ..export.vllm import VllmOptions, export_vllm
    from ..launchers.triton_server import free_ports
    from ..launchers.vllm_server import LaunchError, VllmServer

    vllm_dir = out / "vllm"
    log(f"[5/6] vllm -> {vllm_dir}; starting the vLLM server (CPU, float32, 127.0.0.1)")
    try:
        export_vllm(merged_dir, vllm_dir, reference=reference, options=VllmOptions(force=force, log=log))
        (port,) = free_ports(1)
        server = running.enter_context(VllmServer(vllm_dir, port=port, log_path=out / "vllm.log"))
    except (LaunchError, MoaiError) as exc:
        if "runtime not found" not in str(exc) and not isinstance(exc, LaunchError):
            raise
        log(f"warning: vLLM skipped: {exc}")
        return []
    log(f"vLLM server ready: {server.base_url}")
    return [_variant(f"vllm-http://{server.host}:{server.port}/moai-embedding", "vllm http (fp32, /v2/embed)")]


def _start_triton(out: Path, reference, force: bool, log, running: ExitStack) -> list:
    """Write a Triton repository for the int8 graph (verified on a real local tritonserver before
    it is published), serve it on free ports, and return the HTTP and gRPC Embedders."""
    from ..export.triton import TritonOptions, write_repository
    from ..launchers.triton_server import LaunchError, TritonServer, free_ports

    repo = out / "triton_models"
    log(f"[4/6] triton repository -> {repo}; starting tritonserver (CPU, 127.0.0.1)")
    write_repository(out / "onnx-int8", repo, TritonOptions(max_batch_size=32, force=force), log=log,
                     reference=reference, reference_label="peft (reference)")
    http, grpc, metrics = free_ports(3)
    try:
        server = running.enter_context(TritonServer(repo, http, grpc, metrics, log_path=out / "triton.log"))
    except LaunchError as exc:
        log(f"warning: Triton skipped: {exc}")
        return []
    log(f"tritonserver ready: HTTP {server.http_url}, gRPC {server.grpc_url}")
    return _start_gateway(out, server, log, running) + [
        _variant(f"triton-http://{server.http_url}/moai_embedding", "triton http (onnx int8)"),
        _variant(f"triton-grpc://{server.grpc_url}/moai_embedding", "triton grpc (onnx int8)"),
    ]


def _start_gateway(out: Path, triton, log, running: ExitStack) -> list:
    """The OpenAI-compatible gateway in front of that Triton, driven over HTTP like any client."""
    from ..launchers.gateway_server import GatewayServer
    from ..launchers.triton_server import LaunchError, free_ports

    (port,) = free_ports(1)
    try:
        gateway = running.enter_context(GatewayServer(triton.grpc_url, "moai_embedding", port=port,
                                                      log_path=out / "gateway.log").start())
    except LaunchError as exc:
        log(f"warning: gateway skipped: {exc}")
        return []
    log(f"gateway ready: {gateway.base_url}/v1/embeddings (OpenAI API) -> Triton gRPC {triton.grpc_url}")
    return [_variant(f"openai-http://127.0.0.1:{port}/moai_embedding", "gateway /v1/embeddings (onnx int8)")]


def run_demo(out: Path, *, size: str = "tiny", force: bool = False, log=print) -> str:
    with ExitStack() as running:
        return _run(out, size, force, log, running)


def _run(out: Path, size: str, force: bool, log, running: ExitStack) -> str:
    out = Path(out)
    example_dir, merged_dir = out / "example", out / "merged"
    log(f"[1/6] example ({size}) -> {example_dir}")
    build_example(example_dir, size=size, force=force)
    log(f"[2/6] merge -> {merged_dir}")
    merge(str(example_dir / "base"), str(example_dir / "adapter"), merged_dir, MergeOptions(force=force, log=log))
    reference, reference_gate = _variant(f"peft:{example_dir / 'base'}+{example_dir / 'adapter'}", "peft (reference)")
    for precision in ONNX_PRECISIONS:
        log(f"[3/6] onnx {precision} -> {out / f'onnx-{precision}'}")
        export_onnx(merged_dir, out / f"onnx-{precision}", reference=reference,
                    options=OnnxOptions(precision=precision, force=force, log=log))
    servers = _start_triton(out, reference, force, log, running)
    servers += _start_vllm(out, merged_dir, reference, force, log, running)

    log("[6/6] parity and speed of every variant")
    variants = [
        (reference, reference_gate),
        _variant(f"torch:{merged_dir}", "merged torch fp32"),
        _variant(f"st:{merged_dir}", "sentence-transformers"),
    ] + [_variant(f"onnx:{out / f'onnx-{precision}'}", f"onnx {precision}") for precision in ONNX_PRECISIONS] + servers
    figures = ReferenceFigures(reference)
    documents = [positive for _, positive, _ in TRIPLETS] + [negative for _, _, negative in TRIPLETS]
    speeds = time_side_by_side([e for e, _ in variants], documents, "document")
    rows = []
    for (embedder, gate), speed in zip(variants, speeds):
        report = figures.gate_with(embedder, gate)  # the whole cell of the kind's gate, as every gate judges
        rows.append([embedder.name, report.parity.min_cosine, report.parity.max_abs, report.rank_agreement,
                     report.passed, f"{speed['sentences_per_s']:.1f}", f"{speed['sentences_per_s_ratio']:.2f}x"])
    for embedder, _ in variants:
        embedder.close()
    table = format_table(["variant", "min cos", "max abs", "top10", "gate", "docs/s", "vs reference"], rows)
    log(f"\n{len(figures.probes)} parity probes, each row judged by its kind's gate (min cos, max abs, top-10); "
        f"speed: {len(documents)} documents, best of 3 rounds, round-robin")
    return table
