"""The three models' `config.pbtxt`, built as Triton ModelConfig protobuf messages so they parse
by construction (the readers of what was written: moai_export.model_files.triton_config)."""

from __future__ import annotations

import json
import sys
import uuid

from ...core.batching import SERVING_BUDGETS
from ...core.contract import EmbeddingContract
from ...embedders.onnx_runtime import ONNX_FILE, OUTPUT_NAME
from ...model_files.triton_config import (
    CONTRACT_PARAMETER,
    PRECISION_PARAMETER,
    REPOSITORY_ID_PARAMETER,
    TOKENS,
    UNTRUNCATED_TOKENS,
)
from .options import TritonOptions, engine_options, moai_source_root


def _model_config():
    from tritonclient.grpc import model_config_pb2

    return model_config_pb2


def to_text(config) -> str:
    from google.protobuf import text_format

    return text_format.MessageToString(config)


def parse_config(text: str):
    """Parse config.pbtxt text against Triton's ModelConfig schema (raises on anything unknown):
    the check that what this module writes is a valid config. Readers of the fields moai-export
    needs use moai_export.model_files.triton_config (no protobuf needed)."""
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
                          _output(pb, "num_tokens", "TYPE_INT64", [1]), _output(pb, "untruncated_tokens", "TYPE_INT64", [1])])
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
        # the padded tokens of one onnxruntime pass (encoder_model.py sorts and cuts under it)
        config.parameters["max_batch_tokens"].string_value = str(SERVING_BUDGETS["cpu"].max_batch_tokens)
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
    # UNTRUNCATED_TOKENS: the same before truncation; above max_tokens, the text was cut, which the
    # gateway reports (or refuses) instead of embedding it silently.
    config.output.extend([_output(pb, "EMBEDDING", "TYPE_FP32", [dims]), _output(pb, TOKENS, "TYPE_INT64", [1]),
                          _output(pb, UNTRUNCATED_TOKENS, "TYPE_INT64", [1])])
    # Clients (the Triton Embedder) read the contract from the model config: no guessing of
    # dims, prompts or max tokens on the client side.
    config.parameters[CONTRACT_PARAMETER].string_value = json.dumps(contract.to_dict(), ensure_ascii=False)
    config.parameters[PRECISION_PARAMETER].string_value = precision
    config.parameters[REPOSITORY_ID_PARAMETER].string_value = uuid.uuid4().hex
    tokenize = config.ensemble_scheduling.step.add(model_name=names["tokenizer"], model_version=-1)
    tokenize.input_map.update({"TEXT": "TEXT", "KIND": "KIND"})
    tokenize.output_map.update({"input_ids": "_input_ids", "attention_mask": "_attention_mask",
                                "num_tokens": TOKENS, "untruncated_tokens": UNTRUNCATED_TOKENS})
    encode = config.ensemble_scheduling.step.add(model_name=names["encoder"], model_version=-1)
    encode.input_map.update({"input_ids": "_input_ids", "attention_mask": "_attention_mask"})
    encode.output_map.update({OUTPUT_NAME: "EMBEDDING"})
    return config
