"""Every default a `moai-export` / `moai-bench` option shows is the library's own: read from the
options dataclass (or function keyword) that the command fills, never written a second time, so
that the command line and the library cannot drift apart."""

from __future__ import annotations

import dataclasses
import importlib
import inspect

import click
import pytest
from click.testing import CliRunner

from moai_export.commands.base import LibraryDefaultOption
from moai_export.commands.bench_cli import main as bench_main
from moai_export.commands.export_cli import main

# Defaults that belong to the command line alone, (command, option) -> why: the library takes no
# such setting, or the command differs from the library on purpose.
COMMAND_LINE_DEFAULTS = {
    ("verify", "--json"): "where the command writes its report; verify() returns it",
    ("triton", "--repo"): "the repository serve/triton/run_local.sh serves; write_repository() requires one",
    ("demo", "--out"): "the demo's working directory; run_demo() requires one",
    ("throughput", "--texts"): "how many texts a generated workload has; generated_workload() requires a count",
    ("parity", "--max-texts"): "run_parity() takes every text; the command caps a dataset to stay a quick check",
}


def _options():
    for cli in (main, bench_main):
        for name, command in cli.commands.items():
            for param in command.params:
                if isinstance(param, click.Option):
                    yield name, command, param


def _flag(option: click.Option) -> str:
    return max(option.opts, key=len)


def test_every_shown_default_is_the_librarys_or_declared_the_command_lines_own():
    written_here = set()
    for name, command, option in _options():
        if isinstance(option, LibraryDefaultOption):
            continue
        default = option.to_info_dict()["default"]  # None when the option has none
        if default not in (None, False, ()):  # a default the option shows and passes on
            written_here.add((name, _flag(option)))
    assert written_here == set(COMMAND_LINE_DEFAULTS), (
        "read these defaults from the library (cli_base.library_option), or declare them the command line's own: "
        f"{sorted(written_here ^ set(COMMAND_LINE_DEFAULTS))}")


def test_library_defaults_resolve_and_help_shows_them():
    checked = 0
    for name, command, option in _options():
        if not isinstance(option, LibraryDefaultOption):
            continue
        ctx = click.Context(command)
        value = option.get_default(ctx)  # raises if the dataclass, function or field is gone
        help_extra = option.get_help_record(ctx)[1]
        shown = _flag(option).split("/")[0 if value else 1].lstrip("-") if option.is_bool_flag else value
        assert f"default: {shown}" in help_extra, (name, _flag(option), help_extra)
        checked += 1
    assert checked >= 50


# A command run with only what it requires ends in a library call; every setting it did not give
# must reach the library as the library's own default. (command line, the call, settings given)
CALLS = [
    (["example", "--out", "{tmp}/o"], "moai_export.example.build_example", {"out"}),
    (["merge", "--base", "b", "--adapter", "a", "--out", "{tmp}/o"], "moai_export.export.merge.merge",
     {"base", "adapter", "out"}),
    (["onnx", "{tmp}", "--out", "{tmp}/o"], "moai_export.export.onnx.export_onnx", {"source", "out"}),
    (["triton", "{tmp}"], "moai_export.export.triton.write_repository", {"artifact", "repo"}),
    (["vllm", "{tmp}", "--out", "{tmp}/o"], "moai_export.export.vllm.export_vllm", {"source", "out"}),
    (["train", "--base", "b", "--train", "{tmp}/t.jsonl", "--out", "{tmp}/o", "--eval-split", "0.1"],
     "moai_export.train.train", {"base", "train", "out", "eval_split"}),
    (["demo"], "moai_export.commands.demo.run_demo", {"out"}),
    (["gateway", "--triton", "grpc://127.0.0.1:8001", "--model", "m"], "moai_export.gateway.server.serve",
     {"triton", "model"}),
]
RETURNS = {"moai_export.example.build_example": {"losses": [1.0]}, "moai_export.commands.demo.run_demo": ""}


def _capture(monkeypatch, target: str) -> tuple[list, inspect.Signature]:
    module, name = target.rsplit(".", 1)
    signature = inspect.signature(getattr(importlib.import_module(module), name))
    calls = []

    def fake(*args, **kwargs):
        calls.append(signature.bind(*args, **kwargs).arguments)
        return RETURNS.get(target)

    fake.__signature__ = signature  # the command line reads its defaults from it
    monkeypatch.setattr(f"{module}.{name}", fake)
    return calls, signature


def _not_default(options) -> dict:
    """Fields of a dataclass instance that differ from the class's defaults."""
    out = {}
    for field in dataclasses.fields(options):
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            continue
        if getattr(options, field.name) != default:
            out[field.name] = (getattr(options, field.name), default)
    return out


@pytest.mark.parametrize("argv, target, given", CALLS, ids=[c[0][0] for c in CALLS])
def test_a_command_passes_the_librarys_defaults(argv, target, given, tmp_path, monkeypatch):
    monkeypatch.delenv("MOAI_GATEWAY_API_KEYS", raising=False)
    monkeypatch.chdir(tmp_path)
    calls, signature = _capture(monkeypatch, target)
    result = CliRunner().invoke(main, [a.format(tmp=tmp_path) for a in argv])
    assert result.exit_code == 0, result.output
    [arguments] = calls
    differing = {}
    for name, value in arguments.items():
        if name in given or name == "log":  # the command's own log, not a setting
            continue
        if dataclasses.is_dataclass(value):
            differing.update({f"{name}.{k}": v for k, v in _not_default(value).items() if k not in given | {"log"}})
        elif signature.parameters[name].default is not inspect.Parameter.empty:
            if value != signature.parameters[name].default:
                differing[name] = (value, signature.parameters[name].default)
    assert differing == {}, f"(command line, library) defaults differ: {differing}"


def test_throughput_passes_the_settings_defaults(tmp_path, monkeypatch):
    from moai_export.benchmark.throughput import ThroughputSettings

    calls, _ = _capture(monkeypatch, "moai_export.commands.bench_cli._run")
    result = CliRunner().invoke(bench_main, ["throughput", "--target", "x", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert calls[0]["settings"] == ThroughputSettings().to_dict()
