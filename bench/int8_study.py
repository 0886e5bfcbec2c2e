"""Which int8 holds the gate on documents as long as real ones, and how fast is it?

    python bench/int8_study.py --size tiny --dataset $DS                       # all passages, minutes
    python bench/int8_study.py --merged build/bench-full/merged-fp32 --reference-base build/bench-full/example/base \\
        --reference-adapter build/bench-full/example/adapter --dataset $DS --docs 32 --queries 16 --rounds 2

Exports the merged model to fp32 ONNX once, then builds every int8 candidate from that graph:
  dynamic-per-tensor    dynamic int8, one weight scale per MatMul;
  dynamic               dynamic int8, per-channel weights (onnxruntime's best dynamic scheme);
  dynamic-keep-N        dynamic per-channel with the N most sensitive MatMuls left in fp32, ranked by
                        a cheap per-node estimate (each MatMul's own int8 output error on calibration
                        documents, fp32 inputs, no error carried between nodes);
  weight-only           MatMulNBits, int8 weight blocks of 32 (int8 activations per block);
  static                QDQ, per-channel weights, activation scales from MinMax calibration.
Calibration and sensitivity use generated Korean finance documents of 128-1024 tokens (the
benchmarks' generator), never the measured passages. Each candidate is compared with the fp32 PEFT
reference (cosine, max abs) per token-length bucket of the dataset's passages (<=128, <=256,
<=512, <=1024) and on its queries, and timed in docs/s in interleaved rounds with fp32 ONNX (each
round loads one model at a time: the full-size shape needs ~2.5 GB per fp32 copy). The machine
may be shared: compare ratios within one run, not absolute docs/s. Writes OUT/int8_study.json and
OUT/int8_study.md (OUT: bench/results/<date>-<machine>/int8, or --out).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from moai_export.benchmark.workloads import LengthSpec, generate_texts
from moai_export.core.errors import MoaiError
from moai_export.embedders.onnx_runtime import ONNX_DATA, ONNX_FILE, OnnxEmbedder
from moai_export.embedders.peft_reference import PeftEmbedder
from moai_export.evaluation.beir import load_beir
from moai_export.evaluation.machine import default_results_dir, machine_description
from moai_export.export import int8
from moai_export.export.onnx import DEFAULT_OPSET, EXTERNAL_DATA_ABOVE, write_graph
from moai_export.gates.parity import cosine_rows
from moai_export.gates.table import gate_for
from moai_export.model_files.contract_tokenizer import ContractTokenizer, write_tokenizer_files
from moai_export.model_files.model_contract import read_contract

BUCKETS = (128, 256, 512, 1024)
GATE = gate_for("onnx", "int8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="tiny",
                        help="Build this example shape (example + merge) under --work when --merged is not given.")
    parser.add_argument("--work", type=Path, default=None, help="Scratch directory (default build/int8-study-SIZE).")
    parser.add_argument("--merged", type=Path, default=None,
                        help="A merged model directory to study instead (merged from the reference if missing).")
    parser.add_argument("--reference-base", type=Path, default=None, help="PEFT reference base (with --merged).")
    parser.add_argument("--reference-adapter", type=Path, default=None, help="PEFT reference adapter (with --merged).")
    parser.add_argument("--dataset", type=Path, required=True, help="BEIR directory (autorag-ko).")
    parser.add_argument("--docs", type=int, default=0,
                        help="Passages measured: 0 = all; N = a length-stratified subset (N/4 per bucket, "
                             "spread over each bucket's lengths, its longest included).")
    parser.add_argument("--queries", type=int, default=0, help="Queries measured (0 = all).")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved timing rounds (round 1 also gives parity).")
    parser.add_argument("--calibration", type=int, default=16,
                        help="Generated documents (128-1024 tokens) for static calibration and sensitivity.")
    parser.add_argument("--keep", type=str, default="auto",
                        help="How many most sensitive MatMuls dynamic-keep-N leaves in fp32: a number, or auto "
                             "(one in ten, at least one).")
    parser.add_argument("--methods", type=str, default=None, help="Comma-separated subset of the candidates.")
    parser.add_argument("--out", type=Path, default=None, help="Result folder (default bench/results/<date>-<machine>/int8).")
    args = parser.parse_args()
    out = args.out or default_results_dir("int8")
    work = args.work or Path(f"build/int8-study-{args.size}")
    merged, base, adapter, shape = prepare_model(args, work)
    machine = machine_description()

    dataset = load_beir(args.dataset)
    contract = read_contract(merged)
    tokenizer = ContractTokenizer.from_dir(merged, contract)
    doc_lengths = token_lengths(tokenizer, dataset.corpus_texts, "document")
    doc_ids = select_documents(doc_lengths, args.docs)
    docs = [dataset.corpus_texts[i] for i in doc_ids]
    lengths = [doc_lengths[i] for i in doc_ids]
    queries = dataset.query_texts[:args.queries or None]
    print(f"{len(docs)} passages (tokens: mean {np.mean(lengths):.0f}, max {max(lengths)}), {len(queries)} queries",
          flush=True)

    calibration, calibration_lengths = generate_texts(LengthSpec(128, contract.max_tokens), args.calibration,
                                                      tokenizer, kind="document", seed=7)

    ref_docs, ref_queries = reference_vectors(base, adapter, docs, queries, work)

    fp32_dir = work / "fp32"
    t = time.perf_counter()
    if not (fp32_dir / ONNX_FILE).is_file():
        export_fp32(merged, contract, fp32_dir)
    build_s = {"fp32": round(time.perf_counter() - t, 1)}
    fp32_graph = fp32_dir / ONNX_FILE
    large = graph_bytes(fp32_dir) > EXTERNAL_DATA_ABOVE

    t = time.perf_counter()
    feeds = [feed(tokenizer, text) for text in calibration]
    wanted = args.methods.split(",") if args.methods else None
    sensitivity = matmul_sensitivity(fp32_graph, feeds[:4]) if not wanted or "dynamic-keep" in wanted else []
    sensitivity_s = time.perf_counter() - t
    keep = max(1, len(sensitivity) // 10) if args.keep == "auto" else int(args.keep)
    most_sensitive = [row["node"] for row in sensitivity[:keep]]

    candidates = {
        "dynamic-per-tensor": lambda dst: int8.quantize_dynamic_matmuls(fp32_graph, dst, per_channel=False, large=large),
        "dynamic": lambda dst: int8.quantize_dynamic_matmuls(fp32_graph, dst, large=large),
        f"dynamic-keep-{keep}": lambda dst: int8.quantize_dynamic_matmuls(fp32_graph, dst, keep_fp32=most_sensitive,
                                                                          large=large),
        "weight-only": lambda dst: int8.quantize_weight_only(fp32_graph, dst, large=large),
        "static": lambda dst: int8.quantize_static_matmuls(fp32_graph, dst, feeds, large=large),
    }
    if wanted:
        candidates = {name: build for name, build in candidates.items() if name in wanted or
                      (name.startswith("dynamic-keep") and "dynamic-keep" in wanted)}
    directories = {"fp32": fp32_dir}
    errors = {}
    for name, build in candidates.items():
        directory = work / name
        t = time.perf_counter()
        try:
            if not (directory / ONNX_FILE).is_file():
                build_candidate(fp32_dir, directory, build)
            directories[name] = directory
            build_s[name] = round(time.perf_counter() - t, 1)
            print(f"built {name}: {build_s[name]} s, {graph_bytes(directory) / 2**20:.0f} MiB", flush=True)
        except Exception as exc:  # a candidate onnxruntime cannot build is a finding, not a crash
            errors[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"{name}: cannot build ({errors[name]})", flush=True)
            shutil.rmtree(directory, ignore_errors=True)

    parity, timings = {}, {name: [] for name in directories}
    for round_index in range(args.rounds):
        for name, directory in list(directories.items()):
            embedder = OnnxEmbedder(directory, admission="skip", name=name)
            embedder.encode(["워밍업"], "document")
            t = time.perf_counter()
            try:
                vectors = embedder.encode(docs, "document")
            except MoaiError as exc:  # e.g. a zero vector: the candidate fails, the study goes on
                errors[name] = f"embedding failed: {exc}"
                print(f"{name}: {errors[name]}", flush=True)
                del directories[name], timings[name]
                continue
            timings[name].append(time.perf_counter() - t)
            if round_index == 0:
                parity[name] = compare(vectors, ref_docs, lengths, embedder.encode(queries, "query"), ref_queries,
                                       [dataset.corpus_ids[i] for i in doc_ids])
            del embedder, vectors
            gc.collect()
            print(f"round {round_index + 1} {name}: {len(docs) / timings[name][-1]:.2f} docs/s"
                  + (f", min cos {parity[name]['documents']['min_cosine']:.6f}" if round_index == 0 else ""),
                  flush=True)

    best = {name: len(docs) / min(ts) for name, ts in timings.items()}
    rows = []
    for name in directories:
        holds = all(b["min_cosine"] >= GATE.min_cosine for b in parity[name]["buckets"].values()) and \
            parity[name]["queries"]["min_cosine"] >= GATE.min_cosine
        rows.append({"method": name, "size_mib": round(graph_bytes(directories[name]) / 2**20, 1),
                     "build_s": build_s.get(name), "docs_per_s_best": round(best[name], 3),
                     "ratio_to_fp32": round(best[name] / best["fp32"], 3),
                     "round_seconds": [round(s, 2) for s in timings[name]],
                     "holds_int8_gate": holds, **parity[name]})
    result = {
        "benchmark": "int8 quantization methods vs fp32 ONNX: parity to the fp32 PEFT reference per token-length "
                     "bucket, docs/s in interleaved rounds",
        "date": dt.date.today().isoformat(), "machine": machine, "shape": shape,
        "weights": "random (the example): random weights lack the outlier activations of trained ones, so a "
                   "method that barely holds here may fail on a real model; the choice should err conservative",
        "gate": GATE.to_dict(), "dataset": str(args.dataset),
        "documents": {"count": len(docs), "selection": "all" if not args.docs else f"length-stratified {args.docs}",
                      "tokens": token_summary(lengths), "per_bucket": bucket_counts(lengths)},
        "queries": len(queries),
        "calibration": {"texts": len(calibration), "tokens": token_summary(calibration_lengths),
                        "source": "generated Korean finance text (moai_export.benchmark.workloads.generate_texts, "
                                  "seed 7); never the measured passages"},
        "sensitivity": {"method": "each weight MatMul's relative output error with its input quantized uint8 per "
                                  "tensor and its weight int8 per channel, fp32 inputs from 4 calibration documents",
                        "seconds": round(sensitivity_s, 1), "kept_fp32": most_sensitive, "ranking": sensitivity[:20],
                        "by_role": by_role(sensitivity)},
        "timing": {"rounds": args.rounds, "batching": "the embedder's default policy", "load_average_end":
                   list(__import__("os").getloadavg()),
                   "note": "2 shared vCPUs: other work ran beside this; compare ratios within the run"},
        "build_errors": errors, "methods": rows,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    out.mkdir(parents=True, exist_ok=True)
    stem = out / f"int8_study-{shape['name']}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"written {stem}.json and .md")


def prepare_model(args, work: Path) -> tuple[Path, Path, Path, dict]:
    if args.merged:
        if not (args.reference_base and args.reference_adapter):
            raise SystemExit("error: --merged needs --reference-base and --reference-adapter (the PEFT reference)")
        merged, base, adapter = args.merged, args.reference_base, args.reference_adapter
        if not (merged / "moai_contract.json").is_file():
            merge_unverified(base, adapter, merged)
    else:
        cli = [sys.executable, "-m", "moai_export.commands.export_cli"]
        example, merged = work / "example", work / "merged"
        base, adapter = example / "base", example / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            subprocess.run(cli + ["example", "--out", str(example), "--size", args.size, "--force"], check=True)
        if not (merged / "moai_contract.json").is_file():
            merge_unverified(base, adapter, merged)
    config = json.loads((merged / "config.json").read_text())
    shape = {key: config.get(key) for key in ("num_hidden_layers", "hidden_size", "intermediate_size",
                                              "num_attention_heads")}
    shape["name"] = {28: "full", 4: "small", 2: "tiny"}.get(shape["num_hidden_layers"], "custom")
    return merged, base, adapter, shape


def reference_vectors(base: Path, adapter: Path, docs: list[str], queries: list[str], work: Path):
    """The fp32 PEFT reference's vectors, cached in `work` by the texts' hash (the slowest step)."""
    import hashlib

    key = hashlib.sha256(json.dumps([str(base), str(adapter), docs, queries]).encode()).hexdigest()[:16]
    cache = work / f"reference-{key}.npz"
    if cache.is_file():
        saved = np.load(cache)
        return saved["docs"], saved["queries"]
    t = time.perf_counter()
    reference = PeftEmbedder.from_base_and_adapter(base, adapter, name="peft")
    vectors = reference.encode(docs, "document"), reference.encode(queries, "query")
    del reference
    gc.collect()
    print(f"reference: {time.perf_counter() - t:.0f} s", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, docs=vectors[0], queries=vectors[1])
    return vectors


def merge_unverified(base: Path, adapter: Path, out: Path) -> None:
    """The merge `moai-export merge` writes, without its gate (on the full-size shape the gate
    costs many minutes on 2 CPUs): the study's fp32 row, against the PEFT reference, checks it."""
    from moai_export.export.merge import write_tokenizer
    from moai_export.model_files.portable_config import write_portable_config
    from moai_export.model_files.sentence_transformers_format import write_sentence_transformers_files

    reference = PeftEmbedder.from_base_and_adapter(base, adapter, name="peft")
    out.mkdir(parents=True, exist_ok=True)
    reference.peft_model.merge_and_unload().save_pretrained(str(out))
    write_portable_config(out)
    write_tokenizer(base, adapter, reference.contract, out)
    write_sentence_transformers_files(reference.contract, out)
    reference.contract.save(out)
    del reference
    gc.collect()


