"""train/train_lora.py: the recipe's adapter is what `merge` takes, and bad data is refused."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from moai_export.merge import MergeOptions, merge

SCRIPT = Path(__file__).resolve().parents[1] / "train" / "train_lora.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_lora", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_adapter_merges_and_verifies(example_dir, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    rows = [{"query": f"카드 질문 {i}", "positive": f"카드 답변 {i}번입니다."} for i in range(6)]
    rows[0]["negative"] = "관련 없는 문장"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    train = load_script()
    code = train.main(["--base", str(example_dir / "base"), "--data", str(data), "--out", str(tmp_path / "adapter"),
                       "--steps", "3", "--batch-size", "4", "--mini-batch-size", "2", "--lr", "2e-3"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (64, 128, 0.05)
    report = merge(str(example_dir / "base"), str(tmp_path / "adapter"), tmp_path / "merged",
                   MergeOptions(log=lambda m: None))
    assert report["passed"]


def test_bad_training_data_is_refused(example_dir, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"query": "q"}\n')
    code = load_script().main(["--base", str(example_dir / "base"), "--data", str(data), "--out", str(tmp_path / "a")])
    assert code == 1 and "expected JSON with query, positive" in capsys.readouterr().err
