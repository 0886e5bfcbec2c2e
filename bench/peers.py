"""The project's CPU paths against the peers a user could pick instead, on the same merged model.

    bench/setup_peers.sh                        # once: the peer virtualenv, .venv-peers (git-ignored)
    python bench/peers.py --dataset ../shared/data/datasets/autorag-ko          # small example, ~20 min
    python bench/peers.py --dataset $DS --limit 48 --queries 8 --rounds 1 --served-seconds 10   # smoke run

Builds the example of --size (example, merge, fp32 and int8 ONNX, each skipped when present under
--work), embeds the passages and queries with the fp32 PEFT reference (cached), then:

In-process, interleaved rounds (each round runs every contender once, in a rotated order; the best
round of each is kept): every passage in ONE call (docs/s) and batch-1 queries (p50/p99) for
  st-torch       plain sentence-transformers fp32 (`encode`, batch 32; it length-sorts inside)
  st-onnx        sentence-transformers' own ONNX backend (backend="onnx", exported through optimum)
  st-onnx-int8   its dynamic int8 export (export_dynamic_quantized_onnx_model, avx512_vnni)
  torch, onnx-fp32, onnx-int8, engine   the project's `torch:`, `onnx:` and `engine:` Embedders with
                 their default batching (a token budget per device).
The peers run in the peer virtualenv as long-lived workers (bench/peer_worker.py), so nothing of
theirs is installed in the project's .venv.

Served, closed loop of --clients clients x --docs-per-request passages a request, interleaved rounds:
  infinity       Infinity (`infinity_emb v2 --engine torch`, plain torch fp32) on the merged directory
  gateway-fp32 / gateway-int8   the OpenAI gateway -> Triton (the repository `moai-export triton`
                 writes by default, onnxruntime with 2 intra-op threads) on the fp32 / int8 ONNX artifact
  triton-fp32 / triton-int8     the same tritonservers over gRPC, without the gateway.

Parity: every contender's vectors (all passages of the timed call, every query, every served answer)
against the fp32 PEFT reference: min cosine, judged by the gate of its family and precision.

Found while writing this (peer versions in results.json): `infinity-emb[all]` pulls a CUDA torch and
cannot resolve a transformers that knows Qwen3; `[server,torch,optimum]` with torch held at the CPU
build (bench/peers-constraints.txt) works. Infinity's optimum engine cannot run this model (it feeds
no `position_ids` and pools mean/cls only), so Infinity is measured with its torch engine.

Full-size shape (28 layers x 1024): an fp32 pass over all 720 passages takes hours on 2 vCPUs, so
run it on a subset, e.g.
    python bench/peers.py --size full --dataset $DS --limit 64 --queries 8 --rounds 1 --served-seconds 60
Writes OUT/peers.json and OUT/peers.md (OUT: bench/results/<date>-<machine>/peers, or --out).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import gc
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from int8_study import reference_vectors  # noqa: E402  (bench/ is the script's own folder)

from moai_export.artifacts.kinds import load_embedder, parse_spec  # noqa: E402
from moai_export.benchmark.async_load import Outcome, Recorder, closed_loop, measure_saturation  # noqa: E402
from moai_export.benchmark.gateway_bench import ServingStack, build_onnx_artifact, log  # noqa: E402
from moai_export.benchmark.stats import percentile  # noqa: E402
from moai_export.core.batching import SERVING_BUDGETS, padded_tokens  # noqa: E402
from moai_export.embedders.onnx_runtime import ONNX_FILE  # noqa: E402
from moai_export.embedders.triton import ensemble_inputs  # noqa: E402
from moai_export.evaluation.beir import load_beir  # noqa: E402
from moai_export.evaluation.machine import default_results_dir, machine_description  # noqa: E402
from moai_export.export.onnx import OnnxOptions, export_onnx  # noqa: E402
from moai_export.export.triton import TritonOptions, write_repository  # noqa: E402
from moai_export.gates.parity import cosine_rows  # noqa: E402
from moai_export.gates.table import gate_for  # noqa: E402
from moai_export.launchers.process import HttpHealthServer  # noqa: E402
from moai_export.launchers.triton_server import free_ports  # noqa: E402

PEERS = {"st-torch": ("torch", "fp32"), "st-onnx": ("onnx", "fp32"), "st-onnx-int8": ("onnx", "int8")}
PLAIN = "st-torch"  # every ratio's 1.00
INFINITY = "infinity"
PEER_VERSIONS = ("sentence-transformers", "infinity-emb", "torch", "transformers", "onnxruntime", "optimum",
                 "optimum-onnx", "numpy")
MODEL = TritonOptions.name
NOTES = [
    "sentence-transformers' ONNX export of Qwen3 (optimum-onnx) has a position_ids input that "
    "sentence-transformers never feeds; the worker feeds 0..n-1 per row (what transformers uses).",
    "Infinity's optimum engine does not start on a local directory here: with optimum-onnx 0.1.0 it passes the "
    "ONNX file's absolute path as file_name (FileNotFoundError); beyond that it feeds no position_ids and pools "
    "mean/cls only, while this model pools the last token. Infinity is measured with its torch engine.",
    "Infinity 0.0.78 requires sentence-transformers < 4: the peer virtualenv has 3.4.1 (and transformers 4.5x).",
]
SETTLE_S = 1.0  # idle between contenders: a runtime's spinning threads must not slow the next one


# -- contenders ------------------------------------------------------------------------------------

class ProjectContender:
    """A project Embedder, in this process, with the batching it serves with."""

    def __init__(self, label: str, spec: str, texts: dict):
        self.label, self.spec, self.texts = label, spec, texts
        start = time.perf_counter()
        self.embedder = load_embedder(spec, admission="skip")  # parity is judged here, against the reference
        self.embedder.encode(texts["documents"][:4], "document")
        self.embedder.encode(texts["queries"][:2], "query")
        self.load_s = time.perf_counter() - start
        family = parse_spec(spec)[0].gate_family(self.embedder)
        self.gate = gate_for(family, self.embedder.precision)

    def documents(self) -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        vectors = self.embedder.encode(self.texts["documents"], "document")
        return time.perf_counter() - start, vectors

    def queries(self, count: int) -> tuple[list[float], np.ndarray]:
        latencies, vectors = [], []
        for text in self.texts["queries"][:count]:
            start = time.perf_counter()
            vectors.append(self.embedder.encode([text], "query")[0])
            latencies.append(time.perf_counter() - start)
        return latencies, np.asarray(vectors)

    def close(self) -> None:
        self.embedder.close()


class PeerContender:
    """A sentence-transformers contender in the peer virtualenv: bench/peer_worker.py, loaded once,
    driven by JSON lines (its vectors come back as .npy files in `scratch`)."""

    def __init__(self, label: str, python: Path, merged: Path, texts_file: Path, scratch: Path):
        self.label, self.scratch = label, scratch
        self.gate = gate_for(*PEERS[label])
        self.log_path = scratch / f"{label}.log"
        self.process = subprocess.Popen([str(python), str(ROOT / "bench" / "peer_worker.py"), label, str(merged),
                                         str(texts_file)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log_path.open("w"), text=True, env={**os.environ, **OFFLINE})
        ready = self._read()
        self.load_s, self.prompts = ready["load_s"], ready["prompts"]

    def _read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{self.label} worker exited: {' | '.join(tail)}")
        return json.loads(line)

    def _ask(self, command: dict) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self._read()

    def documents(self) -> tuple[float, np.ndarray]:
        out = self.scratch / f"{self.label}-documents.npy"
        seconds = self._ask({"op": "documents", "out": str(out)})["seconds"]
        return seconds, np.load(out)

    def queries(self, count: int) -> tuple[list[float], np.ndarray]:
        out = self.scratch / f"{self.label}-queries.npy"
        latencies = self._ask({"op": "queries", "count": count, "out": str(out)})["latencies_s"]
        return latencies, np.load(out)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
            self.process.stdin.close()
            self.process.wait(timeout=60)


OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
           "DO_NOT_TRACK": "1"}


def run_in_process(contenders: list, rounds: int, query_count: int) -> dict:
    """label -> per-round docs/s and query latencies, and the vectors of its last round."""
    results = {c.label: {"rounds": []} for c in contenders}
    for round_index in range(rounds):
        shift = round_index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            time.sleep(SETTLE_S)
            seconds, vectors = contender.documents()
            latencies, query_vectors = contender.queries(query_count)
            row = {"docs_per_s": len(vectors) / seconds, "seconds": seconds,
                   "query_p50_ms": 1e3 * percentile(latencies, 50), "query_p99_ms": 1e3 * percentile(latencies, 99)}
            results[contender.label]["rounds"].append(row)
            results[contender.label].update(vectors=vectors, query_vectors=query_vectors)
            log(f"round {round_index + 1} {contender.label}: {row['docs_per_s']:.2f} docs/s, "
                f"query p50 {row['query_p50_ms']:.1f} ms")
    return results


def parity(vectors: np.ndarray, reference: np.ndarray) -> float:
    """Min cosine to the reference; a zero vector (sentence-transformers' int8 gives some) counts 0."""
    return float(np.nan_to_num(cosine_rows(reference, vectors), nan=0.0).min())


def zero_vectors(vectors: np.ndarray) -> int:
    return int((np.linalg.norm(vectors, axis=1) == 0).sum())


# -- served ----------------------------------------------------------------------------------------

@dataclass
class InfinityServer(HttpHealthServer):
    """Infinity's OpenAI-style server (`infinity_emb v2`) from the peer virtualenv, torch engine, fp32."""

    venv: Path = Path(".venv-peers")
    model_dir: Path = Path(".")
    port: int = 7997
    host: str = "127.0.0.1"
    log_path: Path | None = None
    process: object = None
    label = "infinity"
    workdir_prefix = "moai-peers-infinity-"

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [str(self.venv / "bin" / "infinity_emb"), "v2", "--model-id", str(self.model_dir),
                "--served-model-name", INFINITY, "--engine", "torch", "--device", "cpu", "--dtype", "float32",
                "--batch-size", "32", "--no-bettertransformer", "--host", self.host, "--port", str(self.port)], \
            {**os.environ, **OFFLINE}


@dataclass
class ServedTarget:
    """One served contender: `call(texts)` is a coroutine giving their vectors."""

    label: str
    call: object
    gate: object
    min_cosine: float = 1.0


def served_targets(session, triton_clients: dict, gateways: dict, infinity_url: str | None) -> list[ServedTarget]:
    """Infinity (when it started), then per ONNX precision the gateway and Triton direct; each judged
    by its family's gate (Infinity runs the merged weights in torch fp32)."""
    import tritonclient.grpc.aio as grpc_aio

    async def openai(url: str, model: str, texts: list[str], extra: dict) -> np.ndarray:
        async with session.post(url, json={"model": model, "input": texts, **extra}) as response:
            body = await response.json(content_type=None)
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {str(body)[:200]}")
        rows = sorted(body["data"], key=lambda d: d["index"])
        if extra.get("encoding_format") == "base64":
            return np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in rows])
        return np.asarray([d["embedding"] for d in rows], dtype=np.float32)

    async def triton(client, texts: list[str]) -> np.ndarray:
        result = await client.infer(MODEL, ensemble_inputs(grpc_aio, texts, "document"), client_timeout=120)
        return result.as_numpy("EMBEDDING")

    targets = []
    if infinity_url:
        targets.append(ServedTarget(INFINITY, partial(openai, f"{infinity_url}/embeddings", INFINITY,
                                                      extra={"encoding_format": "float"}), gate_for("torch", "fp32")))
    for precision in ("fp32", "int8"):
        gate = gate_for("triton", precision)
        targets.append(ServedTarget(f"gateway-{precision}", partial(
            openai, f"{gateways[precision]}/v1/embeddings", MODEL,
            extra={"input_type": "document", "encoding_format": "base64"}), gate))
        targets.append(ServedTarget(f"triton-{precision}", partial(triton, triton_clients[precision]), gate))
    return targets


