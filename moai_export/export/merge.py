"""`moai-export merge`: fold a LoRA adapter into its base and prove the result.

The proof, before the output directory exists:
  1. every tensor of the adapter file really loaded into the PEFT reference;
  2. every adapted weight really changed in the merge (the field's classic silent failure is
     a merge that writes the base weights back);
  3. the written directory, loaded fresh from disk, embeds the probe set like the float32
     PEFT reference (the whole gate-table cell: min cosine, max abs, top-10 agreement), and so
     does plain `SentenceTransformer(dir)`;
  4. the adapter moves the probes more than the parity tolerance (else 3 proves nothing).
"""

from __future__ import annotations

import hashlib
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..artifacts.directories import (
    PARITY_FILE,
    atomic_output_dir,
    check_output_location,
    check_target,
    size_of,
    weights_digest,
    write_json,
    write_manifest,
)
from ..artifacts.kinds import kind_named
from ..core.contract import EmbeddingContract
from ..core.errors import MoaiError, VerificationFailed
from ..core.text_tables import format_table
from ..embedders.peft_reference import PeftEmbedder, reference_contract
from ..embedders.sentence_transformers import SentenceTransformerEmbedder
from ..embedders.torch_model import DTYPES, TorchEmbedder
from ..gates.parity import ReferenceFigures, adapter_effect, embed_probes
from ..gates.probe_files import ProbeOptions
from ..gates.table import GateOverrides
from ..gates.verification import PROBES_FILE, Check, GateRun, VerificationRecord, chain_of
from ..model_files.contract_tokenizer import shipped_tokenizer_failures, write_tokenizer_files
from ..model_files.lora_adapter import AdapterInfo, read_adapter
from ..model_files.portable_config import write_portable_config
from ..model_files.safetensors_files import check_model_weights
from ..model_files.sentence_transformers_format import write_sentence_transformers_files
from ..model_files.sources import looks_like_hub_id, resolve_model_dir
from .exporter import format_length_table

MERGE_REFERENCE = "peft reference (base + adapter, float32)"


@dataclass
class MergeOptions:
    dtype: str = "fp32"
    max_tokens: int | None = None
    overrides: GateOverrides = field(default_factory=GateOverrides)
    probes: ProbeOptions = field(default_factory=ProbeOptions)  # --probes: a sample of the user's texts too
    force: bool = False
    allow_base_mismatch: bool = False
    check_sentence_transformers: bool = True
    report_path: Path | None = None  # also write the report here (when verification fails too)
    log: callable = print
    timings: dict = field(default_factory=dict)


