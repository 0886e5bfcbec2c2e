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

Modules: options (TritonOptions and what follows from them), model_configs (the config.pbtxt
messages), files (the models' files in a staging directory), repository (write, verify,
publish), remote (verification on a server started elsewhere).
"""

from .model_configs import encoder_config, ensemble_config, parse_config, tokenizer_config
from .options import TritonOptions
from .remote import verify_remote
from .repository import write_repository

__all__ = ["TritonOptions", "encoder_config", "ensemble_config", "parse_config", "tokenizer_config", "verify_remote",
           "write_repository"]