async def run_served(targets: list[ServedTarget], documents: list[str], reference: np.ndarray, args) -> dict:
    per_request = args.docs_per_request
    chunks = len(documents) // per_request

    def send_to(target: ServedTarget, recorder: Recorder):
        async def send(index: int, _kind: str, t0: float) -> None:  # passages only: the kind is ignored
            rows = slice(index * per_request, (index + 1) * per_request)
            sent = time.perf_counter()
            try:
                vectors = await target.call(documents[rows])
                outcome = Outcome(sent - t0, time.perf_counter() - sent, 200)
                target.min_cosine = min(target.min_cosine, parity(vectors, reference[rows]))
            except Exception as exc:  # noqa: BLE001 - a failure is counted, the run goes on
                outcome = Outcome(sent - t0, time.perf_counter() - sent, f"{type(exc).__name__}: {exc}"[:120])
            recorder.outcomes.append(outcome)
        return send

    log("served warm-up: 5 s each")
    for target in targets:
        await closed_loop(send_to(target, Recorder({})), 2, 5, chunks)
    results = {t.label: {"rounds": []} for t in targets}
    for round_index in range(args.served_rounds):
        shift = round_index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            await asyncio.sleep(SETTLE_S)
            summary = await measure_saturation(partial(send_to, target), {}, args.clients, args.served_seconds, chunks)
            summary["docs_per_s"] = summary.pop("rps") * per_request
            results[target.label]["rounds"].append(summary)
            log(f"served round {round_index + 1} {target.label}: {summary['docs_per_s']:.2f} docs/s, "
                f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, failed {summary['requests'] - summary['ok']}")
    for target in targets:
        results[target.label].update(min_cosine=target.min_cosine, gate=target.gate)
    return results


def serve_and_measure(paths: dict, documents: list[str], reference: np.ndarray, args, errors: dict) -> dict:
    import aiohttp
    import tritonclient.grpc.aio as grpc_aio

    work = args.work
    stacks, infinity = {}, None
    try:
        for precision in ("fp32", "int8"):
            repo = work / f"models-{precision}"
            write_repository(paths[f"onnx-{precision}"], repo,
                             TritonOptions(verify="none", force=True, intra_op_threads=2), log=log)
            stacks[precision] = ServingStack(repo, work, MODEL, None)
            stacks[precision].gateway.extra_args = []  # its own defaults (queue, upstream timeout), as users run it
            stacks[precision].gateway.log_path = work / f"gateway-{precision}.log"
            stacks[precision].triton.log_path = work / f"triton-{precision}.log"
            stacks[precision].start()
        try:
            infinity = InfinityServer(venv=args.peers_venv, model_dir=paths["merged"], port=free_ports(1)[0],
                                      log_path=work / "infinity.log").start(timeout=300)
        except Exception as exc:  # noqa: BLE001 - the project's targets are still measured
            errors[INFINITY] = f"{type(exc).__name__}: {exc} (see {work / 'infinity.log'})"
            log(f"infinity: {errors[INFINITY]}")
            infinity = None

        async def measure() -> dict:
            clients = {p: grpc_aio.InferenceServerClient(s.triton.grpc_url) for p, s in stacks.items()}
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=120)) as session:
                targets = served_targets(session, clients, {p: s.gateway_url for p, s in stacks.items()},
                                         infinity.base_url if infinity else None)
                results = await run_served(targets, documents, reference, args)
            for client in clients.values():
                await client.close()
            return results

        return asyncio.run(measure())
    finally:
        if infinity:
            infinity.stop()
        for stack in stacks.values():
            stack.stop()


