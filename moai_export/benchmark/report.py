"""Result files of one run: results.json (every figure + the machine), summary.md (the tables)
and PNG plots. Written also for an interrupted run, marked as such."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np

from ..evaluation.retrieval_metrics import METRICS, PRIMARY
from ..gates.length_buckets import bucket_columns
from . import plots
from .result_json import write_json

RESULTS_FILE = "results.json"
SUMMARY_FILE = "summary.md"
NOISE_NOTE = ("Targets were measured side by side in one run (each cell runs every target back to back), "
              "so compare the ratios; absolute figures move with machine load.")


def _f(value, digits: int = 1, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def _header(data: dict) -> list[str]:
    lines = [f"# moai-bench {data['command']}, {data['date']}", ""]
    if data.get("interrupted"):
        lines += ["**Interrupted (Ctrl-C): partial results.**", ""]
    lines += [f"- machine: {data['machine']['summary']} (host `{data['machine']['hostname']}`)",
              f"- command: `{data['argv']}`", ""]
    if data.get("targets"):
        lines += _table(["target", "spec", "tokens counted with", "load (s)"],
                        [[t["label"], f"`{t['spec']}`", t["tokens_counted_with"], _f(t["load_s"])]
                         for t in data["targets"]])
        lines.append("")
    return lines


def _level(row: dict) -> str:
    if row["mode"] == "closed":
        return f"{int(row['level'])} client{'s' if row['level'] != 1 else ''}"
    return f"{row['level']:g} req/s offered"


def throughput_markdown(data: dict) -> str:
    rows = data["results"]
    labels = [t["label"] for t in data["targets"]]
    lines = _header(data) + [NOISE_NOTE, ""]
    lines += ["## Workloads", ""]
    lines += _table(["workload", "kind", "texts", "tokens/text (mean, first target)", "description"],
                    [[w["name"], w["kind"], w["texts"],
                      _f(next(iter((w.get("tokens_per_text") or {}).values()), {}).get("mean")), w["description"]]
                     for w in data["workloads"]])
    s = data["settings"]
    bound = " or ".join(b for b in (s.get("requests") and f"{s['requests']} requests",
                                     s.get("seconds") and f"{s['seconds']:g} s") if b)
    lines += ["", f"Per cell: up to {bound} after {s['warmup']} untimed warm-up request(s); open loop: "
                  f"{s['arrival']} arrivals, up to {s['max_inflight']} in flight.", ""]
    cells: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((r["workload"], r["batch_size"], r["mode"], r["level"]), {})[r["target"]] = r
    lines += [f"## Sentences/s (ratio to {labels[0]})", ""]
    table = []
    for (workload, batch, mode, level), by_target in cells.items():
        any_row = next(iter(by_target.values()))
        cols = []
        for label in labels:
            r = by_target.get(label)
            ratio = r and r.get("sentences_per_s_ratio")
            cols.append("-" if not r else f"{_f(r.get('sentences_per_s'))} ({_f(ratio, 2, 'x')})")
        table.append([workload, batch, _level(any_row)] + cols)
    lines += _table(["workload", "batch", "load"] + labels, table)
    lines += ["", "## Every cell", ""]
    lines += _table(
        ["workload", "batch", "load", "target", "sent/s", "real tokens/s", "p50 ms", "p90", "p95", "p99", "max",
         "errors", "sent/s vs first", "p50 vs first"],
        [[r["workload"], r["batch_size"], _level(r), r["target"], _f(r.get("sentences_per_s")),
          _f(r.get("tokens_per_s"), 0)] + [_f((r.get("latency_ms") or {}).get(p)) for p in plots.PCTS]
         + [r.get("errors", "-"), _f(r.get("sentences_per_s_ratio"), 2, "x"), _f(r.get("p50_ratio"), 2, "x")]
         for r in rows])
    errors = [f"- {r['target']} ({r['workload']}, batch {r['batch_size']}): {m}"
              for r in rows for m in r.get("error_messages", [])]
    if errors:
        lines += ["", "## Errors", ""] + errors
    return "\n".join(lines) + "\n"


def retrieval_markdown(data: dict) -> str:
    res = data["results"]
    rows = res.get("targets", [])
    ds = res.get("dataset", {})
    lines = _header(data)
    lines += [f"Dataset `{ds.get('path')}`: {ds.get('evaluated_queries')} queries with qrels over "
              f"{ds.get('documents')} documents; binary relevance; cosine ranking, ties by corpus id "
              "(the protocol of sentence-transformers' InformationRetrievalEvaluator). "
              f"Deltas and parity are against `{rows[0]['target'] if rows else '-'}`.", ""]
    head = ["target"] + [m.upper().replace("ACCURACY", "Acc").replace("RECALL", "R") for m in METRICS] + \
           [f"Δ {PRIMARY.upper()}", f"queries whose {PRIMARY.upper()} moved", "min cos", "mean cos", "max abs",
            "top-10 agreement", "gate", "docs/s"]
    table = []
    for r in rows:
        p = r.get("parity_vs_reference") or {}
        table.append([r["target"]] + [_f(r["metrics"][m], 4) for m in METRICS]
                     + [_f((r.get("delta") or {}).get(PRIMARY), 4) if r.get("delta") else "(reference)",
                        r.get(f"queries_with_different_{PRIMARY}", "-"),
                        _f(p.get("min_cosine"), 6), _f(p.get("mean_cosine"), 6),
                        f"{p['max_abs']:.2e}" if p.get("max_abs") is not None else "-",
                        _f(p.get("rank_agreement_top10"), 3), _verdict(p.get("judged")),
                        _f(r["encode"]["documents_per_s"])])
    lines += _table(head, table)
    lines += _worst_texts([(r["target"], (r.get("parity_vs_reference") or {}).get("judged")) for r in rows])
    domains = ds.get("domains") or []
    if domains and rows:
        lines += ["", f"## {PRIMARY.upper()} per domain", ""]
        lines += _table(["domain", "queries"] + [r["target"] for r in rows],
                        [[d, rows[0]["per_domain"].get(d, {}).get("queries", "-")]
                         + [_f(r["per_domain"].get(d, {}).get(PRIMARY), 4) for r in rows] for d in domains])
    swept = [r for r in rows if r.get("dimension_sweep")]
    if swept:
        sizes = sorted({s["dims"] for r in swept for s in r["dimension_sweep"]})
        lines += ["", f"## {PRIMARY.upper()} per Matryoshka size (first k components, renormalized)", ""]
        lines += _table(["target"] + [str(k) for k in sizes],
                        [[r["target"]] + [_f({s["dims"]: s[PRIMARY] for s in r["dimension_sweep"]}.get(k), 4)
                                          for k in sizes] for r in swept])
    return "\n".join(lines) + "\n"


def parity_markdown(data: dict) -> str:
    res = data["results"]
    overrides = res.get("gate_overrides") or {}
    lines = _header(data)
    lines += [f"Reference `{res.get('reference')}`; {res.get('probes')} built-in probes (queries and documents, "
              "1 token to past max tokens). PASS: each target's gate from the gate table (its kind and precision)"
              + (f", with overrides {overrides}" if overrides else "") + ".", ""]
    has_ds = any("dataset" in r for r in res.get("targets", []))
    head = ["target", "min cos", "mean cos", "max abs", "top-10 agreement", "gate (cos / abs / top-10)", "result"]
    if has_ds:
        head += ["dataset min cos", "dataset mean cos", "dataset top-10 agreement", "dataset result"]
    table = []
    for r in res.get("targets", []):
        if not r.get("comparable"):
            table.append([r["candidate"], "-", "-", "-", "-", "-", r.get("reason", "")] + (["-"] * 4 if has_ds else []))
            continue
        gate = r.get("gate") or {}
        row = [r["candidate"], _f(r["min_cosine"], 6), _f(r["mean_cosine"], 6), f"{r['max_abs']:.2e}",
               _f(r["rank_agreement_top10"], 3),
               f"{gate.get('min_cosine')} / {gate.get('max_abs') or '-'} / {gate.get('min_rank_agreement')}",
               "PASS" if r["passed"] else "FAIL"]
        if has_ds:
            d = r.get("dataset") or {}
            row += [_f(d.get("min_cosine"), 6), _f(d.get("mean_cosine"), 6), _f(d.get("rank_agreement_top10"), 3),
                    _verdict(d.get("judged"))]
        table.append(row)
    lines += _table(head, table)
    lines += _length_buckets([r for r in res.get("targets", []) if r.get("by_length")])
    lines += _worst_texts([(r["candidate"], (r.get("dataset") or {}).get("judged")) for r in res.get("targets", [])])
    fails = [f"- {r['candidate']}: {f}" for r in res.get("targets", []) for f in r.get("failures", [])]
    if fails:
        lines += ["", "## Failing probes", ""] + fails
    return "\n".join(lines) + "\n"


def _length_buckets(rows: Sequence[dict]) -> list[str]:
    """Min cosine per length bucket of the probes (tokens before truncation), one row per target."""
    if not rows:
        return []
    columns = bucket_columns([r["by_length"] for r in rows])
    table = [[r["candidate"]] + [_f((r["by_length"].get(label) or {}).get("min_cosine"), 6) for label, _ in columns]
             for r in rows]
    return ["", "Min cosine per length bucket (tokens with prompt and end token, before truncation; probes):", ""] + \
        _table(["target"] + [header for _, header in columns], table)


def corpus_markdown(data: dict) -> str:
    res = data["results"]
    ds = res.get("dataset", {})
    lines = _header(data)
    calls = "one encode call per target" + (f" (batch_size={res['batch_size']})" if res.get("batch_size") else
                                             " (each target batches by itself)")
    lines += [f"{ds.get('documents')} documents of `{ds.get('name')}` in {calls}; then {res.get('queries')} "
              f"batch-1 queries. MFU: model FLOPs x real tokens/s over {res.get('peak_tflops') or '-'} TFLOP/s "
              f"({res.get('peak_source')}). {NOISE_NOTE}", ""]
    head = ["target", "precision", "docs/s", "x first", "real tokens/s", "MFU", "peak GPU GiB", "warm-up s", "load s",
            "query p50 ms", "query p99 ms"]
    rows = [[r["target"], r.get("precision") or "-", _f(r["docs_per_s"]), _f(r.get("docs_per_s_vs_first"), 2),
             _f(r["real_tokens_per_s"], 0), _f(100 * r["mfu"], 1, "%") if r.get("mfu") else "-",
             _f(r.get("peak_gpu_gib"), 2), _f(r.get("warmup_s"), 1), _f(r.get("load_s"), 1),
             _f(r["query_p50_ms"], 2), _f(r["query_p99_ms"], 2)] for r in res.get("targets", [])]
    lines += _table(head, rows)
    judged = [(r["target"], r.get("judged")) for r in res.get("targets", [])]
    if any(j for _, j in judged):
        lines += ["", f"Document vectors against `{res.get('reference')}`, each target by its gate:", ""]
        lines += _table(["target", "gate (cos / abs)", "texts below", "result"],
                        [[name, f"{j['gate']['min_cosine']} / {j['gate']['max_abs'] or '-'}", j["below_gate"],
                          _verdict(j)] for name, j in judged if j])
        lines += _worst_texts(judged)
    return "\n".join(lines) + "\n"


def _verdict(judged: dict | None) -> str:
    return "-" if not judged else ("PASS" if judged["passed"] else "FAIL")


def _worst_texts(judged: list[tuple[str, dict | None]]) -> list[str]:
    """The lowest-cosine texts of each judged target with their lengths in tokens (quantization
    error grows with length: a gate on short texts says little about long documents)."""
    lines = []
    for name, j in judged:
        if j and j.get("worst"):
            worst = ", ".join(f"#{w['index']} cos {w['cosine']:.6f}"
                              + (f" ({w['tokens']} tokens)" if w.get("tokens") is not None else "") for w in j["worst"])
            lines.append(f"- {name}: worst texts {worst}" + (f"; {'; '.join(j['failures'])}" if j["failures"] else ""))
    return ["", "Worst texts against the reference:", ""] + lines if lines else []


MARKDOWN = {"throughput": throughput_markdown, "retrieval": retrieval_markdown, "parity": parity_markdown,
            "corpus": corpus_markdown}


def make_plots(data: dict, out: Path) -> list[Path]:
    res = data["results"]
    made: list[Path | None] = []
    if data["command"] == "throughput":
        made += [plots.throughput_plot(res, out / "throughput.png"), plots.latency_plot(res, out / "latency.png"),
                 plots.open_loop_plot(res, out / "open_loop.png")]
    elif data["command"] == "retrieval":
        rows = res.get("targets", [])
        made.append(plots.retrieval_plot(rows, METRICS, out / "retrieval.png"))
        made.append(plots.dimension_plot(rows, PRIMARY, out / "dimensions.png"))
        cos = {r["target"]: r["parity_vs_reference"]["_cosines"] for r in rows
               if (r.get("parity_vs_reference") or {}).get("comparable")}
        made.append(plots.parity_plot(cos, out / "parity.png", "query and document vectors vs the reference"))
    elif data["command"] == "parity":
        rows = [r for r in res.get("targets", []) if r.get("comparable")]
        cos = {r["candidate"]: np.asarray([p["cosine"] for p in r["probes"]]
                                          + list((r.get("dataset") or {}).get("_cosines", []))) for r in rows}
        made.append(plots.parity_plot(cos, out / "parity.png", f"probe (and dataset) vectors vs {res.get('reference')}"))
    return [p for p in made if p is not None]


def write_report(data: dict, out: Path) -> dict[str, Path]:
    """results.json, summary.md and the PNGs under `out`; returns what was written."""
    out.mkdir(parents=True, exist_ok=True)
    written = {"json": write_json(out / RESULTS_FILE, data)}
    summary = out / SUMMARY_FILE
    summary.write_text(MARKDOWN[data["command"]](data), encoding="utf-8")
    written["markdown"] = summary
    for path in make_plots(data, out):
        written[path.stem] = path
    return written
