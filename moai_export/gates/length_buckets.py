"""Length buckets of the parity reports: the min cosine of short texts says little about long
documents (quantization and attention errors grow with length), so every gate report and
verification record gives its figures per bucket too.

A text's length is its model input in the contract's tokens (prompt and end token included),
counted before truncation. The buckets are <=32, <=128, <=256, <=512 (those below max_tokens),
<=max_tokens, and "over max" for texts the contract truncates.
"""

from __future__ import annotations

LENGTH_BOUNDS = (32, 128, 256, 512)
OVER_MAX = "over max"


def bucket_bounds(max_tokens: int) -> list[int]:
    """The buckets' upper bounds for a contract, in order (max_tokens closes the last)."""
    return [b for b in LENGTH_BOUNDS if b < max_tokens] + [max_tokens]


def length_bucket(tokens: int, max_tokens: int) -> str:
    """The bucket of a text of `tokens` (before truncation) under a contract of `max_tokens`."""
    if tokens > max_tokens:
        return OVER_MAX
    return f"<={next(b for b in bucket_bounds(max_tokens) if tokens <= b)}"


def bucket_order(label: str) -> float:
    """A sort key that puts buckets shortest first and "over max" last."""
    return float("inf") if label == OVER_MAX else float(label.removeprefix("<="))


def bucket_columns(tables) -> list[tuple[str, str]]:
    """(bucket, column header "bucket (probes)") of every bucket in any of `tables` (each a
    ParityResult.by_length() dict), shortest first: the columns of a per-bucket table."""
    counts = {}
    for table in tables:
        for label, figures in table.items():
            counts.setdefault(label, figures["probes"])
    return [(label, f"{label} ({counts[label]})") for label in sorted(counts, key=bucket_order)]
