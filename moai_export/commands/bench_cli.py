"""`moai-bench`: throughput, parity and retrieval quality of every variant, side by side in
one run. Thin click commands over the benchmark modules."""

from __future__ import annotations

import datetime as dt
import os
import shlex
import sys
from functools import partial
from pathlib import Path
from typing import Callable

import click

from ..artifacts.kinds import kind_names
from ..core.errors import MoaiError
from .base import EXIT_INTERRUPTED, EXIT_VERIFICATION_FAILED, MoaiGroup, gate_options, library_option, overrides_from

TARGET_HELP = ("[LABEL=]SPEC, repeatable; the first is the baseline the ratios/deltas use. SPEC: BASE+ADAPTER, "
               f"a bare artifact directory, or a spec of any kind ({kind_names()}; openai-http:// is the "
               "gateway). LABEL names it in tables, e.g. int8=onnx:build/onnx-int8.")

# Each command's defaults are those of the settings or keywords the benchmark modules take.
throughput_option = partial(library_option, ".benchmark.throughput:ThroughputSettings")


class BenchGroup(MoaiGroup):
    """MoaiError -> one line and exit 1; Ctrl-C outside a measured section -> exit 130 (inside
    one, the command writes what it measured first)."""

    interrupted_message = "interrupted"


@click.group(cls=BenchGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Benchmark embedding variants side by side: every --target is loaded through the same
    Embedder interface and measured in one run, with ratios against the first target.

    \b
    moai-bench throughput  sentences/s, real tokens/s, latency percentiles (closed / open loop)
    moai-bench parity      cosine / max abs / top-10 agreement of every target vs --reference
    moai-bench retrieval   NDCG@10, MRR@10, Recall@1/10, Accuracy@1, MAP@10 on a BEIR dataset
    moai-bench corpus      a whole BEIR corpus in one call per target: docs/s, tokens/s, MFU, GPU memory

    Each run writes OUT/results.json (every figure and the machine) and OUT/summary.md, and
    throughput, parity and retrieval also PNG plots; an interrupted run (Ctrl-C) writes what it
    measured and exits 130.
    See bench/README.md for the committed results and how to reproduce them.
    """
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _ints(text: str, what: str, minimum: int = 1) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MoaiError(f"{what} {text!r}: expected comma-separated integers, e.g. 1,8,32") from None
    if any(v < minimum for v in values):
        raise MoaiError(f"{what} {text!r}: every value must be >= {minimum}")
    return values


def _floats(text: str | None, what: str) -> list[float]:
    if not text:
        return []
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MoaiError(f"{what} {text!r}: expected comma-separated numbers, e.g. 2,5,10") from None
    if any(v <= 0 for v in values):
        raise MoaiError(f"{what} {text!r}: every value must be > 0")
    return values


def _default_out(command: str) -> Path:
    return Path("bench/results") / f"{command}-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}"


def _log(quiet: bool) -> Callable[[str], None]:
    return (lambda m: None) if quiet else (lambda m: click.echo(m, err=True))


def _run(command: str, out: Path | None, target_texts: list[str], tokenizer: Path | None, settings: dict,
         quiet: bool, body: Callable[[list, dict], None], results: object) -> None:
    """Load targets, run `body`, and write the report even when Ctrl-C cut the run short."""
    from ..artifacts.directories import check_output_location
    from ..benchmark.report import write_report
    from ..benchmark.targets import close_all, load_targets
    from ..evaluation.machine import machine_description

    out = out or _default_out(command)
    check_output_location(out, directory=True)  # in under a second, before any target loads
    data = {"command": command, "date": dt.datetime.now().isoformat(timespec="seconds"),
            "argv": shlex.join(["moai-bench"] + sys.argv[1:]), "machine": machine_description(),
            "settings": settings, "targets": [], "results": results, "interrupted": False}
    targets: list = []
    try:
        targets = load_targets(target_texts, tokenizer_dir=tokenizer, log=_log(quiet))
        data["targets"] = [t.describe() for t in targets]
        body(targets, data)
    except KeyboardInterrupt:
        data["interrupted"] = True
    finally:
        close_all(targets)
        if hasattr(os, "getloadavg"):  # with the start's, says how busy the machine was meanwhile
            data["machine"]["load_average_at_end"] = list(os.getloadavg())
    if not data["results"]:
        if data["interrupted"]:
            click.secho("interrupted before anything was measured; nothing written", fg="yellow", err=True)
            sys.exit(EXIT_INTERRUPTED)
        raise MoaiError("nothing was measured")
    from ..benchmark.report import MARKDOWN

    click.echo(MARKDOWN[data["command"]](data))  # the results first: a failed write must not lose them
    written = write_report(data, out)
    click.echo(f"written: {', '.join(str(p) for p in written.values())}", err=True)
    if data["interrupted"]:
        click.secho("interrupted: partial results written", fg="yellow", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _common(f):
    f = click.option("--quiet", "-q", is_flag=True, help="No progress bars or log lines (tables still print).")(f)
    f = click.option("--tokenizer", type=click.Path(path_type=Path, file_okay=False), default=None,
                     help="Model directory whose tokenizer counts tokens for targets without a local one "
                          "(remote servers). Default: the first target that has one.")(f)
    f = click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
                     help="Directory for results.json, summary.md and the PNGs (throughput, parity, retrieval) "
                          "[default: bench/results/COMMAND-DATE-TIME].")(f)
    return f


@main.command()
@click.option("--target", "targets", multiple=True, required=True, help=TARGET_HELP)
@click.option("--workload", "workloads", multiple=True, type=click.Path(path_type=Path),
              help="BEIR directory (corpus.jsonl, queries.jsonl, qrels.tsv, here or under beir/); repeatable. "
                   "Its queries and documents are separate workloads.")
@click.option("--tokens", "token_lengths", default=None,
              help="Generated workloads, comma-separated token lengths: N (every text N tokens) or A-B "
                   "(uniform). Prompt and end token included. [default: 64,256 when no --workload]")
@click.option("--texts", "text_count", type=click.IntRange(min=1), default=256, show_default=True,
              help="Texts per generated workload.")
@click.option("--kind", type=click.Choice(["document", "query", "both"]), default=None,
              help="Which texts to send [default: both for --workload, document for generated].")
@click.option("--with-title", is_flag=True, help="BEIR documents as title + newline + text.")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Use only the first N texts of each workload.")
@throughput_option("--batch-sizes", help="Texts per request.")
@throughput_option("--concurrency",
                   help="Closed-loop client counts (each sends its next request when the last returns). "
                        "Empty string: no closed loop.")
@click.option("--rate", "rates", default=None,
              help="Open-loop offered request rates (requests/s), e.g. 1,2,4: requests are sent on schedule "
                   "whether or not earlier ones returned; latency counts from the due time. Requests "
                   "already due when the bound is reached still run (a backlog drains).")
@throughput_option("--arrival", type=click.Choice(["uniform", "poisson"]), help="Open-loop arrival process.")
@throughput_option("--max-inflight", type=click.IntRange(min=1), help="Open loop: most requests in flight at once.")
@throughput_option("--requests", type=click.IntRange(min=0),
                   help="Measured requests per cell (0: bound by --seconds only).")
@throughput_option("--seconds", type=click.FloatRange(min=0),
                   help="Seconds per cell (0: bound by --requests only); requests in flight still finish.")
@throughput_option("--warmup", type=click.IntRange(min=0),
                   help="Untimed requests per cell and target before measuring (before its first round).")
@throughput_option("--rounds", type=click.IntRange(min=1),
                   help="Runs of every cell, the targets interleaved round by round; each target's fastest run "
                        "(most sentences/s: the least disturbed by other load) is the one reported.")
@throughput_option("--settle", type=click.FloatRange(min=0),
                   help="Idle seconds before each target's cell: a vLLM engine keeps polling for about a second "
                        "after its last request and slows whatever runs next on a small machine.")
@throughput_option("--seed", type=int, help="Seeds generated texts and Poisson arrivals.")
@_common
def throughput(targets, workloads, token_lengths, text_count, kind, with_title, limit, batch_sizes, concurrency,
               rates, arrival, max_inflight, requests, seconds, warmup, rounds, settle, seed, out, tokenizer, quiet):
    """Sentences/s, real (unpadded) tokens/s, p50/p90/p95/p99/max latency and errors of every
    target, for every workload x batch size x load level.

    Cells run workload by workload, batch size by batch size, and within a cell every target
    back to back, so ratios to the first target are measured under the same conditions.

    \b
    moai-bench throughput --target ref=peft:build/example/base+build/example/adapter \\
        --target torch:build/merged --target onnx:build/onnx-int8 --target st:build/merged \\
        --batch-sizes 1,8,32 --concurrency 1,4 --tokens 64,256 --requests 20 --seconds 30
    """
    from ..benchmark.targets import first_counter
    from ..benchmark.throughput import ThroughputSettings, run_throughput
    from ..benchmark.workloads import LengthSpec, beir_workloads, generated_workload
    from ..evaluation.beir import load_beir

    settings = ThroughputSettings(
        batch_sizes=_ints(batch_sizes, "--batch-sizes"), concurrency=_ints(concurrency, "--concurrency"),
        rates=_floats(rates, "--rate"), requests=requests or None, seconds=seconds or None, warmup=warmup,
        max_inflight=max_inflight, arrival=arrival, settle=settle, seed=seed, rounds=rounds)
    if not settings.batch_sizes:
        raise MoaiError("--batch-sizes: give at least one")
    if not settings.concurrency and not settings.rates:
        raise MoaiError("nothing to run: give --concurrency and/or --rate")
    if settings.requests is None and settings.seconds is None:
        raise MoaiError("--requests 0 and --seconds 0: bound each cell by one of them")
    datasets = [load_beir(w) for w in workloads]  # bad paths fail before any model loads
    lengths = [LengthSpec.parse(t) for t in (token_lengths or ("" if workloads else "64,256")).split(",") if t.strip()]
    rows: list[dict] = []

    def body(loaded, data):
        chosen = ["query", "document"] if (kind or ("both" if datasets else "document")) == "both" else [kind or "document"]
        wl = [w for d in datasets for w in beir_workloads(d, chosen, with_title=with_title, limit=limit)]
        if lengths:
            counter = first_counter(loaded)
            wl += [generated_workload(spec, min(text_count, limit or text_count), counter, kind=k, seed=seed)
                   for spec in lengths for k in chosen]
        data["workloads"] = [w.to_dict() for w in wl]
        try:
            run_throughput(loaded, wl, settings, rows, progress=not quiet, log=_log(quiet))
        finally:
            from ..benchmark.throughput import add_ratios

            add_ratios(rows)
            data["workloads"] = [w.to_dict() for w in wl]

    _run("throughput", out, list(targets), tokenizer, settings.to_dict(), quiet, body, rows)


@main.command()
@click.option("--dataset", type=click.Path(path_type=Path), required=True,
              help="BEIR directory: corpus.jsonl, queries.jsonl, qrels.tsv (here or under beir/).")
@click.option("--target", "targets", multiple=True, required=True, help=TARGET_HELP)
@click.option("--reference", default=None,
              help="[LABEL=]SPEC the deltas and parity are taken against (placed before the targets). "
                   "Default: the first --target.")
@library_option(".benchmark.retrieval:run_retrieval", "--batch-size", type=click.IntRange(min=1),
                help="Texts per encode call.")
@click.option("--max-queries", type=click.IntRange(min=1), default=None,
              help="Evaluate only the first N queries that have qrels (the whole corpus is still searched).")
@click.option("--with-title", is_flag=True, help="Documents as title + newline + text.")
@click.option("--dimensions", default=None, metavar="K,K,...",
              help="Matryoshka sweep: also score each target's vectors cut to these widths (first K components, "
                   "renormalized), e.g. 128,256,512,1024: NDCG@10 per size, one plot.")
@click.option("--fail-below-gate", is_flag=True,
              help="Exit 3 (verification failed) when any target falls below its gate against the reference.")
@_common
def retrieval(dataset, targets, reference, batch_size, max_queries, with_title, dimensions, fail_below_gate, out,
              tokenizer, quiet):
    """NDCG@10 (primary), MRR@10, Recall@1, Recall@10, Accuracy@1 and MAP@10 of every target on
    a BEIR dataset (binary relevance; queries get the prompt, documents do not), per domain
    when queries carry a `domain` field, with deltas, vector cosines and top-10 agreement
    against the reference, each target judged by its gate from the gate table (every query and
    document vector; the worst texts with their lengths). Figures equal sentence-transformers'
    InformationRetrievalEvaluator.

    \b
    moai-bench retrieval --dataset BEIR_DIR \\
        --reference peft:build/example/base+build/example/adapter \\
        --target torch:build/merged --target int8=onnx:build/onnx-int8
    """
    from ..benchmark.retrieval import run_retrieval
    from ..core.contract import check_dimensions
    from ..evaluation.beir import load_beir

    sizes = _dimension_list(dimensions)
    data_set = load_beir(dataset)
    result: dict = {}
    settings = {"dataset": str(dataset), "batch_size": batch_size, "max_queries": max_queries,
                "with_title": with_title, "dimensions": sizes}

    def body(loaded, data):
        for target in loaded:
            for size in sizes:
                check_dimensions(size, target.embedder.contract)  # before minutes of encoding
        run_retrieval(loaded, data_set, result, batch_size=batch_size, with_title=with_title,
                      max_queries=max_queries, progress=not quiet, log=_log(quiet), dimensions=sizes)

    _run("retrieval", out, ([reference] if reference else []) + list(targets), tokenizer, settings, quiet, body, result)
    _exit_if_below_gate(fail_below_gate, result)


def below_gate(result: dict) -> list[str]:
    """Every verdict below its gate in a parity, retrieval or corpus result, named."""
    out = []
    for row in result.get("targets", []):
        verdicts = {"probes": row if "passed" in row else None,  # parity's probe gate
                    "dataset": (row.get("dataset") or {}).get("judged"),  # parity --dataset
                    "vs reference": (row.get("parity_vs_reference") or {}).get("judged"),  # retrieval
                    "corpus": row.get("judged")}  # corpus --reference
        for what, verdict in verdicts.items():
            if verdict and not verdict["passed"]:
                reasons = "; ".join(verdict.get("failures") or ["below its gate"])
                out.append(f"{row.get('candidate') or row.get('target')} ({what}): {reasons}")
    return out


def _exit_if_below_gate(asked: bool, result: dict) -> None:
    failures = below_gate(result)
    for failure in failures:
        click.secho(f"BELOW GATE: {failure}", fg="red", err=True)
    if asked and failures:
        sys.exit(EXIT_VERIFICATION_FAILED)


def _dimension_list(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--dimensions") from None
    if not sizes or sizes[0] < 1:
        raise click.BadParameter(f"expected positive widths, got {text!r}", param_hint="--dimensions")
    return sizes


@main.command()
@click.option("--dataset", type=click.Path(path_type=Path), required=True,
              help="BEIR directory (corpus.jsonl, queries.jsonl, qrels.tsv, here or under beir/).")
@click.option("--target", "targets", multiple=True, required=True, help=TARGET_HELP)
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Passed to every target's encode call (e.g. 128 for sentence-transformers). Default: none, "
                   "each target batches by itself (the engine's token budget, a torch target's policy).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N documents.")
@library_option(".benchmark.corpus:run_corpus", "--queries", type=click.IntRange(min=1),
                help="Batch-1 queries timed after the corpus (p50/p99); the dataset's queries, repeated if needed.")
@click.option("--with-title", is_flag=True, help="Documents as title + newline + text.")
@click.option("--reference", default=None,
              help="[LABEL=]SPEC whose document vectors every target's are judged against by the target's gate "
                   "(e.g. the PEFT reference); not timed.")
@click.option("--fail-below-gate", is_flag=True,
              help="Exit 3 (verification failed) when any target falls below its gate against the reference.")
@_common
def corpus(dataset, targets, batch_size, limit, queries, with_title, reference, fail_below_gate, out, tokenizer, quiet):
    """Index a whole corpus: every document in ONE encode call per target, as an indexing job
    does, then batch-1 query latency. Reports docs/s, real tokens/s, an MFU estimate (on a
    GPU), peak GPU memory, warm-up (compile) and load time, side by side with ratios to the
    first target.

    \b
    moai-bench corpus --dataset BEIR_DIR --target 'st=st:build/merged?device=cuda' \\
        --target 'engine=engine:build/merged?device=cuda&compile=true'
    """
    from ..benchmark.corpus import run_corpus
    from ..evaluation.beir import load_beir

    data_set = load_beir(dataset)
    result: dict = {}
    settings = {"dataset": str(dataset), "batch_size": batch_size, "limit": limit, "queries": queries,
                "with_title": with_title}

    def body(loaded, data):
        first, timed = (loaded[0], loaded[1:]) if reference else (None, loaded)
        run_corpus(timed, data_set, result, batch_size=batch_size, with_title=with_title, limit=limit,
                   queries=queries, reference=first, log=_log(quiet))

    _run("corpus", out, ([reference] if reference else []) + list(targets), tokenizer, settings, quiet, body, result)
    _exit_if_below_gate(fail_below_gate, result)


@main.command()
@click.option("--reference", required=True, help="[LABEL=]SPEC every target is compared with (e.g. the PEFT reference).")
@click.option("--target", "targets", multiple=True, required=True, help=TARGET_HELP)
@click.option("--dataset", type=click.Path(path_type=Path), default=None,
              help="Also compare on a BEIR dataset's queries and documents (top-10 agreement over its corpus).")
# run_parity takes every text unless told; the command caps a dataset at 500 to stay a quick check.
@click.option("--max-texts", type=click.IntRange(min=1), default=500, show_default=True,
              help="With --dataset: at most this many queries and documents.")
@gate_options
@click.option("--fail-below-gate", "--strict", "fail_below_gate", is_flag=True,
              help="Exit 3 (verification failed) when any target does not PASS (probes, and --dataset texts).")
@library_option(".benchmark.parity_run:run_parity", "--batch-size", type=click.IntRange(min=1),
                help="Texts per encode call.")
@_common
def parity(reference, targets, dataset, max_texts, min_cosine, max_abs, min_rank_agreement, fail_below_gate,
           batch_size, out, tokenizer, quiet):
    """Min/mean cosine, max abs difference and top-10 rank agreement of every target against
    --reference on the built-in probe set (Korean/English/mixed, queries and documents, 1
    token to past max tokens), as one table, plus the distribution of cosines as a plot.
    PASS/FAIL is each target's gate from the one gate table (its kind's family and the precision
    it serves in), as `moai-export verify` would judge it; each override replaces one number.

    \b
    moai-bench parity --reference peft:build/example/base+build/example/adapter \\
        --target onnx:build/onnx-int8 --target triton-grpc://127.0.0.1:8001/moai_embedding
    """
    from ..benchmark.parity_run import run_parity
    from ..evaluation.beir import load_beir

    data_set = load_beir(dataset) if dataset else None
    result: dict = {}
    settings = {"min_cosine": min_cosine, "max_abs": max_abs, "min_rank_agreement": min_rank_agreement,
                "dataset": str(dataset) if dataset else None, "max_texts": max_texts}

    def body(loaded, data):
        run_parity(loaded[0], loaded[1:], overrides_from(min_cosine, max_abs, min_rank_agreement), result,
                   dataset=data_set, max_texts=max_texts, batch_size=batch_size, progress=not quiet,
                   log=_log(quiet))

    _run("parity", out, [reference] + list(targets), tokenizer, settings, quiet, body, result)
    _exit_if_below_gate(fail_below_gate, result)


if __name__ == "__main__":
    main()
