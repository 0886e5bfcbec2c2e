"""One reader of the input rules (moai_export.core.input_rules) and its three answer shapes: an
Embedder raises InvalidInput (a MoaiError), the gateway answers OpenAI's 400 naming `input[i]`,
and the Triton tokenizer model, which runs where moai_export is not installed, answers a
Triton INVALID_ARG error naming `TEXT item i` from the copy written beside it."""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest

from moai_export.core.errors import MoaiError
from moai_export.core.input_rules import InvalidInput, check_texts


@pytest.mark.parametrize("texts, reason, index, message", [
    ("one string", "invalid_input", None, "the input is a single string, not a list of texts"),
    (7, "invalid_input", None, "the input is int, not a list of texts"),
    (["ok", 3], "invalid_input", 1, "text 1 is int, not str"),
    (["ok", "", "ok"], "empty_input", 1, "text 1 is empty: empty texts have no embedding"),
    (["ok"] * 4, "too_many_inputs", None, "the input has 4 texts; the limit is 3 per request"),
    (["ok", "x" * 11], "input_too_long", 1, "text 1 has 11 characters; the limit is 10"),
    (["ok", "a\ud800b"], "invalid_unicode", 1, "text 1 has a lone surrogate (U+D800) at character 1"),
])
def test_each_rule_names_the_text_and_its_reason(texts, reason, index, message):
    with pytest.raises(InvalidInput) as caught:
        check_texts(texts, max_texts=3, max_chars=10)
    assert isinstance(caught.value, MoaiError)
    assert (caught.value.reason, caught.value.index) == (reason, index)
    assert str(caught.value).startswith(message)


def test_valid_texts_pass_as_a_list():
    assert check_texts(("a", " ", "é" * 10), max_texts=3, max_chars=10) == ["a", " ", "é" * 10]
    assert check_texts(iter([])) == []


def test_the_gateway_answers_in_openai_shape_naming_input_i():
    from moai_export.gateway.app import Gateway
    from moai_export.gateway.config import GatewayConfig
    from moai_export.gateway.errors import ApiError

    gateway = Gateway(GatewayConfig("127.0.0.1:1", "m", max_texts=2, max_chars=5))
    assert gateway.parse({"model": "m", "input": "x", "input_type": "query"})[0] == ["x"]
    for texts, code, words in ((["ok", ""], "empty_input", "input[1] is empty"),
                               (["ok", [1, 2]], "invalid_input", "input[1] is list, not str (only strings"),
                               (["ok", "toolong"], "input_too_long", "input[1] has 7 characters"),
                               (["a", "b", "c"], "too_many_inputs", "has 3 texts; the limit is 2")):
        with pytest.raises(ApiError) as caught:
            gateway.parse({"model": "m", "input": texts, "input_type": "query"})
        error = json.loads(caught.value.response().body)["error"]
        assert caught.value.status == 400 and error["param"] == "input" and error["code"] == code
        assert words in error["message"], error


class _Tensor:
    def __init__(self, name, array):
        self.name, self.array = name, array

    def as_numpy(self):
        return self.array


class _TritonError:
    INVALID_ARG = "INVALID_ARG"

    def __init__(self, message, code=None):
        self.message, self.code = message, code


class _Response:
    def __init__(self, output_tensors=None, error=None):
        self.output_tensors, self.error = output_tensors, error


@pytest.fixture
def tokenizer_model(example_dir, tmp_path, monkeypatch):
    """The tokenizer model as `moai-export triton` writes it, loaded from its version directory
    with stand-ins for the stub's utilities (the real stub: tests/test_triton.py)."""
    from moai_export.export.triton import TritonOptions
    from moai_export.export.triton.files import write_models
    from moai_export.model_files.model_contract import read_contract

    base = example_dir / "base"
    write_models(tmp_path, base, read_contract(base), TritonOptions(), "fp32")
    version_dir = tmp_path / "moai_embedding_tokenizer" / "1"
    assert (version_dir / "moai_input_rules.py").is_file()
    pb_utils = types.SimpleNamespace(
        Tensor=_Tensor, TritonError=_TritonError, InferenceResponse=_Response,
        get_input_tensor_by_name=lambda request, name: request.get(name))
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the model puts its directory in front
    monkeypatch.delitem(sys.modules, "moai_input_rules", raising=False)
    spec = importlib.util.spec_from_file_location("tokenizer_model_under_test", version_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize({"model_repository": str(tmp_path / "moai_embedding_tokenizer"), "model_version": "1"})
    yield model
    sys.modules.pop("moai_input_rules", None)


def _request(*texts: bytes) -> dict:
    return {"TEXT": _Tensor("TEXT", np.array([[t] for t in texts], dtype=object)),
            "KIND": _Tensor("KIND", np.array([[b"query"]], dtype=object))}


def test_the_triton_tokenizer_model_answers_invalid_arg_naming_text_item_i(tokenizer_model):
    good, empty = tokenizer_model.execute([_request(b"ok", b"fine"), _request(b"ok", b"")])
    assert good.error is None and good.output_tensors[0].array.shape[0] == 2
    assert empty.error.code == "INVALID_ARG"
    assert empty.error.message.startswith("TEXT item 1 is empty: empty texts have no embedding"), empty.error.message
