"""Result files as JSON: every value made JSON-safe the same way, by `moai-bench` and by the
bench scripts (no matplotlib or click here: bench/gpu_engine.py imports it on a bare GPU image)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np


def json_ready(value):
    """JSON-safe copy: NaN/inf -> null, numpy -> Python, keys starting with '_' dropped
    (in-memory arrays kept for the plots)."""
    if isinstance(value, dict):
        return {str(k): json_ready(v) for k, v in value.items() if not str(k).startswith("_")}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(json_ready(data), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
