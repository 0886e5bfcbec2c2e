"""The rules a batch of texts must pass before any variant embeds it: the same for every
Embedder, the gateway and the Triton tokenizer model, which each answer a broken rule in their
own shape (MoaiError, OpenAI's error JSON, a Triton INVALID_ARG error).

    - a batch is a list of texts, not one string;
    - every text is a str, and not empty: an empty text would embed to the end token alone,
      the same vector for every empty input;
    - every text is valid Unicode: a lone surrogate (U+D800 to U+DFFF unpaired, which a JSON
      escape can carry) has no UTF-8 form, so no tokenizer can read it;
    - optionally, at most `max_texts` texts of at most `max_chars` characters (server limits).

A broken rule raises InvalidInput naming the text's position in the batch, so a client can
find it. The text kinds (query, document) live here too, for the same three readers.

`moai-export triton` copies this file beside the tokenizer model (as `moai_input_rules.py`):
tritonserver's python stub has no moai_export, so this module needs the standard library only.
"""

from __future__ import annotations

from typing import Iterable

try:
    from .errors import MoaiError
except ImportError:  # the copy beside Triton's tokenizer model: no package around it
    MoaiError = ValueError

KINDS: tuple[str, ...] = ("query", "document")


class InvalidInput(MoaiError):
    """A batch of texts that breaks a rule. `index`: the text's position (None when the batch
    as a whole is wrong); `reason`: a stable code (the gateway's error code); `problem`: what is
    wrong, worded to follow the text's name."""

    def __init__(self, problem: str, *, reason: str, index: int | None = None):
        self.problem, self.reason, self.index = problem, reason, index
        super().__init__(self.naming(f"text {index}"))

    def naming(self, text: str) -> str:
        """The message with the text named the caller's way (`input[3]`, `TEXT item 3`)."""
        return self.problem if self.index is None else f"{text} {self.problem}"


def check_texts(texts: Iterable[str], *, max_texts: int | None = None, max_chars: int | None = None) -> list[str]:
    """`texts` as a list when every rule holds, else InvalidInput for the first broken one."""
    if isinstance(texts, str):
        raise InvalidInput("the input is a single string, not a list of texts", reason="invalid_input")
    try:
        texts = list(texts)
    except TypeError:
        raise InvalidInput(f"the input is {type(texts).__name__}, not a list of texts", reason="invalid_input") from None
    if max_texts is not None and len(texts) > max_texts:
        raise InvalidInput(f"the input has {len(texts)} texts; the limit is {max_texts} per request",
                           reason="too_many_inputs")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInput(f"is {type(text).__name__}, not str", reason="invalid_input", index=index)
        if text == "":
            raise InvalidInput("is empty: empty texts have no embedding (the same policy in every variant)",
                               reason="empty_input", index=index)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput(f"has a lone surrogate (U+{ord(text[exc.start]):04X}) at character {exc.start}: "
                               "not valid Unicode text", reason="invalid_unicode", index=index) from None
        if max_chars is not None and len(text) > max_chars:
            raise InvalidInput(f"has {len(text)} characters; the limit is {max_chars}", reason="input_too_long",
                               index=index)
    return texts