def merge(base: str, adapter: str, out: Path, options: MergeOptions | None = None) -> dict:
    """Merge and verify; returns the report. Raises VerificationFailed (nothing written) if
    the merged model does not match the reference."""
    options = options or MergeOptions()
    if options.dtype not in DTYPES:
        raise MoaiError(f"unknown dtype {options.dtype!r}: expected one of {', '.join(DTYPES)}")
    log = options.log
    out = Path(out)
    check_target(out, options.force)  # before minutes of work, not after
    if options.report_path:
        check_output_location(options.report_path, directory=False)
    started = time.perf_counter()

    base_dir = resolve_model_dir(base, "base model")
    adapter_dir = resolve_model_dir(adapter, "adapter")
    info = read_adapter(adapter_dir)
    check_model_weights(base_dir)
    # the saved weights: fp32 doubles a half-precision base; the merge writes them beside the output
    check_output_location(out, need_bytes=size_of(base_dir) * (2 if options.dtype == "fp32" else 1))
    identity_note = check_base_identity(base, base_dir, info, allow_mismatch=options.allow_base_mismatch)
    if identity_note:
        log(f"note: {identity_note}")
    contract = reference_contract(base_dir, adapter_dir, max_tokens=options.max_tokens)
    gate = options.overrides.apply("torch", options.dtype)

    log(f"loading reference: {base_dir} + adapter {adapter_dir} (float32)")
    reference = PeftEmbedder.from_base_and_adapter(base_dir, adapter_dir, contract=contract, name="peft reference")
    options.timings["load_s"] = time.perf_counter() - started
    t = time.perf_counter()
    log("embedding the probe set with the reference and the base")
    figures = ReferenceFigures(reference, options.probes)
    with reference.adapter_disabled():
        base_vectors = embed_probes(reference, figures.probes)
    options.timings["reference_probes_s"] = time.perf_counter() - t

    log("merging (peft merge_and_unload)")
    t = time.perf_counter()
    adapted = _adapted_weights(reference.peft_model)
    before = {name: _fingerprint(weight) for name, weight in adapted.items()}
    del adapted
    merged = reference.peft_model.merge_and_unload()
    unchanged = sorted(name for name in before if _fingerprint(merged.get_submodule(name).weight) == before[name])
    options.timings["merge_s"] = time.perf_counter() - t

    with atomic_output_dir(out, force=options.force) as tmp:
        t = time.perf_counter()
        log(f"writing {options.dtype} checkpoint")
        merged.to(DTYPES[options.dtype]).save_pretrained(str(tmp))
        write_portable_config(tmp)  # the merged build is meant to be served elsewhere: older loaders too
        del merged, reference
        write_tokenizer(base_dir, adapter_dir, contract, tmp)
        write_sentence_transformers_files(contract, tmp)
        contract.save(tmp)
        options.timings["write_s"] = time.perf_counter() - t

        t = time.perf_counter()
        log("verifying the written directory against the reference")
        # the configurations merge verification runs: transformers and plain sentence-transformers,
        # on CPU, in the saved dtype
        with TorchEmbedder.from_dir(tmp, dtype=options.dtype, name=f"merged ({options.dtype})") as candidate:
            runs = [GateRun(figures.gate_with(candidate, gate), gate, candidate.serving)]
        if options.check_sentence_transformers:
            with SentenceTransformerEmbedder(tmp, name="SentenceTransformer(dir)") as st:
                runs.append(GateRun(figures.gate_with(st, gate), gate, kind_named("st").serving_config("cpu", options.dtype)))
        effect = adapter_effect(base_vectors, figures.vectors, runs[0].report.vectors, gate.thresholds)
        file_failures = shipped_tokenizer_failures(tmp, contract, [(p.kind, p.text) for p in figures.probes])
        options.timings["verify_s"] = time.perf_counter() - t
        options.timings["total_s"] = time.perf_counter() - started
        options.timings["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        record = VerificationRecord(
            "merge", MERGE_REFERENCE, runs, figures,
            chain=chain_of(None, f"peft:{base_dir.resolve()}+{adapter_dir.resolve()}"),  # loadable by later exports
            checks=merge_checks(unchanged, len(before), effect, file_failures),
            fields=report_fields(contract=contract, dtype=options.dtype, truncated=figures.truncated,
                                 base=(base, base_dir), adapter=(adapter, adapter_dir, info), output_dir=tmp,
                                 timings=options.timings, identity_note=identity_note))
        report = record.to_dict()
        log(format_report(report))
        if options.report_path:  # before publishing: a report that cannot be written publishes nothing
            write_json(options.report_path, report)
        if not record.passed:
            raise VerificationFailed(
                "merge verification FAILED, nothing written: " + "; ".join(report["failures"][:5]),
                report=report,
            )
        record.write(tmp)
        write_manifest(
            tmp,
            stage="merge",
            inputs=report["inputs"],
            options={"dtype": options.dtype, "max_tokens": contract.max_tokens},
            extra={"parity_file": PARITY_FILE, "probes_file": PROBES_FILE, "chain": report["chain"]},
            admitted_for=record.admissions(),
        )
    return report


def merge_checks(unchanged: list[str], adapted: int, effect, file_failures: list[str]) -> list[Check]:
    """What a merge must show beyond parity: every adapted weight changed, the adapter moves the
    probes farther than the gate's tolerance, and the shipped tokenizer files read right."""
    merge_failures = []
    if unchanged:
        merge_failures.append(f"{len(unchanged)} of {adapted} adapted weights are unchanged by the merge "
                              f"(e.g. {unchanged[0]}): the merge did not apply the adapter")
    return [Check("merge_check", merge_failures, {"adapted_weights": adapted, "unchanged": unchanged}),
            Check("adapter_effect", effect.reasons(), effect.to_dict()),
            Check("shipped_files", list(file_failures))]