def export_fp32(merged: Path, contract, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_graph(merged, contract, directory, "fp32", DEFAULT_OPSET)
    write_tokenizer_files(merged, contract, directory)
    contract.save(directory)


def build_candidate(fp32_dir: Path, directory: Path, build) -> None:
    """The candidate's graph next to copies of the fp32 export's tokenizer and contract files."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    for path in fp32_dir.iterdir():
        if path.name not in (ONNX_FILE, ONNX_DATA) and path.is_file():
            shutil.copy2(path, directory / path.name)
    build(directory / ONNX_FILE)


def graph_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir() if p.name.startswith(ONNX_FILE.split(".")[0]))


def token_lengths(tokenizer: ContractTokenizer, texts: list[str], kind: str) -> list[int]:
    lengths = []
    for start in range(0, len(texts), 64):
        lengths += tokenizer.tokenize(texts[start:start + 64], kind).attention_mask.sum(axis=1).tolist()
    return [int(n) for n in lengths]


def bucket_of(length: int) -> str:
    return f"<={next((b for b in BUCKETS if length <= b), BUCKETS[-1])}"


def select_documents(lengths: list[int], count: int) -> list[int]:
    """All indices, or `count` spread evenly over each bucket's sorted lengths (longest included)."""
    if not count:
        return list(range(len(lengths)))
    chosen = []
    for bucket in dict.fromkeys(bucket_of(n) for n in sorted(lengths)):
        members = sorted((i for i, n in enumerate(lengths) if bucket_of(n) == bucket), key=lambda i: lengths[i])
        take = min(len(members), max(1, count // len(BUCKETS)))
        chosen += [members[round(k * (len(members) - 1) / max(take - 1, 1))] for k in range(take)]
    return sorted(set(chosen))


def feed(tokenizer: ContractTokenizer, text: str) -> dict:
    batch = tokenizer.tokenize([text], "document")
    return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}


def matmul_sensitivity(graph: Path, feeds: list[dict]) -> list[dict]:
    """Every weight MatMul's relative output error when ONLY it is quantized the dynamic way,
    on fp32 inputs: ||X W - deq(q(X)) deq(q(W))|| / ||X W||, worst over `feeds`. Cheap (one fp32
    run exposing the MatMul inputs, then numpy on a sample of rows); it ignores how errors
    compound across layers, which is what the candidate's measured parity then shows."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    # the graph without its weights: a copy beside the original reads the same external data file
    model = onnx.load(str(graph), load_external_data=False)
    nodes = int8.weight_matmuls(model)
    weights = {t.name: t for t in model.graph.initializer}
    inputs = sorted({node.input[0] for node in nodes})
    known = {o.name for o in model.graph.output}
    for name in inputs:
        if name not in known:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    exposed = graph.parent / "sensitivity.onnx"
    onnx.save_model(model, str(exposed))
    try:
        session = ort.InferenceSession(str(exposed))
    finally:
        exposed.unlink()
    worst = {node.name: 0.0 for node in nodes}
    rng = np.random.default_rng(0)
    for one in feeds:
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, one)))
        for node in nodes:
            x = outputs[node.input[0]].reshape(-1, outputs[node.input[0]].shape[-1])
            w = numpy_helper.to_array(weights[node.input[1]], base_dir=str(graph.parent))  # not cached: 0.6B twice
            wq = _fake_quant_per_column(w)
            xq = _fake_quant_uint8(x)  # the scale comes from the whole tensor, as at run time
            rows = rng.choice(len(x), size=min(len(x), 128), replace=False)
            exact = x[rows] @ w
            error = np.linalg.norm(xq[rows] @ wq - exact) / max(np.linalg.norm(exact), 1e-12)
            worst[node.name] = max(worst[node.name], float(error))
        del outputs
    del session, model
    gc.collect()
    return sorted(({"node": name, "relative_error": round(e, 6)} for name, e in worst.items()),
                  key=lambda row: -row["relative_error"])


def _fake_quant_uint8(x: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear: uint8, asymmetric, range including 0, one scale per tensor."""
    low, high = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (high - low) / 255 or 1.0
    zero = np.clip(np.round(-low / scale), 0, 255)
    return ((np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale).astype(np.float32)


def _fake_quant_per_column(w: np.ndarray) -> np.ndarray:
    """Symmetric int8 per output channel (a MatMul weight is [in, out])."""
    scale = np.abs(w).max(axis=0, keepdims=True) / 127
    scale[scale == 0] = 1.0
    return (np.clip(np.round(w / scale), -127, 127) * scale).astype(np.float32)


def by_role(sensitivity: list[dict]) -> dict:
    """Mean estimated error per projection (q/k/v/o/gate/up/down) across layers."""
    roles: dict[str, list[float]] = {}
    for row in sensitivity:
        parts = row["node"].strip("/").split("/")
        role = parts[-2] if len(parts) >= 2 else row["node"]
        roles.setdefault(role, []).append(row["relative_error"])
    return {role: {"mean": round(float(np.mean(v)), 6), "max": round(float(np.max(v)), 6)}
            for role, v in sorted(roles.items(), key=lambda kv: -np.mean(kv[1]))}


def compare(vectors, reference, lengths, query_vectors, query_reference, ids) -> dict:
    cos = cosine_rows(vectors, reference)
    diff = np.abs(vectors - reference).max(axis=1)
    buckets = {}
    for bucket in dict.fromkeys(bucket_of(n) for n in sorted(lengths)):
        rows = [i for i, n in enumerate(lengths) if bucket_of(n) == bucket]
        buckets[bucket] = {"count": len(rows), "min_cosine": round(float(cos[rows].min()), 6),
                           "mean_cosine": round(float(cos[rows].mean()), 6),
                           "max_abs": round(float(diff[rows].max()), 6)}
    worst = np.argsort(cos)[:5]
    qcos = cosine_rows(query_vectors, query_reference)
    return {"documents": {"min_cosine": round(float(cos.min()), 6), "mean_cosine": round(float(cos.mean()), 6),
                          "max_abs": round(float(diff.max()), 6)},
            "buckets": buckets,
            "worst_documents": [{"id": ids[i], "tokens": lengths[i], "cosine": round(float(cos[i]), 6)} for i in worst],
            "queries": {"min_cosine": round(float(qcos.min()), 6) if len(qcos) else None,
                        "max_abs": round(float(np.abs(query_vectors - query_reference).max()), 6) if len(qcos) else None}}


def token_summary(lengths) -> dict:
    arr = np.asarray(lengths)
    return {"mean": round(float(arr.mean()), 1), "p50": int(np.percentile(arr, 50)), "max": int(arr.max()),
            "min": int(arr.min())}


def bucket_counts(lengths) -> dict:
    counts: dict[str, int] = {}
    for n in sorted(lengths):
        counts[bucket_of(n)] = counts.get(bucket_of(n), 0) + 1
    return counts


def markdown(result: dict) -> str:
    buckets = list(result["documents"]["per_bucket"])
    shape = result["shape"]
    lines = [f"# int8 methods on long documents, {shape['name']} example shape, {result['date']}", "",
             f"machine: {result['machine']['summary']} (load average at start "
             f"{result['machine']['load_average_at_start']}, at end {result['timing']['load_average_end']})", "",
             f"shape: {shape['num_hidden_layers']} layers, hidden {shape['hidden_size']}, "
             f"intermediate {shape['intermediate_size']}; weights: {result['weights']}.", "",
             f"Passages: {result['documents']['count']} of {result['dataset']} ({result['documents']['selection']}; "
             f"tokens mean {result['documents']['tokens']['mean']}, max {result['documents']['tokens']['max']}; per "
             f"bucket {result['documents']['per_bucket']}), {result['queries']} queries. Gate: min cosine "
             f"{result['gate']['min_cosine']} to the fp32 PEFT reference. docs/s: best of {result['timing']['rounds']} "
             f"interleaved rounds over the same passages; {result['timing']['note']}.", "",
             "| method | " + " | ".join(f"min cos {b}" for b in buckets) + " | queries min cos | max abs | "
             "docs/s | vs fp32 | MiB | holds gate |",
             "|---|" + "---|" * (len(buckets) + 6)]
    for row in result["methods"]:
        lines.append(f"| {row['method']} | " + " | ".join(f"{row['buckets'][b]['min_cosine']:.6f}" for b in buckets)
                     + f" | {row['queries']['min_cosine']} | {row['documents']['max_abs']:.4f} | "
                     f"{row['docs_per_s_best']:.2f} | {row['ratio_to_fp32']:.2f}x | {row['size_mib']} | "
                     f"{'yes' if row['holds_int8_gate'] else '**no**'} |")
    if result["build_errors"]:
        lines += ["", "Failed: " + "; ".join(f"{k}: {v}" for k, v in result["build_errors"].items())]
    s = result["sensitivity"]
    if s["ranking"]:
        lines += ["", f"Sensitivity estimate ({s['method']}; {s['seconds']} s): mean / max relative error per projection: "
                  + ", ".join(f"{role} {v['mean']:.4f} / {v['max']:.4f}" for role, v in s["by_role"].items()) + ".",
                  f"Kept in fp32 by dynamic-keep: {', '.join(s['kept_fp32'])}."]
    lines += ["", f"Calibration: {result['calibration']['texts']} texts, {result['calibration']['source']}.", "",
              f"Command: `python {result['command']}`"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        main()
    except MoaiError as exc:
        raise SystemExit(f"error: {exc}")
