"""`moai-export onnx`: a graph with pooling and normalization inside.

Consumers feed two int64 inputs (input_ids, attention_mask) and read ONE output,
sentence_embedding [batch, dims] float32, already pooled as the contract says. Exported with
the TorchScript exporter from the very module the torch variants run (ContractEncoder), so
the graph pools exactly like them. Precisions:
  fp32  traced from the float32 model;
  fp16  traced from a float16 torch model (its RMSNorm keeps the float32 upcast; converting an
        fp32 graph afterwards produced invalid models in a probe);
  int8  from the fp32 graph, by one of INT8_METHODS (export/int8.py does the quantizing;
        bench/int8_study.py measured them on documents up to max_tokens long).
"""

from __future__ import annotations

import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..artifacts.directories import atomic_output_dir, check_target, size_of
from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError
from ..embedders.base import Embedder
from ..embedders.onnx_runtime import INPUT_NAMES, ONNX_DATA, ONNX_FILE, OUTPUT_NAME, OnnxEmbedder
from ..embedders.torch_model import ContractEncoder, load_backbone
from ..gates.probe_files import ProbeOptions
from ..gates.table import GateOverrides
from ..gates.verification import GateRun
from ..model_files.contract_tokenizer import ContractTokenizer, write_tokenizer_files
from ..model_files.model_contract import read_contract
from ..model_files.portable_config import CONFIG_FILE, write_portable_config
from .exporter import admit, check_input, derived_reference_figures, load_candidate, shipped_file_failures
from .int8 import DEFAULT_INT8_METHOD, INT8_METHODS, quantize_int8

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_OPSET = 18
# Protobuf cannot hold a model over 2 GB; keep a margin for the graph itself.
EXTERNAL_DATA_ABOVE = 1_800_000_000


@dataclass
class OnnxOptions:
    precision: str = "fp32"
    int8_method: str = DEFAULT_INT8_METHOD
    opset: int = DEFAULT_OPSET
    overrides: GateOverrides = field(default_factory=GateOverrides)
    probes: ProbeOptions = field(default_factory=ProbeOptions)  # --probes: a sample of the user's texts too
    force: bool = False
    allow_unverified: bool = False  # derive from an input no gate admitted; the output is marked unverified
    log: callable = print
    timings: dict = field(default_factory=dict)


def export_onnx(source: Path, out: Path, *, reference: Embedder | None = None,
                reference_label: str | None = None, options: OnnxOptions | None = None) -> dict:
    """Export the model directory `source` (a merged checkpoint) to an ONNX artifact in `out`,
    gated against `reference` (default: `source` itself in float32 torch)."""
    options = options or OnnxOptions()
    log = options.log
    if options.precision not in PRECISIONS:
        raise MoaiError(f"unknown precision {options.precision!r}: expected one of {', '.join(PRECISIONS)}")
    if options.int8_method not in INT8_METHODS:
        raise MoaiError(f"unknown int8 method {options.int8_method!r}: expected one of {', '.join(INT8_METHODS)}")
    source, out = Path(source), Path(out)
    # the graph (fp32: twice a half-precision source; int8 also writes an fp32 graph first)
    check_target(out, options.force, need_bytes=size_of(source) * (1 if options.precision == "fp16" else 2))
    contract = read_contract(source)
    gate = options.overrides.apply("onnx", options.precision)

    provenance = check_input(source, allow_unverified=options.allow_unverified)
    figures, reference_label = derived_reference_figures(provenance, reference, reference_label, fallback=f"torch:{source}",
                                                         log=log, timings=options.timings, probes=options.probes)

    with atomic_output_dir(out, force=options.force) as tmp:
        t = time.perf_counter()
        log(f"exporting {options.precision} graph (opset {options.opset})")
        write_graph(source, contract, tmp, options.precision, options.opset, options.int8_method)
        # config.json travels for people and tools that read the architecture (older ones too); the
        # tokenizer files are written through the shared writer (end-token post-processor repaired)
        if (source / CONFIG_FILE).is_file():
            write_portable_config(tmp, source=source)
        write_tokenizer_files(source, contract, tmp)
        contract.save(tmp)
        options.timings["export_s"] = time.perf_counter() - t

        t = time.perf_counter()
        log("verifying the artifact as it ships: onnxruntime (CPU) on its own graph and tokenizer files")
        with load_candidate(lambda: OnnxEmbedder(tmp, name=f"onnx {options.precision}"), "onnx") as candidate:
            report = figures.gate_with(candidate, gate)
        report.file_failures += shipped_file_failures(tmp, contract, figures)
        options.timings["verify_s"] = time.perf_counter() - t
        hint = ""
        if options.precision == "int8":
            hint = (f" (try --int8-method {DEFAULT_INT8_METHOD}: the most accurate int8)"
                    if options.int8_method != DEFAULT_INT8_METHOD else " (no int8 method holds it: try --precision fp16)")
        report = admit(
            tmp, [GateRun(report, gate, serving_config_for(options.precision))], stage="onnx",
            what=f"onnx {options.precision}", source=source, reference_label=reference_label, figures=figures,
            fields={"precision": options.precision}, timings=options.timings, log=log, hint=hint,
            unverified=provenance.unverified,
            manifest_options={"precision": options.precision, "opset": options.opset,
                              "exporter": "torch.onnx (TorchScript)",
                              "int8_method": options.int8_method if options.precision == "int8" else None,
                              "inputs": list(INPUT_NAMES), "output": OUTPUT_NAME},
        )
    return report