def check_base_identity(base_spec: str, base_dir: Path, info: AdapterInfo, *, allow_mismatch: bool) -> str | None:
    """The adapter records the base it was trained on. Two different hub ids are an error
    (e.g. a 4B adapter on the 0.6B base); for a local base the names cannot be compared
    reliably, so a difference is only noted and the shape check decides."""
    recorded = info.base_name
    if not recorded:
        return "the adapter does not record its base model"
    if looks_like_hub_id(base_spec) and looks_like_hub_id(recorded) and not Path(recorded).exists():
        if base_spec.lower() != recorded.lower():
            if allow_mismatch:
                return f"adapter was trained on {recorded}, merging into {base_spec} (--allow-base-mismatch)"
            raise MoaiError(
                f"the adapter was trained on {recorded}, not {base_spec}; pass --allow-base-mismatch if intended"
            )
        return None
    if Path(recorded).exists() and Path(recorded).resolve() == Path(base_dir).resolve():
        return None
    if looks_like_hub_id(recorded) and recorded.rsplit("/", 1)[-1].lower() == Path(base_dir).name.lower():
        return None
    return f"the adapter records base {recorded!r}; merging into {base_dir} (shapes were checked)"


def write_tokenizer(base_dir: Path, adapter_dir: Path, contract: EmbeddingContract, out: Path) -> None:
    """The fine-tune's tokenizer if the adapter carries one, else the base's."""
    source = adapter_dir if (adapter_dir / "tokenizer.json").is_file() else base_dir
    write_tokenizer_files(source, contract, out)


def _adapted_weights(peft_model) -> dict[str, torch.Tensor]:
    """{module path in the merged model: its base weight} for every LoRA-wrapped layer."""
    from peft.tuners.lora import LoraLayer

    prefix = "base_model.model."
    return {
        name[len(prefix):] if name.startswith(prefix) else name: module.get_base_layer().weight
        for name, module in peft_model.named_modules()
        if isinstance(module, LoraLayer)
    }


def _fingerprint(weight: torch.Tensor) -> str:
    return hashlib.blake2b(weight.detach().contiguous().cpu().numpy().tobytes(), digest_size=16).hexdigest()


def report_fields(*, contract, dtype, truncated, base, adapter, output_dir, timings, identity_note) -> dict:
    """The merge's own fields of its verification record."""
    from ..artifacts.directories import tool_versions

    base_spec, base_dir = base
    adapter_spec, adapter_dir, info = adapter
    return {
        "dtype": dtype,
        "probes": {"truncated": truncated, "max_tokens": contract.max_tokens},
        "inputs": {
            "base": {"spec": base_spec, "path": str(base_dir), "weights": weights_digest(base_dir)},
            "adapter": {"spec": adapter_spec, "path": str(adapter_dir), "weights": weights_digest(adapter_dir),
                        "recorded_base": info.base_name, "r": info.rank, "alpha": info.alpha,
                        "target_modules": sorted(info.target_modules)},
            "identity_note": identity_note,
        },
        "output": {"weights": weights_digest(output_dir)},
        "contract": contract.to_dict(),
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "versions": tool_versions(),
    }


def format_report(report: dict) -> str:
    rows = [[g["candidate"], g["min_cosine"], g["mean_cosine"], g["max_abs"],
             "n/a" if g["rank_agreement_top10"] is None else g["rank_agreement_top10"], g["passed"]]
            for g in report["gates"]]
    checks = report["checks"]
    effect = checks["adapter_effect"]
    rows.append(["base model (adapter off)", effect["min_cosine_base_vs_reference"], None, None, None,
                 effect["passed"]])
    gate = report["gates"][0]["gate"]
    merge_check = checks["merge_check"]
    lines = [
        f"parity vs float32 PEFT reference, {report['probe_set']['count']} probes "
        f"({report['probes']['truncated']} over {report['probes']['max_tokens']} tokens); "
        f"gate: cosine >= {gate['min_cosine']}" + (f", max abs <= {gate['max_abs']:.0e}" if gate["max_abs"] else "")
        + f", top-10 agreement >= {gate['min_rank_agreement']}; the base model must fall below the cosine gate",
        format_table(["variant", "min cos", "mean cos", "max abs", "top10 agree", "result"], rows),
        format_length_table([(g["candidate"], g["by_length"]) for g in report["gates"]]),
        f"top-10 agreement: {report['gates'][0]['rank_agreement_on']}",
        f"adapted weights changed by the merge: "
        f"{merge_check['adapted_weights'] - len(merge_check['unchanged'])}/{merge_check['adapted_weights']}",
    ]
    if report["failures"]:
        lines.append("FAILED:")
        lines += [f"  - {f}" for f in report["failures"][:20]]
    else:
        lines.append("verification PASSED")
    return "\n".join(lines)
