"""A Triton model configuration as moai-export reads it: the names of the parameters `moai-export
triton` writes into an ensemble (contract, precision, repository id), and the one reader of a
model's config.pbtxt on disk and of the JSON form a server answers with.

The writer builds configs as Triton's ModelConfig protobuf messages (export/triton/model_configs.py); this
reader is a small parser of protobuf's text format in the standard library, because its callers
(admission, the launchers) must run where neither protobuf nor tritonclient is installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import MoaiError

CONFIG_FILE = "config.pbtxt"
CONTRACT_PARAMETER = "moai_contract"  # the embedding contract, as JSON: clients need no other source
PRECISION_PARAMETER = "moai_precision"  # what the encoder computes in: picks the parity gate
REPOSITORY_ID_PARAMETER = "moai_repository_id"  # ties a running server to the files it was verified with
# The ensemble's outputs beside EMBEDDING: each text's token count after truncation (usage) and before
# it (above max_tokens: the text was cut)
TOKENS = "TOKENS"
UNTRUNCATED_TOKENS = "UNTRUNCATED_TOKENS"


@dataclass(frozen=True)
class ModelConfigFields:
    """The fields of a model configuration that moai-export reads."""

    name: str = ""
    platform: str = ""  # "ensemble", "onnxruntime_onnx", ... ("" for a python-backend model)
    backend: str = ""
    max_batch_size: int = 0
    parameters: dict[str, str] = field(default_factory=dict)  # key -> string_value
    outputs: tuple[str, ...] = ()  # output tensor names

    @property
    def is_ensemble(self) -> bool:
        return self.platform == "ensemble"

    @classmethod
    def from_text(cls, text: str, where: str = CONFIG_FILE) -> "ModelConfigFields":
        message = _TextFormat(text, where).message()
        return cls(name=_last(message, "name"), platform=_last(message, "platform"),
                   backend=_last(message, "backend"), max_batch_size=int(_last(message, "max_batch_size", "0")),
                   parameters={_last(p, "key"): _last(_last(p, "value", {}), "string_value")
                               for p in message.get("parameters", [])},
                   outputs=tuple(_last(o, "name") for o in message.get("output", [])))

    @classmethod
    def from_json(cls, config: dict) -> "ModelConfigFields":
        """The same fields from a server's answer (Triton's model config endpoint, as JSON)."""
        return cls(name=config.get("name", ""), platform=config.get("platform", ""),
                   backend=config.get("backend", ""), max_batch_size=int(config.get("max_batch_size") or 0),
                   parameters={key: (value or {}).get("string_value", "")
                               for key, value in (config.get("parameters") or {}).items()},
                   outputs=tuple(output.get("name", "") for output in config.get("output") or []))


def read_model_config(model_dir: Path) -> ModelConfigFields:
    """The configuration of the model in `model_dir` (its config.pbtxt), or a MoaiError naming
    the file and what is wrong with it."""
    path = Path(model_dir) / CONFIG_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MoaiError(f"{path}: unreadable ({exc})") from None
    return ModelConfigFields.from_text(text, str(path))


def _last(message: dict, name: str, default=""):
    """A singular field: the text format lets a field repeat, and the last value wins."""
    values = message.get(name)
    return values[-1] if values else default


_TOKEN = re.compile(r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<word>[A-Za-z0-9_.+-]+)
  | (?P<mark>[{}<>\[\]:,;])
""", re.VERBOSE)
_CLOSING = {"{": "}", "<": ">"}
_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34, "?": 63}


class _TextFormat:
    """protobuf's text format -> {field: [value, ...]}: a value is a dict (a message), a str (a
    quoted string, unescaped) or the bare word as written (a number, an enum, true/false)."""

    def __init__(self, text: str, where: str):
        self.where = where
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, line)
        position, line = 0, 1
        while position < len(text):
            match = _TOKEN.match(text, position)
            if match is None:
                raise MoaiError(f"{where}: line {line}: cannot read {text[position:position + 20]!r}")
            if match.lastgroup != "space":
                self.tokens.append((match.lastgroup, match.group(), line))
            line += match.group().count("\n")
            position = match.end()
        self.next = 0

    def message(self, closing: str | None = None) -> dict:
        fields: dict[str, list] = {}
        while True:
            kind, text, _ = self._peek()
            if kind is None or text == closing:
                if text != closing:
                    self._fail(f"expected {closing!r} before the end")
                self.next += 1
                return fields
            if kind != "word":
                self._fail(f"expected a field name, not {text!r}")
            self.next += 1
            fields.setdefault(text, []).extend(self._values())
            if self._peek()[1] in (",", ";"):
                self.next += 1

    def _values(self) -> list:
        """After a field name: `: value`, `[value, ...]`, or a message (the colon is optional
        before a message or a list, as Triton's own examples write `input [ { ... } ]`)."""
        colon = self._peek()[1] == ":"
        self.next += colon
        if self._peek()[1] in _CLOSING:
            return [self._value()]
        if self._peek()[1] != "[":
            if not colon:
                self._fail(f"expected ':' after a field name, not {self._peek()[1]!r}")
            return [self._value()]
        self.next += 1
        values = []
        while self._peek()[1] != "]":
            values.append(self._value())
            if self._peek()[1] == ",":
                self.next += 1
        self.next += 1
        return values

    def _value(self):
        kind, text, _ = self._take()
        if text in _CLOSING:
            return self.message(_CLOSING[text])
        if kind == "string":
            parts = [text]
            while self._peek()[0] == "string":  # adjacent strings concatenate, as in C
                parts.append(self._take()[1])
            return "".join(_unescape(part[1:-1], self) for part in parts)
        if kind != "word":
            self._fail(f"expected a value, not {text!r}")
        return text

    def _peek(self) -> tuple:
        return self.tokens[self.next] if self.next < len(self.tokens) else (None, None, 0)

    def _take(self) -> tuple:
        token = self._peek()
        if token[0] is None:
            self._fail("unexpected end")
        self.next += 1
        return token

    def _fail(self, problem: str):
        line = self.tokens[min(self.next, len(self.tokens) - 1)][2] if self.tokens else 1
        raise MoaiError(f"{self.where}: line {line}: {problem}")


def _unescape(body: str, parser: _TextFormat) -> str:
    """C escapes as protobuf writes them (\\n, \\", octal bytes of UTF-8, \\xHH) -> the string."""
    out = bytearray()
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out += char.encode("utf-8")
            i += 1
            continue
        escape = body[i + 1]
        if escape in _ESCAPES:
            out.append(_ESCAPES[escape])
            i += 2
        elif escape in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group()
            out.append(int(digits, 8) & 0xFF)
            i += 1 + len(digits)
        elif escape in "xX" and (digits := re.match(r"[0-9A-Fa-f]{1,2}", body[i + 2:])):
            out.append(int(digits.group(), 16))
            i += 2 + len(digits.group())
        else:
            parser._fail(f"unknown escape \\{escape} in a string")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        parser._fail("a string is not UTF-8")