def serving_config_for(precision: str):
    """What the gate ran: onnxruntime's CPU provider on the graph of `precision`."""
    from ..artifacts.kinds import kind_named

    return kind_named("onnx").serving_config("cpu", precision, "cpu")


def write_graph(source: Path, contract: EmbeddingContract, out: Path, precision: str, opset: int,
                int8_method: str = DEFAULT_INT8_METHOD) -> None:
    """Write model.onnx (+ model.onnx_data when large) for `precision` into `out`."""
    with tempfile.TemporaryDirectory(prefix="moai-onnx-", dir=out) as scratch:
        scratch = Path(scratch)
        if precision == "int8":
            fp32 = scratch / "fp32" / ONNX_FILE
            _trace(source, contract, fp32, torch.float32, opset)
            quantized = scratch / "int8" / ONNX_FILE
            quantized.parent.mkdir(parents=True)
            large = sum(p.stat().st_size for p in fp32.parent.iterdir()) > EXTERNAL_DATA_ABOVE
            quantize_int8(fp32, quantized, int8_method, large=large)
            _consolidate(quantized, out / ONNX_FILE, contract.dims)
        else:
            traced = scratch / "traced" / ONNX_FILE
            _trace(source, contract, traced, torch.float32 if precision == "fp32" else torch.float16, opset)
            _consolidate(traced, out / ONNX_FILE, contract.dims)


def _trace(source: Path, contract: EmbeddingContract, path: Path, dtype: torch.dtype, opset: int) -> None:
    path.parent.mkdir(parents=True)
    # Eager attention traces to plain MatMul/Softmax; the SDPA path traced in fp16 produced
    # graphs with mixed fp16/fp32 LayerNorm inputs that onnxruntime refuses (BERT).
    encoder = ContractEncoder(load_backbone(source, dtype, attn_implementation="eager"), contract).eval()
    # Trace with a left-padded batch of unequal lengths: an unpadded example lets transformers
    # skip the attention mask, and the graph would ignore padding forever after.
    tokenizer = ContractTokenizer.from_dir(source, contract, repair=True)
    batch = tokenizer.tokenize(["짧은 문장", "BC카드 연회비는 어떻게 되나요? 조금 더 긴 문장입니다."], "document")
    if batch.attention_mask.all():
        raise MoaiError("internal: the tracing batch must contain padding")
    example = (torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
    dynamic = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
               OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(encoder, example, str(path), input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False, do_constant_folding=True)


def _consolidate(src: Path, dst: Path, dims: int) -> None:
    """Re-save a graph as one file, or with ONE external data file when it is over 2 GB (the
    TorchScript exporter scatters one file per tensor). Also declares the output's width,
    which the tracer leaves symbolic, so consumers (and Triton configs) can read it."""
    import onnx

    model = onnx.load(str(src), load_external_data=True)
    width = model.graph.output[0].type.tensor_type.shape.dim[1]
    width.Clear()
    width.dim_value = dims
    size = sum(t.ByteSize() for t in model.graph.initializer)
    if size > EXTERNAL_DATA_ABOVE:
        onnx.save_model(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=ONNX_DATA, size_threshold=1024)
    else:
        onnx.save_model(model, str(dst))
