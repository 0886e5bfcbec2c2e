"""Triton python backend: run the ONNX artifact (model.onnx beside this file) with
onnxruntime on CPU. The graph pools and normalizes; this only batches requests together."""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        here = os.path.join(args["model_repository"], args["model_version"])
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        options = ort.SessionOptions()
        threads = int(parameters.get("intra_op_threads", "0"))
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(os.path.join(here, "model.onnx"), options,
                                            providers=["CPUExecutionProvider"])
        with open(os.path.join(here, "moai_contract.json"), encoding="utf-8") as handle:
            contract = json.load(handle)
        self.pad_id = contract["pad_token_id"]
        self.left = contract["padding_side"] == "left"

    def _pad(self, array, length, value):
        missing = length - array.shape[1]
        width = ((0, 0), (missing, 0)) if self.left else ((0, 0), (0, missing))
        return np.pad(array, width, constant_values=value)

    def execute(self, requests):
        ids, masks = [], []
        for request in requests:
            ids.append(pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy())
            masks.append(pb_utils.get_input_tensor_by_name(request, "attention_mask").as_numpy())
        # Requests tokenized in different executions may differ in length: pad to the longest
        # on the contract's side (masked positions do not change the embedding), run one batch.
        length = max(i.shape[1] for i in ids)
        ids = np.concatenate([self._pad(i, length, self.pad_id) for i in ids])
        masks = np.concatenate([self._pad(m, length, 0) for m in masks])
        vectors = self.session.run(["sentence_embedding"], {"input_ids": ids, "attention_mask": masks})[0]
        responses, start = [], 0
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, "input_ids").as_numpy().shape[0]
            responses.append(pb_utils.InferenceResponse(
                output_tensors=[pb_utils.Tensor("sentence_embedding", vectors[start:start + rows])]))
            start += rows
        return responses
