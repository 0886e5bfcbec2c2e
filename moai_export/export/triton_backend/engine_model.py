"""Triton python backend: the packed engine (moai_export.engine) on the merged model beside
this file, on the instance's GPU (KIND_GPU) or on CPU (KIND_CPU).

The Triton runtime environment carries no torch: the config's EXECUTION_ENV_PATH names an
environment that has torch and transformers (by default the one `moai-export triton` ran in;
`--engine-env` names another), which Triton activates for this model's stub only. The parameter
`python_path` puts the moai_export source in front of sys.path (a checkout need not be installed).

Triton's dynamic batcher hands over whole batches of padded token rows; the engine unpads
them, sorts them by length and cuts them under its own token budget."""

import json
import os
import sys

import torch
import triton_python_backend_utils as pb_utils
from torch.utils.dlpack import from_dlpack, to_dlpack


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        for path in reversed([p for p in parameters.get("python_path", "").split(os.pathsep) if p]):
            if path not in sys.path:
                sys.path.insert(0, path)
        from moai_export.engine import EngineEmbedder, EngineOptions
        from moai_export.engine.packing import unpad

        self.unpad = unpad  # importable only once python_path is on sys.path

        options = json.loads(parameters["engine_options"])
        if args.get("model_instance_kind") == "GPU":
            options["device"] = f"cuda:{args['model_instance_device_id']}"
        # The repository as a whole was gated (the ensemble's manifest): no per-directory admission.
        self.engine = EngineEmbedder.from_dir(here, EngineOptions(**options), name="triton engine", admission="skip")

    def execute(self, requests):
        # Tensors cross through DLPack, never as_numpy(): the stub's utilities are built against
        # numpy 1 and, with the engine environment's numpy 2 loaded, as_numpy() returns arrays
        # with wrong strides (rows read as repeats of one element; seen on Triton 2.51).
        rows, counts = [], []
        for request in requests:
            ids = from_dlpack(pb_utils.get_input_tensor_by_name(request, "input_ids").to_dlpack()).numpy()
            masks = from_dlpack(pb_utils.get_input_tensor_by_name(request, "attention_mask").to_dlpack()).numpy()
            rows.extend(self.unpad(ids, masks))  # boolean indexing copies: rows outlive the request tensors
            counts.append(ids.shape[0])
        vectors = torch.from_numpy(self.engine.run_rows(rows))
        responses, start = [], 0
        for count in counts:
            part = vectors[start:start + count].contiguous()
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor.from_dlpack("sentence_embedding", to_dlpack(part))]))
            start += count
        return responses

    def finalize(self):
        self.engine.close()
