"""`moai-export triton`: a Triton model repository for an ONNX artifact (or, with
`--encoder engine`, for a merged model run by the packed engine).

Three models, Triton's conventions:
  <name>_tokenizer  python backend: TEXT (+ optional KIND) -> input_ids, attention_mask, by the
                    contract (query prompt, truncation keeping the end token, padding);
  <name>_encoder    the ONNX graph (pooling inside): "onnxruntime" platform for NVIDIA's
                    container (GPU, optional TensorRT), or a python-backend model running the
                    same file with onnxruntime (runs anywhere, including the CPU server here);
                    or "engine": the merged model in moai_export.engine inside the python
                    backend, on a GPU instance (KIND_GPU) or on CPU (KIND_CPU);
  <name>            ensemble: TEXT, KIND -> EMBEDDING [dims] float32.
Configs are built as ModelConfig protobuf messages, so they parse by construction.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import sys
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..addresses import parse_url
from ..admission import MANIFEST_FILE, ServingConfig, read_manifest, repository_id
from ..artifacts import PARITY_FILE, atomic_output_dir, check_output_location, write_json, write_manifest
from ..contract import EmbeddingContract
from ..embedders.base import Embedder
from ..embedders.onnx_runtime import ONNX_FILE, OUTPUT_NAME
from ..errors import MoaiError, VerificationFailed
from ..gates import GateOverrides
from ..inputs import write_tokenizer_files
from ..model_dir import read_contract
from ..triton_config import CONFIG_FILE, CONTRACT_PARAMETER, PRECISION_PARAMETER, REPOSITORY_ID_PARAMETER
from ..verification import PROBES_FILE, GateRun, VerificationRecord, chain_of
from .gate import admit, format_gate_table, load_candidate, reference_figures
from .onnx import ONNX_DATA

ENCODERS = ("python", "onnxruntime", "engine")
VERIFY_SCHEMES = ("grpc", "http")  # --verify-with SCHEME://HOST:PORT: a server that serves the written files
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
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
    verify: str = "local"  # local (a tritonserver here) | grpc://HOST:PORT | http://HOST:PORT | none
    verify_wait_s: float = 600.0  # --verify-with: how long to wait for the server to serve the written files
    engine_device: str = "cpu"  # engine encoder: cpu | cuda (KIND_CPU | KIND_GPU)
    engine_dtype: str | None = None  # engine encoder: bf16 | fp16 | fp32 (default: bf16 on cuda, fp32 on cpu)
    engine_max_batch_tokens: int = 16384
    engine_compile: bool = False
    engine_env: str | None = None  # the Python environment with torch for the encoder's stub (default: this one's)
    overrides: GateOverrides = field(default_factory=GateOverrides)

    def model_names(self) -> dict[str, str]:
        return {"ensemble": self.name, "tokenizer": f"{self.name}_tokenizer", "encoder": f"{self.name}_encoder"}


def _model_config():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def _to_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str):
    """Parse config.pbtxt text against Triton's ModelConfig schema (raises on anything unknown):
    the check that what this module writes is a valid config. Readers of the fields moai-export
    needs use moai_export.triton_config (no protobuf needed)."""
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
    config.output.extend([_output(pb, "input_ids", "TYPE_INT64", [-1]), _output(pb, "attention_mask", "TYPE_INT64", [-1]),
                          _output(pb, "num_tokens", "TYPE_INT64", [1])])
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
    elif options.encoder == "engine":
        config = pb.ModelConfig(name=name, backend="python")
        kind = pb.ModelInstanceGroup.KIND_GPU if options.engine_device == "cuda" else pb.ModelInstanceGroup.KIND_CPU
        config.instance_group.add(kind=kind, count=options.instances)
        # Triton's own way to give one python model another environment: the stub runs with this
        # environment activated (its torch, transformers, numpy), the tokenizer's stub keeps its own.
        config.parameters["EXECUTION_ENV_PATH"].string_value = options.engine_env or sys.prefix
        config.parameters["python_path"].string_value = moai_source_root()
        config.parameters["engine_options"].string_value = json.dumps(engine_options(options))
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


def engine_dtype(options: TritonOptions) -> str:
    return options.engine_dtype or ("bf16" if options.engine_device == "cuda" else "fp32")


def engine_options(options: TritonOptions) -> dict:
    """moai_export.engine.EngineOptions of the encoder (the instance's GPU is set at load)."""
    return {"device": "cpu", "dtype": engine_dtype(options), "max_batch_tokens": options.engine_max_batch_tokens,
            "max_batch_size": max(options.max_batch_size, 1), "compile": options.engine_compile}


def moai_source_root() -> str:
    """Where this moai_export is imported from: the encoder's stub imports the same code (a source
    checkout need not be installed in the environment)."""
    import moai_export

    return str(Path(moai_export.__file__).resolve().parents[1])


def ensemble_config(options: TritonOptions, contract: EmbeddingContract, precision: str = "fp32"):
    dims = contract.dims
    pb = _model_config()
    names = options.model_names()
    config = pb.ModelConfig(name=names["ensemble"], platform="ensemble", max_batch_size=options.max_batch_size)
    # Both required: a client that forgets KIND would silently get document vectors for its
    # queries (no instruction prompt), and with an optional input Triton 2.51 stops checking
    # required ones (a request without TEXT ended in "unexpected deadlock"); now Triton names
    # the missing input in a 400.
    config.input.extend([_input(pb, "TEXT", "TYPE_STRING", [1]), _input(pb, "KIND", "TYPE_STRING", [1])])
    # TOKENS: each text's token count (prompt and end token included, after truncation), from the
    # tokenizer model: what the gateway bills as usage without tokenizing every request again.
    config.output.extend([_output(pb, "EMBEDDING", "TYPE_FP32", [dims]), _output(pb, "TOKENS", "TYPE_INT64", [1])])
    # Clients (the Triton Embedder) read the contract from the model config: no guessing of
    # dims, prompts or max tokens on the client side.
    config.parameters[CONTRACT_PARAMETER].string_value = json.dumps(contract.to_dict(), ensure_ascii=False)
    config.parameters[PRECISION_PARAMETER].string_value = precision
    config.parameters[REPOSITORY_ID_PARAMETER].string_value = uuid.uuid4().hex
    tokenize = config.ensemble_scheduling.step.add(model_name=names["tokenizer"], model_version=-1)
    tokenize.input_map.update({"TEXT": "TEXT", "KIND": "KIND"})
    tokenize.output_map.update({"input_ids": "_input_ids", "attention_mask": "_attention_mask", "num_tokens": "TOKENS"})
    encode = config.ensemble_scheduling.step.add(model_name=names["encoder"], model_version=-1)
    encode.input_map.update({"input_ids": "_input_ids", "attention_mask": "_attention_mask"})
    encode.output_map.update({OUTPUT_NAME: "EMBEDDING"})
    return config


def write_repository(artifact: Path, repo: Path, options: TritonOptions | None = None, log=print, *,
                     reference: Embedder | None = None, reference_label: str | None = None) -> dict:
    """Write the three models for the ONNX `artifact` into `repo`, verify the repository on a real
    server (`options.verify`), and publish the whole repository in one rename (other models and
    other versions already there are kept)."""
    options = options or TritonOptions()
    artifact, repo = Path(artifact), Path(repo).absolute()
    _check_options(options)
    if options.encoder == "engine" and not (artifact / "config.json").is_file():
        raise MoaiError(f"{artifact}: no config.json; --encoder engine takes a merged model (`moai-export merge`)")
    if options.encoder != "engine" and not (artifact / ONNX_FILE).is_file():
        raise MoaiError(f"{artifact}: no {ONNX_FILE}; pass a directory written by `moai-export onnx`")
    if repo.exists() and not repo.is_dir():
        raise MoaiError(f"cannot write {repo}: exists as a file, not a directory")
    check_output_location(repo)  # graphs are hard-linked when the file system allows
    contract = read_contract(artifact)
    if not (artifact / PARITY_FILE).is_file():
        log(f"warning: {artifact} has no {PARITY_FILE}: it was not admitted by a parity gate")
    names = options.model_names()
    version = str(options.version)
    for model in names.values():
        if (repo / model / version).exists() and not options.force:
            raise MoaiError(f"{repo / model / version} exists; pass --force to replace it, or --version N for a new version")
    source_manifest = read_manifest(artifact) or {}
    precision = served_precision(options, source_manifest.get("options", {}).get("precision", "fp32"))
    if options.verify == "local" and options.encoder == "engine" and options.engine_device == "cuda":
        from ..embedders.torch_model import check_device

        check_device("cuda")  # a GPU instance on a machine without one would never load
    elif options.verify == "local" and options.encoder == "onnxruntime":
        raise MoaiError("the local tritonserver has the python backend only: verify an --encoder onnxruntime "
                        "repository on the server that will run it (--verify-with grpc://HOST:PORT), or --no-verify")

    figures = None
    if options.verify != "none":
        owned = reference is None  # the caller's reference stays open for the caller
        reference, reference_label = _triton_reference(artifact, source_manifest, reference, reference_label)
        figures, reference_label = reference_figures(artifact, reference, reference_label, log=log, timings={})
        if owned:
            reference.close()

    with atomic_output_dir(repo, force=True) as staging:
        if repo.is_dir():
            _link_tree(repo, staging)  # the repository as it is: other models, other versions
        for model in names.values():
            shutil.rmtree(staging / model / version, ignore_errors=True)
        _write_models(staging, artifact, contract, options, precision)
        inputs = {"artifact": str(artifact.resolve()), "artifact_files": source_manifest.get("files", {}),
                  "artifact_options": source_manifest.get("options", {})}
        manifest_options = {"encoder": options.encoder, "precision": precision, "max_batch_size": options.max_batch_size,
                            "max_queue_delay_us": options.max_queue_delay_us,
                            "preferred_batch_sizes": list(options.preferred_batch_sizes),
                            "instances": options.instances, "tensorrt": options.tensorrt,
                            "tensorrt_precision": options.tensorrt_precision if options.tensorrt else None,
                            "version": options.version, "models": names}
        if options.encoder == "engine":
            manifest_options["engine"] = {**engine_options(options), "device": options.engine_device,
                                          "env": options.engine_env or sys.prefix}
        ensemble_dir = staging / names["ensemble"]
        config = serving_config(options, precision)
        gate = options.overrides.apply("triton", precision)
        if options.verify == "local":
            log("verifying the repository on a real local tritonserver (free loopback ports): the probe set "
                "through the ensemble, as clients will send it")
            from ..embedders.triton import TritonRepositoryEmbedder

            with load_candidate(lambda: TritonRepositoryEmbedder(staging, names["ensemble"], admission="skip",
                                                                 name=f"triton ({options.encoder} encoder, "
                                                                      f"{precision})"), "triton") as candidate:
                report = figures.gate_with(candidate, gate)
            admit(ensemble_dir, [GateRun(report, gate, config)], stage="triton", what="triton repository",
                  source=None, parent=artifact, reference_label=reference_label, figures=figures,
                  fields={"precision": precision}, timings={}, log=log, manifest_options=manifest_options,
                  manifest_inputs=inputs)
            _rewrite_manifest_files(staging, names)
        else:
            write_manifest(ensemble_dir, stage="triton", inputs=inputs, options=manifest_options)
            _rewrite_manifest_files(staging, names)
            if options.verify == "none":
                log("warning: --no-verify: the repository was NOT run through a server; run_local.sh refuses it "
                    "until `moai-export verify triton:REPO` admits it (or --allow-unverified)")
    if options.verify.startswith(("grpc://", "http://")):
        verify_remote(repo, names["ensemble"], options.verify, figures, gate, config, reference_label, log,
                      wait_s=options.verify_wait_s)
    log(f"triton repository {repo}: {', '.join(names.values())} (encoder: {options.encoder}, {precision})")
    return {"repository": str(repo), "models": names, "dims": contract.dims, "encoder": options.encoder,
            "precision": precision, "verified": options.verify}


def served_precision(options: TritonOptions, artifact_precision: str) -> str:
    """What the encoder really computes in: TensorRT FP16 turns any graph into fp16; the engine
    computes in its dtype."""
    if options.encoder == "engine":
        return engine_dtype(options)
    if options.tensorrt and options.tensorrt_precision == "FP16":
        return "fp16"
    return artifact_precision


def serving_config(options: TritonOptions, precision: str) -> ServingConfig:
    from ..triton_admission import repository_serving_config

    return repository_serving_config(options.encoder, precision, options.tensorrt, options.engine_device)


def _triton_reference(artifact: Path, manifest: dict, reference, label):
    """The reference the artifact was gated against when it can still be loaded, else the ONNX
    artifact itself in onnxruntime (then the repository is checked against what it serves)."""
    if reference is not None:
        return reference, label
    from ..embedders import load_embedder

    if not (artifact / ONNX_FILE).is_file():  # the engine's merged model: gated against itself in torch
        recorded = (manifest.get("inputs") or {}).get("reference")
        fallback = f"torch:{artifact}"
        try:
            return load_embedder(recorded or fallback, name="reference", admission="skip"), recorded or fallback
        except MoaiError:
            return load_embedder(fallback, name="reference", admission="skip"), fallback
    recorded = (manifest.get("inputs") or {}).get("reference")
    if recorded:
        try:
            return load_embedder(recorded, name=f"reference ({recorded})"), recorded
        except MoaiError:
            pass
    return load_embedder(f"onnx:{artifact}", name=f"onnx:{artifact}", admission="skip"), f"onnx:{artifact}"


def _write_models(staging: Path, artifact: Path, contract: EmbeddingContract, options: TritonOptions,
                  precision: str) -> None:
    names = options.model_names()
    version = str(options.version)
    # tokenizer
    tok_dir = staging / names["tokenizer"] / version
    tok_dir.mkdir(parents=True)
    _copy_source("tokenizer_model.py", tok_dir / "model.py")
    _copy_source("input_rules.py", tok_dir / "moai_input_rules.py", package="moai_export")
    write_tokenizer_files(artifact, contract, tok_dir, with_config=False)
    contract.save(tok_dir)
    (staging / names["tokenizer"] / "warmup").mkdir(exist_ok=True)
    raw = WARMUP_TEXT.encode("utf-8")
    (staging / names["tokenizer"] / "warmup" / "text").write_bytes(struct.pack("<I", len(raw)) + raw)
    _write_config(staging / names["tokenizer"], tokenizer_config(options))

    # encoder
    enc_dir = staging / names["encoder"] / version
    enc_dir.mkdir(parents=True)
    if options.encoder == "engine":  # the merged model's files as they are (weights hard-linked)
        for path in sorted(artifact.iterdir()):
            if path.is_file() and path.name not in (MANIFEST_FILE, PARITY_FILE, PROBES_FILE):
                _link_or_copy(path, enc_dir / path.name)
        _copy_source("engine_model.py", enc_dir / "model.py")
    for name in (ONNX_FILE, ONNX_DATA):
        if (artifact / name).is_file():
            _link_or_copy(artifact / name, enc_dir / name)
    if options.encoder == "python":
        _copy_source("encoder_model.py", enc_dir / "model.py")
        contract.save(enc_dir)
    (staging / names["encoder"] / "warmup").mkdir(exist_ok=True)
    (staging / names["encoder"] / "warmup" / "ones").write_bytes(struct.pack("<8q", *([1] * 8)))
    _write_config(staging / names["encoder"], encoder_config(options, contract.dims))

    # ensemble (+ the contract and the artifact's parity report, for people)
    ens_dir = staging / names["ensemble"]
    (ens_dir / version).mkdir(parents=True, exist_ok=True)
    _write_config(ens_dir, ensemble_config(options, contract, precision))
    contract.save(ens_dir)
    if (artifact / PARITY_FILE).is_file():
        shutil.copyfile(artifact / PARITY_FILE, ens_dir / "onnx_artifact_parity.json")


def _rewrite_manifest_files(staging: Path, names: dict) -> None:
    """The ensemble's manifest covers the files of all three models (relative to the repository):
    the repository is verified, and admitted, as a whole."""
    from ..admission import MANIFEST_FILE, file_record

    path = staging / names["ensemble"] / MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8"))
    manifest["files"] = {
        p.relative_to(staging).as_posix(): file_record(p)
        for model in names.values() for p in sorted((staging / model).rglob("*"))
        if p.is_file() and p.name != MANIFEST_FILE
    }
    manifest["files_root"] = ".."
    write_json(path, manifest)


def _wait_for_repository(address: str, model: str, protocol: str, wanted: str, wait_s: float, name: str):
    """A client of the server at `address` once it serves the ensemble with this repository id:
    a server still loading, or serving an older copy, is waited for, not verified."""
    import time

    from ..embedders.triton import TritonEmbedder

    deadline = time.monotonic() + wait_s
    last = "no answer"
    while True:
        try:
            served = TritonEmbedder(address, model, protocol=protocol, ready_timeout=5, name=name)
        except MoaiError as exc:
            last = str(exc)
        else:
            if served.repository_id == wanted:
                return served
            last = f"it serves another {model!r} (repository id {served.repository_id!r})"
            served.close()
        if time.monotonic() > deadline:
            raise MoaiError(f"{protocol}://{address} did not serve this repository within {wait_s:.0f} s: {last}")
        time.sleep(1.0)


def verify_remote(repo: Path, model: str, url: str, figures, gate, config: ServingConfig, reference_label: str,
                  log, wait_s: float = 600.0) -> None:
    """Gate a server that serves the published `repo` (e.g. NVIDIA's container on a GPU) and record
    the result in the repository; the server must serve exactly these files."""
    from ..admission import record_admission

    protocol, endpoint = parse_url(url, VERIFY_SCHEMES, "--verify-with")
    address = str(endpoint)
    log(f"waiting for {url} to serve {repo} (start the server on it now; up to {wait_s:.0f} s)")
    with _wait_for_repository(address, model, protocol, repository_id(repo / model), wait_s,
                              name=f"triton {url} ({config.describe()})") as served:
        log(f"verifying the repository as served by {url}")
        report = figures.gate_with(served, gate)
    log(format_gate_table([report]))
    ensemble_dir = repo / model
    artifact = ((read_manifest(ensemble_dir) or {}).get("inputs") or {}).get("artifact")
    run = GateRun(report, gate, config)
    record = VerificationRecord("triton", reference_label, [run], figures.probes, token_lengths=figures.token_lengths,
                                chain=chain_of(Path(artifact) if artifact else None, reference_label),
                                fields={"precision": config.dtype, "server": url})
    record.write(ensemble_dir)
    if not record.passed:
        raise VerificationFailed(f"triton repository verification on {url} FAILED (the repository is written but "
                                 f"not admitted; launchers refuse it): " + "; ".join(record.failures[:5]))
    record_admission(ensemble_dir, run.admission(reference_label))
    log(f"admitted for {config.describe()}")


def _link_tree(src: Path, dst: Path) -> None:
    """A copy of `src` in `dst` whose files are hard links (graphs are gigabytes)."""
    for path in sorted(src.rglob("*")):
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(path, target)


def _check_options(options: TritonOptions) -> None:
    if not _NAME.match(options.name):
        raise MoaiError(f"model name {options.name!r}: use letters, digits, '_', '-', '.'")
    if options.encoder not in ENCODERS:
        raise MoaiError(f"unknown encoder {options.encoder!r}: expected one of {', '.join(ENCODERS)}")
    if options.max_batch_size < 1:
        raise MoaiError("max batch size must be at least 1")
    if options.instances < 1:
        raise MoaiError("instances must be at least 1")
    if options.engine_device not in ("cpu", "cuda"):
        raise MoaiError(f"--engine-device {options.engine_device!r}: expected cpu or cuda")
    if options.tensorrt and options.encoder != "onnxruntime":
        raise MoaiError("--tensorrt needs --encoder onnxruntime (the GPU path in NVIDIA's container)")
    if options.verify not in ("local", "none"):
        parse_url(options.verify, VERIFY_SCHEMES, "--verify-with")


def _write_config(model_dir: Path, config) -> None:
    (model_dir / CONFIG_FILE).write_text(_to_text(config), encoding="utf-8")


def _copy_source(name: str, dst: Path, package: str = "moai_export.export.triton_backend") -> None:
    source = resources.files(package).joinpath(name)
    dst.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard link when possible: an fp32 graph of the full model is 2.4 GB."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)