# -- the run ---------------------------------------------------------------------------------------

def prepare(work: Path, size: str) -> dict:
    """The example, its merge, fp32 and int8 ONNX under `work` (each kept when present)."""
    onnx_fp32 = build_onnx_artifact(work, log, size=size)
    onnx_int8 = work / "onnx-int8"
    if not (onnx_int8 / ONNX_FILE).is_file():
        export_onnx(work / "merged", onnx_int8, options=OnnxOptions(precision="int8", force=True, log=log))
    return {"example": work / "example", "merged": work / "merged", "onnx-fp32": onnx_fp32, "onnx-int8": onnx_int8}


def padding(lengths: list[int]) -> dict:
    """Token slots each batching computes over the real tokens: what padding is left to win."""
    order = np.argsort(-np.asarray(lengths), kind="stable").tolist()
    sorted_32 = [order[i:i + 32] for i in range(0, len(order), 32)]
    real = sum(lengths)
    return {"real_tokens": int(real),
            "sentence-transformers (length-sorted batches of 32)": padded_tokens(sorted_32, lengths) / real,
            "token budget (onnx:, torch: on cpu)":
                padded_tokens(SERVING_BUDGETS["cpu"].batches(lengths), lengths) / real,
            "packed (engine:)": 1.0}


def peer_versions(python: Path) -> dict:
    code = ("import json, importlib.metadata as m\nout = {}\nfor n in %r:\n    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\nprint(json.dumps(out))" % (PEER_VERSIONS,))
    return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout)


