"""`moai-export triton`: a Triton model repository for an ONNX artifact.

Three models, Triton's conventions:
  <name>_tokenizer  python backend: TEXT (+ optional KIND) -> input_ids, attention_mask, by the
                    contract (query prompt, truncation keeping the end token, padding);
  <name>_encoder    the ONNX graph (pooling inside): "onnxruntime" platform for NVIDIA's
                    container (GPU, optional TensorRT), or a python-backend model running the
                    same file with onnxruntime (runs anywhere, including the CPU server here);
  <name>            ensemble: TEXT, KIND -> EMBEDDING [dims] float32.
Configs are built as ModelConfig protobuf messages, so they parse by construction.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..artifacts import MANIFEST_FILE, PARITY_FILE, check_target, write_manifest
from ..contract import EmbeddingContract, read_contract
from ..embedders.onnx_runtime import ONNX_FILE, OUTPUT_NAME
from ..errors import MoaiError
from ..inputs import write_tokenizer_files
from .onnx import ONNX_DATA

ENCODERS = ("python", "onnxruntime")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
CONTRACT_PARAMETER = "moai_contract"
PRECISION_PARAMETER = "moai_precision"  # of the ONNX artifact served: picks the parity gate
WARMUP_TEXT = "BC카드 연회비는 어떻게 되나요?"


@dataclass
class TritonOptions:
    name: str = "moai_embedding"
    encoder: str = "python"
    max_batch_size: int = 64
    max_queue_delay_us: int = 2000
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    instances: int = 1  # encoder instances (tokenizer gets one per two encoders, at least one)
    intra_op_threads: int = 0  # python encoder: onnxruntime threads per instance (0: its default)
    tensorrt: bool = False  # onnxruntime encoder: TensorRT execution accelerator
    tensorrt_precision: str = "FP16"
    version: int = 1
    force: bool = False

    def model_names(self) -> dict[str, str]:
        return {"ensemble": self.name, "tokenizer": f"{self.name}_tokenizer", "encoder": f"{self.name}_encoder"}


def _model_config():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _to_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str):
    """Parse config.pbtxt text against Triton's ModelConfig schema (raises on anything unknown)."""
    from google.protobuf import text_format

    return text_format.Parse(text, _model_config().ModelConfig())


def _input(pb, name: str, data_type: str, dims: list[int], optional: bool = False):
    tensor = pb.ModelInput(name=name, data_type=getattr(pb, data_type), dims=dims)
    if optional:
        tensor.optional = True
    return tensor


def _output(pb, name: str, data_type: str, dims: list[int]):
    return pb.ModelOutput(name=name, data_type=getattr(pb, data_type), dims=dims)


def _batching(pb, config, options: TritonOptions) -> None:
    config.max_batch_size = options.max_batch_size
    config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    config.dynamic_batching.preferred_batch_size.extend(
        [b for b in options.preferred_batch_sizes if b <= options.max_batch_size])


def tokenizer_config(options: TritonOptions):
    pb = _model_config()
    config = pb.ModelConfig(name=options.model_names()["tokenizer"], backend="python")
    _batching(pb, config, options)
    config.input.extend([_input(pb, "TEXT", "TYPE_STRING", [1]), _input(pb, "KIND", "TYPE_STRING", [1], True)])
    config.output.extend([_output(pb, "input_ids", "TYPE_INT64", [-1]), _output(pb, "attention_mask", "TYPE_INT64", [-1])])
    config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=max(1, options.instances // 2))
    warmup = config.model_warmup.add(name="warmup_text", batch_size=1)
    warmup.inputs["TEXT"].data_type = pb.TYPE_STRING
    warmup.inputs["TEXT"].dims.append(1)
    warmup.inputs["TEXT"].input_data_file = "text"
    return config


def encoder_config(options: TritonOptions, dims: int):
    pb = _model_config()
    name = options.model_names()["encoder"]
    if options.encoder == "python":
        config = pb.ModelConfig(name=name, backend="python")
        config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_CPU, count=options.instances)
        config.parameters["intra_op_threads"].string_value = str(options.intra_op_threads)
    else:
        config = pb.ModelConfig(name=name, platform="onnxruntime_onnx", default_model_filename=ONNX_FILE)
        config.instance_group.add(kind=pb.ModelInstanceGroup.KIND_GPU, count=options.instances)
        if options.tensorrt:
            accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accelerator.parameters["precision_mode"] = options.tensorrt_precision
            accelerator.parameters["max_workspace_size_bytes"] = str(4 << 30)
    _batching(pb, config, options)
    config.input.extend([_input(pb, "input_ids", "TYPE_INT64", [-1]), _input(pb, "attention_mask", "TYPE_INT64", [-1])])
    config.output.extend([_output(pb, OUTPUT_NAME, "TYPE_FP32", [dims])])
    warmup = config.model_warmup.add(name="warmup_tokens", batch_size=1)
    warmup.inputs["input_ids"].data_type = pb.TYPE_INT64
    warmup.inputs["input_ids"].dims.append(8)
    warmup.inputs["input_ids"].zero_data = True
    warmup.inputs["attention_mask"].data_type = pb.TYPE_INT64
    warmup.inputs["attention_mask"].dims.append(8)
    warmup.inputs["attention_mask"].input_data_file = "ones"
    return config


