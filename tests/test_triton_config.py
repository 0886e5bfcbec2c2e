"""The one reader of a Triton model configuration (moai_export.model_files.triton_config): a standard-library
parser of protobuf's text format, checked against what the protobuf writer of `moai-export
triton` really writes, and against the JSON form a server answers with."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from moai_export.core.contract import EmbeddingContract
from moai_export.core.errors import MoaiError
from moai_export.model_files.triton_config import (
    CONTRACT_PARAMETER,
    PRECISION_PARAMETER,
    REPOSITORY_ID_PARAMETER,
    ModelConfigFields,
    read_model_config,
)

CONTRACT = EmbeddingContract(pooling="lasttoken", normalize=True, dims=64, max_tokens=512, padding_side="left",
                             pad_token="<|endoftext|>", pad_token_id=7, end_token="<|endoftext|>", end_token_id=7,
                             prompts={"query": "질문: \"따옴표\" \\ tab\t줄\n"})


def _written(options=None, contract=CONTRACT):
    """The three configs as the protobuf writer writes them: (text, protobuf message) pairs."""
    from google.protobuf.json_format import MessageToDict

    from moai_export.export.triton import TritonOptions, encoder_config, ensemble_config, tokenizer_config
    from moai_export.export.triton.model_configs import to_text

    options = options or TritonOptions()
    for config in (ensemble_config(options, contract, "fp16"), tokenizer_config(options),
                   encoder_config(options, contract.dims)):
        yield to_text(config), MessageToDict(config, preserving_proto_field_name=True)


@pytest.mark.parametrize("encoder", ["python", "onnxruntime", "engine"])
def test_reads_what_the_protobuf_writer_writes(encoder):
    from moai_export.export.triton import TritonOptions

    for text, as_json in _written(TritonOptions(encoder=encoder, tensorrt=encoder == "onnxruntime")):
        fields = ModelConfigFields.from_text(text)
        assert fields == ModelConfigFields.from_json(as_json)  # the file and the server's answer agree
        assert fields.name == as_json["name"] and fields.max_batch_size == 64
        assert fields.outputs == tuple(o["name"] for o in as_json["output"])
        assert fields.parameters == {k: v["string_value"] for k, v in as_json.get("parameters", {}).items()}


def test_the_ensemble_parameters_round_trip_escapes_and_utf8():
    text, _ = next(_written())
    fields = ModelConfigFields.from_text(text)
    assert fields.is_ensemble and fields.parameters[PRECISION_PARAMETER] == "fp16"
    assert EmbeddingContract.from_dict(json.loads(fields.parameters[CONTRACT_PARAMETER])) == CONTRACT
    assert len(fields.parameters[REPOSITORY_ID_PARAMETER]) == 32


def test_hand_written_forms_triton_documents():
    text = """# a hand-written config
name: 'm'  platform: "ensemble"
max_batch_size: 8
output [ { name: "A" dims: [ -1, 4 ] }, { name: "B" } ]
parameters < key: "k" value: { string_value: "x" "y\\101\\x42" } >;
"""
    fields = ModelConfigFields.from_text(text)
    assert (fields.name, fields.outputs, fields.parameters) == ("m", ("A", "B"), {"k": "xyAB"})


@pytest.mark.parametrize("text, problem", [
    ('name "x"', "line 1: expected ':'"),
    ('name: "x', "line 1: cannot read"),
    ('input {\n  name: "x"\n', "line 2: expected '}' before the end"),
    ('name: }', "expected a value"),
    ('name: "\\q"', "unknown escape"),
    ('dims: [1, 2', "unexpected end"),
])
def test_a_broken_config_is_named_with_its_line(tmp_path, text, problem):
    (tmp_path / "config.pbtxt").write_text(text)
    with pytest.raises(MoaiError, match=problem) as caught:
        read_model_config(tmp_path)
    assert str(tmp_path / "config.pbtxt") in str(caught.value)


def test_readers_need_neither_protobuf_nor_tritonclient(tmp_path):
    """admission and the launchers read configs where only the standard library is installed."""
    text, _ = next(_written())
    (tmp_path / "config.pbtxt").write_text(text)
    script = f"""
import sys
class Refuse:
    def find_spec(self, name, *args):
        if name.split('.')[0] in ('google', 'tritonclient', 'numpy', 'torch'):
            raise ImportError('not installed: ' + name)
sys.meta_path.insert(0, Refuse())
from moai_export.artifacts.admission import repository_id
print(repository_id({str(tmp_path)!r}))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0 and len(result.stdout.strip()) == 32, result.stderr