def best_round(rows: list[dict], key: str, highest: bool = True) -> dict:
    return (max if highest else min)(rows, key=lambda r: r[key])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, required=True, help="BEIR directory whose passages are embedded")
    parser.add_argument("--size", choices=["tiny", "small", "full"], default="small", help="example shape")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default build/peers-SIZE)")
    parser.add_argument("--peers-venv", type=Path, default=ROOT / ".venv-peers",
                        help="the peer virtualenv bench/setup_peers.sh made")
    parser.add_argument("--limit", type=int, default=0, help="first N passages (0: all)")
    parser.add_argument("--queries", type=int, default=50, help="batch-1 queries timed per round")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved in-process rounds")
    parser.add_argument("--served-rounds", type=int, default=2)
    parser.add_argument("--served-seconds", type=float, default=30, help="closed loop per served target per round")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--docs-per-request", type=int, default=8)
    parser.add_argument("--no-served", action="store_true", help="in-process contenders only")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.work = args.work or ROOT / "build" / f"peers-{args.size}"
    python = args.peers_venv / "bin" / "python"
    if not python.is_file():
        parser.error(f"no peer virtualenv at {args.peers_venv}: run bench/setup_peers.sh {args.peers_venv}")
    out = args.out or default_results_dir("peers")
    machine = machine_description()
    started = time.perf_counter()

    paths = prepare(args.work, args.size)
    dataset = load_beir(args.dataset)
    documents = dataset.documents()[:args.limit or None]
    queries = dataset.query_texts[:args.queries]
    texts_file = args.work / "peer-texts.json"
    texts_file.write_text(json.dumps({"documents": documents, "queries": queries}, ensure_ascii=False))
    texts = {"documents": documents, "queries": queries}
    log(f"{len(documents)} passages, {len(queries)} queries; reference (fp32 PEFT)")
    ref_docs, ref_queries = reference_vectors(paths["example"] / "base", paths["example"] / "adapter", documents,
                                              queries, args.work)

    errors: dict[str, str] = {}
    contenders = []
    project_specs = {"torch": f"torch:{paths['merged']}", "onnx-fp32": f"onnx:{paths['onnx-fp32']}",
                     "onnx-int8": f"onnx:{paths['onnx-int8']}", "engine": f"engine:{paths['merged']}?device=cpu"}
    for label in PEERS:
        try:
            contenders.append(PeerContender(label, python, paths["merged"], texts_file, args.work))
        except Exception as exc:  # noqa: BLE001 - a peer that cannot run this model is a finding
            errors[label] = str(exc)
        log(f"{label}: " + (errors.get(label) or f"loaded in {contenders[-1].load_s:.1f} s"))
    for label, spec in project_specs.items():
        contenders.append(ProjectContender(label, spec, texts))
        log(f"{label}: loaded in {contenders[-1].load_s:.1f} s")

    measured = run_in_process(contenders, args.rounds, len(queries))
    in_process = {}
    for contender in contenders:
        m = measured[contender.label]
        best = best_round(m["rounds"], "docs_per_s")
        fastest_queries = best_round(m["rounds"], "query_p50_ms", highest=False)
        docs_cos, query_cos = parity(m["vectors"], ref_docs), parity(m["query_vectors"], ref_queries)
        in_process[contender.label] = {
            "peer": contender.label in PEERS, "spec": getattr(contender, "spec", None),
            "docs_per_s": best["docs_per_s"], "query_p50_ms": fastest_queries["query_p50_ms"],
            "query_p99_ms": fastest_queries["query_p99_ms"], "rounds": m["rounds"], "load_s": contender.load_s,
            "min_cosine_documents": docs_cos, "min_cosine_queries": query_cos, "gate": contender.gate.to_dict(),
            "zero_vectors": zero_vectors(m["vectors"]) + zero_vectors(m["query_vectors"]),
            "parity_holds": min(docs_cos, query_cos) >= contender.gate.min_cosine}
        contender.close()
    del contenders, measured
    gc.collect()

    served = {}
    if not args.no_served:
        served_raw = serve_and_measure(paths, documents, ref_docs, args, errors)
        for label, m in served_raw.items():
            best = best_round(m["rounds"], "docs_per_s")
            served[label] = {"docs_per_s": best["docs_per_s"], "p50_ms": best["p50_ms"], "p99_ms": best["p99_ms"],
                             "failed": sum(r["requests"] - r["ok"] for r in m["rounds"]), "rounds": m["rounds"],
                             "min_cosine": m["min_cosine"], "gate": m["gate"].to_dict(),
                             "parity_holds": m["min_cosine"] >= m["gate"].min_cosine}

    tokenizer = load_embedder(project_specs["onnx-fp32"], admission="skip").tokenizer
    lengths = tokenizer.encode(documents, "document").lengths
    results = {
        "benchmark": "the project's CPU paths vs sentence-transformers and Infinity on the same merged model",
        "date": dt.date.today().isoformat(), "machine": machine, "peer_versions": peer_versions(python),
        "load_average_end": list(os.getloadavg()), "wall_s": round(time.perf_counter() - started, 1),
        "model": {"size": args.size, **{k: str(v) for k, v in paths.items()}},
        "dataset": {"path": str(args.dataset), "documents": len(documents), "queries": len(queries),
                    "mean_tokens": float(np.mean(lengths)), "max_tokens": int(np.max(lengths)),
                    "padded_over_real_tokens": padding(list(lengths))},
        "settings": {"rounds": args.rounds, "served_rounds": args.served_rounds,
                     "served_seconds": args.served_seconds, "clients": args.clients,
                     "docs_per_request": args.docs_per_request,
                     "st_batch_size": 32, "project_batching": "each Embedder's default (token budget per device)",
                     "triton": "moai-export triton defaults, --intra-op-threads 2; gateway defaults"},
        "in_process": in_process, "served": served, "errors": errors, "notes": NOTES,
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }
    results["targets"] = judge_targets(in_process, served)
    out.mkdir(parents=True, exist_ok=True)
    (out / "peers.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "peers.md").write_text(markdown(results))
    print(markdown(results))
    return 0


# -- the report ------------------------------------------------------------------------------------

def judge_targets(in_process: dict, served: dict) -> list[dict]:
    """The issue's targets, each with the figure that meets it or not (ratios within this run)."""
    # a contender that fails its gate is no answer, however fast: peers and project alike
    peers = {k: v for k, v in in_process.items() if v["peer"] and v["parity_holds"]}
    project = {k: v for k, v in in_process.items() if not v["peer"] and v["parity_holds"]}
    if PLAIN not in peers or not project:
        return []
    plain = peers[PLAIN]["docs_per_s"]
    best_label = max(project, key=lambda k: project[k]["docs_per_s"])
    best = project[best_label]["docs_per_s"]
    peer_label = max(peers, key=lambda k: peers[k]["docs_per_s"])
    slowest = min(project, key=lambda k: project[k]["docs_per_s"])
    query_peer = min(peers, key=lambda k: peers[k]["query_p50_ms"])
    query_ours = min(project, key=lambda k: project[k]["query_p50_ms"])
    rows = [
        ("best in-process path >= 2.5x plain sentence-transformers fp32",
         f"{best_label} {best / plain:.2f}x", best / plain >= 2.5),
        ("best in-process path >= 1.5x the best in-process peer",
         f"{best_label} {best / peers[peer_label]['docs_per_s']:.2f}x {peer_label}",
         best / peers[peer_label]["docs_per_s"] >= 1.5),
        ("every project path >= 1.0x plain sentence-transformers",
         f"slowest: {slowest} {project[slowest]['docs_per_s'] / plain:.2f}x",
         project[slowest]["docs_per_s"] / plain >= 1.0),
        ("batch-1 query p50 no worse than the best peer",
         f"{query_ours} {project[query_ours]['query_p50_ms']:.1f} ms vs {query_peer} "
         f"{peers[query_peer]['query_p50_ms']:.1f} ms",
         project[query_ours]["query_p50_ms"] <= peers[query_peer]["query_p50_ms"]),
    ]
    if INFINITY in served:
        infinity = served[INFINITY]
        # equal parity: fp32 against Infinity's fp32; int8 only holds the looser int8 gate, so it is its own row
        for label in ("gateway-fp32", "gateway-int8"):
            gateway = served.get(label)
            if gateway and gateway["parity_holds"]:
                ratio = gateway["docs_per_s"] / infinity["docs_per_s"]
                rows.append((f"served {label} -> Triton >= 1.5x Infinity"
                             + (" at equal parity" if label.endswith("fp32") else " (int8 gate)"),
                             f"{ratio:.2f}x (min cos {gateway['min_cosine']:.6f} vs {infinity['min_cosine']:.6f})",
                             ratio >= 1.5))
        rows.append(("best in-process path >= 1.5x Infinity (served, 8 clients)",
                     f"{best_label} {best / infinity['docs_per_s']:.2f}x", best / infinity["docs_per_s"] >= 1.5))
    return [{"target": t, "figure": f, "met": bool(m)} for t, f, m in rows]


def markdown(r: dict) -> str:
    m, d = r["machine"], r["dataset"]
    ip, served = r["in_process"], r["served"]
    plain = ip.get(PLAIN, {}).get("docs_per_s")
    best_peer = max((v["docs_per_s"] for v in ip.values() if v["peer"] and v["parity_holds"]), default=None)
    lines = [f"# Peers on CPU: {r['model']['size']} example, {d['documents']} passages", "",
             f"{m['summary']}; load average {', '.join(f'{x:.2f}' for x in m['load_average_at_start'])} at the "
             f"start, {', '.join(f'{x:.2f}' for x in r['load_average_end'])} at the end; wall {r['wall_s']:.0f} s.",
             f"Passages: mean {d['mean_tokens']:.0f} tokens, max {d['max_tokens']}; {d['queries']} batch-1 queries. "
             f"Best of {r['settings']['rounds']} interleaved rounds (served: {r['settings']['served_rounds']} rounds "
             f"x {r['settings']['served_seconds']:.0f} s, {r['settings']['clients']} clients x "
             f"{r['settings']['docs_per_request']} passages a request). Ratios hold within this run only.", "",
             "Project: " + ", ".join(f"{k} {v}" for k, v in m["packages"].items()),
             "Peers: " + ", ".join(f"{k} {v}" for k, v in r["peer_versions"].items()), "",
             "## In-process", "",
             "| contender | docs/s | vs st fp32 | vs best peer | query p50 ms | p99 ms "
             "| min cos docs / queries | gate |",
             "|---|---|---|---|---|---|---|---|"]
    for label, v in ip.items():
        lines.append(f"| {label}{' (peer)' if v['peer'] else ''} | {v['docs_per_s']:.2f} | "
                     f"{v['docs_per_s'] / plain:.2f}x | {v['docs_per_s'] / best_peer:.2f}x | {v['query_p50_ms']:.1f} | "
                     f"{v['query_p99_ms']:.1f} | {v['min_cosine_documents']:.6f} / {v['min_cosine_queries']:.6f} | "
                     f"{'holds' if v['parity_holds'] else 'FAILS'} ({v['gate']['min_cosine']})"
                     + (f", {v['zero_vectors']} zero vectors" if v["zero_vectors"] else "") + " |")
    lines += ["", "vs best peer: the fastest peer that holds its gate. Only contenders that hold their gate count "
              "in the targets below."]
    if served:
        base = served.get(INFINITY, {}).get("docs_per_s")
        lines += ["", "## Served", "", "| target | docs/s | vs Infinity | p50 ms | p99 ms | failed | min cos | gate |",
                  "|---|---|---|---|---|---|---|---|"]
        for label, v in served.items():
            ratio = f"{v['docs_per_s'] / base:.2f}x" if base else "-"
            lines.append(f"| {label} | {v['docs_per_s']:.2f} | {ratio} | {v['p50_ms']} | {v['p99_ms']} | {v['failed']} "
                         f"| {v['min_cosine']:.6f} | {'holds' if v['parity_holds'] else 'FAILS'} "
                         f"({v['gate']['min_cosine']}) |")
    if r["targets"]:
        lines += ["", "## Targets", "", "| target | this run | met |", "|---|---|---|"]
        lines += [f"| {t['target']} | {t['figure']} | {'met' if t['met'] else '**not met**'} |" for t in r["targets"]]
    pad = d.get("padded_over_real_tokens")
    if pad:
        lines += ["", "Token slots computed per real token on these passages: " + ", ".join(
            f"{k} {v:.3f}x" for k, v in pad.items() if k != "real_tokens") + "."]
    if r.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {note}" for note in r["notes"]]
    if r["errors"]:
        lines += ["", "## Could not run", ""] + [f"- {k}: {v}" for k, v in r["errors"].items()]
    lines += ["", f"Command: `{r['command']}`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