def ensemble_config(options: TritonOptions, contract: EmbeddingContract, precision: str = "fp32"):
    dims = contract.dims
    pb = _model_config()
    names = options.model_names()
    config = pb.ModelConfig(name=names["ensemble"], platform="ensemble", max_batch_size=options.max_batch_size)
    config.input.extend([_input(pb, "TEXT", "TYPE_STRING", [1]), _input(pb, "KIND", "TYPE_STRING", [1], True)])
    config.output.extend([_output(pb, "EMBEDDING", "TYPE_FP32", [dims])])
    # Clients (the Triton Embedder) read the contract from the model config: no guessing of
    # dims, prompts or max tokens on the client side.
    config.parameters[CONTRACT_PARAMETER].string_value = json.dumps(contract.to_dict(), ensure_ascii=False)
    config.parameters[PRECISION_PARAMETER].string_value = precision
    tokenize = config.ensemble_scheduling.step.add(model_name=names["tokenizer"], model_version=-1)
    tokenize.input_map.update({"TEXT": "TEXT", "KIND": "KIND"})
    tokenize.output_map.update({"input_ids": "_input_ids", "attention_mask": "_attention_mask"})
    encode = config.ensemble_scheduling.step.add(model_name=names["encoder"], model_version=-1)
    encode.input_map.update({"input_ids": "_input_ids", "attention_mask": "_attention_mask"})
    encode.output_map.update({OUTPUT_NAME: "EMBEDDING"})
    return config


def write_repository(artifact: Path, repo: Path, options: TritonOptions | None = None, log=print) -> dict:
    """Write the three models for the ONNX `artifact` into `repo` (other models there are kept)."""
    options = options or TritonOptions()
    artifact, repo = Path(artifact), Path(repo)
    _check_options(options)
    if not (artifact / ONNX_FILE).is_file():
        raise MoaiError(f"{artifact}: no {ONNX_FILE}; pass a directory written by `moai-export onnx`")
    contract = read_contract(artifact)
    if not (artifact / PARITY_FILE).is_file():
        log(f"warning: {artifact} has no {PARITY_FILE}: it was not admitted by a parity gate")
    names = options.model_names()
    for model in names.values():
        check_target(repo / model, options.force)

    repo.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{repo.name}.tmp-", dir=repo.parent))
    try:
        version = str(options.version)
        # tokenizer
        tok_dir = staging / names["tokenizer"] / version
        tok_dir.mkdir(parents=True)
        _copy_source("tokenizer_model.py", tok_dir / "model.py")
        write_tokenizer_files(artifact, contract, tok_dir, with_config=False)
        contract.save(tok_dir)
        (staging / names["tokenizer"] / "warmup").mkdir()
        raw = WARMUP_TEXT.encode("utf-8")
        (staging / names["tokenizer"] / "warmup" / "text").write_bytes(struct.pack("<I", len(raw)) + raw)
        _write_config(staging / names["tokenizer"], tokenizer_config(options))

        # encoder
        enc_dir = staging / names["encoder"] / version
        enc_dir.mkdir(parents=True)
        for name in (ONNX_FILE, ONNX_DATA):
            if (artifact / name).is_file():
                _link_or_copy(artifact / name, enc_dir / name)
        if options.encoder == "python":
            _copy_source("encoder_model.py", enc_dir / "model.py")
            contract.save(enc_dir)
        (staging / names["encoder"] / "warmup").mkdir()
        (staging / names["encoder"] / "warmup" / "ones").write_bytes(struct.pack("<8q", *([1] * 8)))
        _write_config(staging / names["encoder"], encoder_config(options, contract.dims))

        # ensemble (+ the contract, manifest and the artifact's parity report, for people)
        ens_dir = staging / names["ensemble"]
        (ens_dir / version).mkdir(parents=True)
        source_manifest = json.loads((artifact / MANIFEST_FILE).read_text()) if (artifact / MANIFEST_FILE).is_file() else {}
        precision = source_manifest.get("options", {}).get("precision", "fp32")
        _write_config(ens_dir, ensemble_config(options, contract, precision))
        contract.save(ens_dir)
        if (artifact / PARITY_FILE).is_file():
            shutil.copyfile(artifact / PARITY_FILE, ens_dir / PARITY_FILE)
        write_manifest(
            ens_dir, stage="triton",
            inputs={"artifact": str(artifact.resolve()), "artifact_outputs": source_manifest.get("outputs", {}),
                    "artifact_options": source_manifest.get("options", {})},
            options={"encoder": options.encoder, "max_batch_size": options.max_batch_size,
                     "max_queue_delay_us": options.max_queue_delay_us,
                     "preferred_batch_sizes": list(options.preferred_batch_sizes), "instances": options.instances,
                     "tensorrt": options.tensorrt, "version": options.version, "models": names},
        )
        for model in names.values():
            target = repo / model
            if target.exists():
                shutil.rmtree(target)
            os.rename(staging / model, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"triton repository {repo}: {', '.join(names.values())} (encoder: {options.encoder})")
    return {"repository": str(repo), "models": names, "dims": contract.dims, "encoder": options.encoder}


def _check_options(options: TritonOptions) -> None:
    if not _NAME.match(options.name):
        raise MoaiError(f"model name {options.name!r}: use letters, digits, '_', '-', '.'")
    if options.encoder not in ENCODERS:
        raise MoaiError(f"unknown encoder {options.encoder!r}: expected one of {', '.join(ENCODERS)}")
    if options.max_batch_size < 1:
        raise MoaiError("max batch size must be at least 1")
    if options.instances < 1:
        raise MoaiError("instances must be at least 1")
    if options.tensorrt and options.encoder != "onnxruntime":
        raise MoaiError("--tensorrt needs --encoder onnxruntime (the GPU path in NVIDIA's container)")


def _write_config(model_dir: Path, config) -> None:
    (model_dir / "config.pbtxt").write_text(_to_text(config), encoding="utf-8")


def _copy_source(name: str, dst: Path) -> None:
    source = resources.files("moai_export.export.triton_backend").joinpath(name)
    dst.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible: an fp32 graph of the full model is 2.4 GB."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)

