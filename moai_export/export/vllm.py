"""`moai-export vllm`: a directory vLLM serves as an embedding model, pooler pinned.

vLLM's defaults for pooling models have changed between versions; the artifact therefore
states everything: sentence-transformers modules (Pooling lasttoken + Normalize, from which
vLLM takes its pooler and its per-input_type prompts), and `vllm_serve.json`, the exact engine
arguments (--runner pooling, --pooler-config, dtype, max model len) the launcher passes.
The artifact is admitted by the parity gate run on a real vLLM SERVER started from the written
directory exactly as serve/vllm/run.sh starts it on this machine (float32 on CPU here), so the
server's own prompt (from the sentence-transformers files) and truncation are what is gated.
A GPU configuration (bfloat16) is admitted on the GPU machine: `moai-export verify DIR --device cuda`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..artifacts.directories import atomic_output_dir, check_target, size_of, write_json
from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError
from ..embedders.base import Embedder
from ..gates.probe_files import ProbeOptions
from ..gates.table import GateOverrides
from ..gates.verification import GateRun
from ..launchers.vllm_server import SERVE_FILE
from ..model_files.contract_tokenizer import write_tokenizer_files
from ..model_files.model_contract import read_contract
from ..model_files.portable_config import write_portable_config
from ..model_files.sentence_transformers_format import write_sentence_transformers_files
from .exporter import admit, check_input, derived_reference_figures, load_candidate, shipped_file_failures

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
POOLING_TYPES = {"lasttoken": "LAST", "mean": "MEAN", "cls": "CLS"}
# vLLM on CPU reserves 92% of memory for the KV cache by default, which aborts on small
# machines; an embedding model needs little (one forward per request, no decoding).
DEFAULT_KV_CACHE_BYTES = 1 << 30


def pooler_config(contract: EmbeddingContract) -> dict:
    """vLLM's --pooler-config for the contract ("use_activation" is normalization for embed)."""
    return {"pooling_type": POOLING_TYPES[contract.pooling], "use_activation": contract.normalize}


def serve_args(contract: EmbeddingContract, dtype: str, served_model_name: str) -> dict:
    return {
        "runner": "pooling",
        "pooler_config": pooler_config(contract),
        "weights_dtype": DTYPES[dtype],
        # float32 on CPU keeps parity; "auto" on CPU would silently run fp16
        "dtype_cpu": "float32",
        "dtype_gpu": "bfloat16" if dtype == "fp32" else DTYPES[dtype],
        "max_model_len": contract.max_tokens,
        "served_model_name": served_model_name,
        "kv_cache_memory_bytes": DEFAULT_KV_CACHE_BYTES,
    }


@dataclass
class VllmOptions:
    dtype: str = "fp32"
    served_model_name: str = "moai-embedding"
    overrides: GateOverrides = field(default_factory=GateOverrides)
    probes: ProbeOptions = field(default_factory=ProbeOptions)  # --probes: a sample of the user's texts too
    force: bool = False
    allow_unverified: bool = False  # derive from an input no gate admitted; the output is marked unverified
    log: callable = print
    timings: dict = field(default_factory=dict)


def write_vllm_dir(source: Path, out: Path, contract: EmbeddingContract, dtype: str, served_model_name: str) -> None:
    """Weights (cast to `dtype`), tokenizer with the end-token post-processor, sentence-
    transformers modules, contract and serve arguments."""
    import torch

    from ..embedders.torch_model import DTYPES as TORCH_DTYPES
    from ..embedders.torch_model import load_backbone

    model = load_backbone(source, TORCH_DTYPES[dtype])
    with torch.no_grad():
        model.save_pretrained(str(out))
    del model
    write_portable_config(out)  # vLLM releases before transformers 5 read rope_theta, not rope_parameters
    # With a chat template, vLLM renders the query instruction as a system message instead of
    # the plain prefix the model was trained with: the template must not be there.
    write_tokenizer_files(source, contract, out, drop_chat_template=True)
    write_sentence_transformers_files(contract, out)
    contract.save(out)
    write_json(out / SERVE_FILE, serve_args(contract, dtype, served_model_name))


def export_vllm(source: Path, out: Path, *, reference: Embedder | None = None, reference_label: str | None = None,
                options: VllmOptions | None = None) -> dict:
    """Write the vLLM directory for the merged model `source`, gated on a real vLLM server
    against `reference` (default: `source` in float32 torch)."""
    from ..embedders.vllm import VllmOfflineEmbedder, VllmServedEmbedder, gate_precision

    options = options or VllmOptions()
    if options.dtype not in DTYPES:
        raise MoaiError(f"unknown dtype {options.dtype!r}: expected one of {', '.join(DTYPES)}")
    source, out = Path(source), Path(out)
    check_target(out, options.force, need_bytes=size_of(source) * (2 if options.dtype == "fp32" else 1))
    contract = read_contract(source)
    if contract.pooling not in POOLING_TYPES:
        raise MoaiError(f"pooling {contract.pooling!r} has no vLLM equivalent")
    provenance = check_input(source, allow_unverified=options.allow_unverified)
    VllmOfflineEmbedder.check_runtime()

    log = options.log
    figures, reference_label = derived_reference_figures(provenance, reference, reference_label, fallback=f"torch:{source}",
                                                         log=log, timings=options.timings, probes=options.probes)

    with atomic_output_dir(out, force=options.force) as tmp:
        t = time.perf_counter()
        log(f"writing the vLLM directory ({options.dtype} weights)")
        write_vllm_dir(source, tmp, contract, options.dtype, options.served_model_name)
        options.timings["write_s"] = time.perf_counter() - t
        t = time.perf_counter()
        log("verifying on a real vLLM server started as serve/vllm/run.sh starts it (CPU: float32; "
            "its own prompt and truncation on /v2/embed)")
        with load_candidate(lambda: VllmServedEmbedder(tmp, device="cpu", admission="skip",
                                                       name=f"vllm server ({options.dtype} weights)"),
                            "vllm") as candidate:
            config = candidate.serving
            gate = options.overrides.apply("vllm", gate_precision(options.dtype, config.dtype))
            report = figures.gate_with(candidate, gate)
        report.file_failures += shipped_file_failures(tmp, contract, figures)
        options.timings["verify_s"] = time.perf_counter() - t
        report = admit(
            tmp, [GateRun(report, gate, config)], stage="vllm", what="vllm", source=source,
            reference_label=reference_label, figures=figures,
            fields={"dtype": options.dtype, "serve_args": json.loads((tmp / SERVE_FILE).read_text())},
            timings=options.timings, log=log, unverified=provenance.unverified,
            manifest_options={"dtype": options.dtype, "served_model_name": options.served_model_name},
        )
    return report
