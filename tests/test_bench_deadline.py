"""The deadline-bounded step runner of bench/gpu_engine.py (benchmark/deadline.py) and the
JSON cleaning of result files (benchmark/result_json.py), on a clock that only the test moves."""

from __future__ import annotations

import json
import math

import numpy as np

from moai_export.benchmark.deadline import DeadlineRun
from moai_export.benchmark.result_json import json_ready, write_json


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def make_run(deadline_s=60.0):
    clock, saved, logged = Clock(), [], []
    run = DeadlineRun(deadline_s, {"settings": {"size": "tiny"}}, clock=clock, log=logged.append,
                      save=lambda data: saved.append(json.loads(json.dumps(json_ready(data)))))
    return run, clock, saved, logged


def test_steps_record_results_errors_and_skips_and_save_after_each():
    run, clock, saved, logged = make_run()

    def build():
        clock.t += 20
        return {"adapter": "trained"}

    def broken():
        clock.t += 5
        raise RuntimeError("CUDA error: out of memory")

    assert run.step("build", 10, build) == {"adapter": "trained"}
    assert run.step("engine", 10, broken) is None
    assert run.step("corpus", 60, lambda: {"never": "ran"}) is None  # 35 s left
    assert run.data["settings"] == {"size": "tiny"}
    assert run.data["steps"] == {"build": {"seconds": 20.0, "adapter": "trained"}}
    assert run.data["errors"] == {"engine": "RuntimeError: CUDA error: out of memory"}
    assert run.data["skipped"] == ["corpus (needs ~60 s, 35 s left)"]
    assert len(saved) == 3  # after every step, the skipped one too
    assert saved[0]["steps"]["build"]["adapter"] == "trained" and "engine" in saved[1]["errors"]
    assert logged == ["== build (60 s left)", "== engine (40 s left)", "SKIP corpus: 35 s left"]


def test_a_part_of_a_step_is_skipped_by_name_and_a_failure_does_not_stop_the_rest():
    run, clock, _, _ = make_run(30)
    done = []
    for label, needs_s in (("engine", 20), ("st-bf16", 20), ("st-fp32", 5)):
        if not run.fits(f"corpus {label}", needs_s):
            continue
        try:
            clock.t += 15
            if label == "engine":
                raise ValueError("x" * 5000)
            done.append(label)
        except ValueError as exc:
            run.record_error(f"corpus {label}", exc)
    assert done == ["st-fp32"]
    assert run.data["skipped"] == ["corpus st-bf16 (needs ~20 s, 15 s left)"]
    assert len(run.data["errors"]["corpus engine"]) == 2000  # a long message is cut
    assert run.left() == 0


def test_json_ready_cleans_numpy_non_finite_and_private_keys():
    value = {"a": np.float32(0.5), "b": [np.int64(3), float("nan"), math.inf], "_arrays": np.ones(3),
             "c": (np.array([1.0, 2.0]), {"d": np.bool_(True)}), 4: "key"}
    assert json_ready(value) == {"a": 0.5, "b": [3, None, None], "c": [[1.0, 2.0], {"d": True}], "4": "key"}


def test_write_json_writes_utf8_and_returns_the_path(tmp_path):
    path = write_json(tmp_path / "r.json", {"텍스트": np.float64(1.25)})
    assert path.read_text(encoding="utf-8") == '{\n  "텍스트": 1.25\n}\n'
