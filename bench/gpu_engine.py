"""The one device script of the packed engine: the engine against its peers on a GPU, in one run.

    python bench/gpu_engine.py --dataset .carry/autorag-ko --out "$OUT"              # H200, full size
    python bench/gpu_engine.py --size tiny --device cpu --dataset DIR --out /tmp/x    # proof that it runs

Steps (each recorded, and the report rewritten, as soon as it ends; a step that fails is recorded
with its error and the run goes on; steps that would pass --deadline are skipped, named):
  1. build the example (`moai-export example --size full`; an untrained random adapter if training
     fails there) and merge it (fp32 checkpoint);
  2. attention backends of the engine, eager, on a slice of the corpus (keep the fastest);
  3. the engine in bf16 as it serves (compile + CUDA graphs), warm-up timed, and its parity gate
     against the float32 PEFT reference (min cosine >= 0.999, top-10 >= 0.95) + batch independence;
     if it fails: compiled without CUDA graphs, then eager;
  4. corpus: every document in one call per target: the engine, then sentence-transformers bf16,
     `torch:` bf16 and sentence-transformers fp32 at batch 128; batch-1 query p50/p99 of each
     (the report is rewritten after each target);
  5. Triton on the GPU when a tritonserver is importable here (else the reason is recorded).
Writes OUT/gpu_engine.json and OUT/gpu_engine.md. Needs only torch, transformers, peft,
sentence-transformers (+ datasets to train the adapter) and the source tree (no click, no matplotlib).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from moai_export.benchmark.deadline import DeadlineRun  # noqa: E402
from moai_export.benchmark.result_json import json_ready, write_json  # noqa: E402
from moai_export.benchmark.targets import Target  # noqa: E402

ISSUE_TARGETS = {"engine_docs_per_s": 800.0, "engine_vs_st_bf16": 4.0, "engine_query_p50_ms": 3.0}


class Run(DeadlineRun):
    """The steps' record, rewritten as OUT/gpu_engine.json and .md after every step, plus what
    later steps take from earlier ones (the engine, the reference's figures)."""

    def __init__(self, out: Path, work: Path, deadline_s: float, settings: dict):
        out.mkdir(parents=True, exist_ok=True)
        self.out, self.work = out, work
        self.engine: Target | None = None
        self.reference = None  # parity.ReferenceFigures of the fp32 PEFT reference, once loaded
        super().__init__(deadline_s, {"settings": settings, "machine": machine()}, save=self.write)

    def write(self, data: dict) -> None:
        write_json(self.out / "gpu_engine.json", data)
        try:
            text = markdown(data)
        except Exception as exc:  # the JSON holds every figure; a table bug must not end the run
            text = f"markdown failed ({type(exc).__name__}: {exc}); see gpu_engine.json\n"
        (self.out / "gpu_engine.md").write_text(text)


def machine() -> dict:
    """The library's machine description, plus what torch.compile on a GPU needs besides torch
    (a C compiler for its launchers) and how this torch's varlen_attn is called."""
    from moai_export.evaluation.machine import machine_description

    info = machine_description()
    info["c_compiler"] = next((shutil.which(c) for c in (os.environ.get("CC"), "cc", "gcc") if c and shutil.which(c)), None)
    try:
        from moai_export.engine.attention import VARLEN_CALL

        info["varlen_call"] = repr(VARLEN_CALL)
    except Exception as exc:
        info["varlen_call"] = f"error ({type(exc).__name__}: {exc})"
    return info


def build(work: Path, size: str) -> dict:
    from moai_export.example import build_example
    from moai_export.export.merge import MergeOptions, merge

    t0 = time.monotonic()
    result: dict = {}
    if not (work / "example" / "adapter").is_dir():
        try:
            build_example(work / "example", size=size, seed=0, progress=False, force=True)
            result["adapter"] = "trained (moai-export example)"
        except Exception as exc:  # e.g. no `datasets` for the trainer: the speed does not need training
            traceback.print_exc()
            result["adapter"] = f"untrained, random LoRA weights: training failed ({type(exc).__name__}: {exc})"[:600]
            untrained_example(work / "example", size)
    built = time.monotonic() - t0
    if not (work / "merged" / "config.json").is_file():
        # the merge's own proof stays (merged vs PEFT reference); its second pass through plain
        # sentence-transformers is skipped to save device time: st-fp32 / st-bf16 load the same
        # directory in step 4, and the engine has its own gate in step 3
        merge(str(work / "example" / "base"), str(work / "example" / "adapter"), work / "merged",
              MergeOptions(log=lambda m: print(m, flush=True), force=True, check_sentence_transformers=False))
    return {"example_s": round(built, 1), "merge_s": round(time.monotonic() - t0 - built, 1), **result}


def untrained_example(out: Path, size: str) -> None:
    """The example's base and a LoRA adapter of the recipe's shape (TrainOptions' defaults: r 64,
    alpha 128, every projection) without training: B gets small random values (PEFT starts it at zero, which
    would make the adapter a no-op that the merge's proof rejects). Throughput and parity of
    the serving paths do not depend on what the adapter learned."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModel

    from moai_export.example.base_model import build_base
    from moai_export.train.options import TrainOptions
    from moai_export.train.recipe import lora_config

    if out.exists():
        shutil.rmtree(out)
    (out / "base").mkdir(parents=True)
    build_base(out / "base", size, 0)
    model = AutoModel.from_pretrained(str(out / "base"), dtype=torch.float32)
    recipe = TrainOptions(base=str(out / "base"), train=Path(), out=out)  # its defaults are the recipe
    adapted = get_peft_model(model, lora_config(recipe))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, weight in adapted.named_parameters():
            if "lora_B" in name:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 5e-3)
    adapted.save_pretrained(str(out / "adapter"))


def load(spec: str):
    from moai_export.embedders import load_embedder

    t0 = time.monotonic()
    embedder = load_embedder(spec, admission="skip")
    return embedder, time.monotonic() - t0


def attention_backends(merged: Path, device: str, dtype: str, documents: list[str]) -> dict:
    """Eager engine per attention backend on the same slice: docs/s (the fastest is kept).
    FlexAttention is left out: uncompiled it materializes every score (its compiled form is
    what `attention=flex&compile=true` measures)."""
    from moai_export.engine.attention import resolve_backend
    from moai_export.engine.embedder import DTYPES

    rows = {}
    for backend in ("varlen", "sdpa", "masked"):
        try:
            resolve_backend(backend, device, DTYPES[dtype])
        except Exception as exc:
            rows[backend] = {"error": str(exc)}
            continue
        spec = f"engine:{merged}?device={device}&dtype={dtype}&attention={backend}&max_batch_tokens=8192"
        try:
            embedder, _ = load(spec)
            with embedder:
                embedder.encode(documents[:8], "document")
                sync()
                t0 = time.perf_counter()
                embedder.encode(documents, "document")
                sync()
                rows[backend] = {"docs_per_s": len(documents) / (time.perf_counter() - t0)}
        except Exception as exc:
            rows[backend] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
    ok = {k: v["docs_per_s"] for k, v in rows.items() if "docs_per_s" in v}
    return {"documents": len(documents), "backends": rows, "fastest": max(ok, key=ok.get) if ok else None}


def engine_attention(step: dict | None, compiled: bool, on_gpu: bool) -> str:
    """The engine's backend from step 2: the fastest that ran, except that sdpa (a Python loop
    over documents) cannot be compiled: then varlen if it ran, else flex on a GPU / masked on CPU;
    `auto` if step 2 measured nothing."""
    rows = (step or {}).get("backends") or {}
    fastest = (step or {}).get("fastest")
    if not fastest:
        return "auto"
    if compiled and fastest == "sdpa":
        if "docs_per_s" in rows.get("varlen", {}):
            return "varlen"
        return "flex" if on_gpu else "masked"
    return fastest


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def sync_empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def engine_and_parity(run: Run, merged: Path, example: Path, device: str, spec: str) -> dict:
    """Load the engine as it serves (warm-up timed), gate it against the fp32 PEFT reference,
    and check that a text's vector does not depend on its batch."""
    from moai_export.embedders import load_embedder
    from moai_export.gates.parity import ReferenceFigures
    from moai_export.gates.table import gate_for

    embedder, load_s = load(spec)
    try:
        result = {"spec": spec, "load_s": load_s, "warmup_s": embedder.warmup_s, "attention": embedder.attention}
        print(f"engine loaded in {load_s:.1f} s (warm-up {embedder.warmup_s:.1f} s)", flush=True)
        if run.reference is None:  # the fp32 PEFT reference's figures, once for every engine tried
            with load_embedder(f"peft:{example / 'base'}+{example / 'adapter'}?device={device}",
                               name="reference") as ref:
                run.reference = ReferenceFigures(ref)
        gate = gate_for("engine", embedder.precision)
        report = run.reference.gate_with(embedder, gate)
        result["parity"] = {k: v for k, v in report.to_dict().items() if k != "probes"}
        texts = ["짧은 질문", "BC카드 연회비는 어떻게 되나요? " * 40, "a", "retrieval " * 300, "모아이 " * 7]
        together = embedder.encode(texts, "document")
        alone = np.concatenate([embedder.encode([t], "document") for t in texts])
        result["batch_independence_min_cosine"] = float((together * alone).sum(1).min())
    except BaseException:
        try:  # a fallback engine gets its memory (after a CUDA fault this can raise too)
            embedder.close()
            sync_empty_cache()
        except Exception:
            pass
        raise
    run.engine = Target.loaded("engine", spec, embedder, load_s)
    return result


def corpus(run: Run, merged: Path, device: str, dataset, documents_limit: int | None, queries: int) -> dict:
    """Each target in one call over the whole corpus (st and torch at batch 128, the engine by its
    own budget), then batch-1 queries. The engine goes first and st-fp32 (the slowest, least
    needed) last; each target's row is in the report as soon as it is measured (a kill or a
    later failure keeps it), a failing target is recorded and the rest go on, and a target
    that would pass --deadline is skipped by name."""
    import torch

    from moai_export.benchmark.corpus import run_corpus
    from moai_export.embedders.sentence_transformers import SentenceTransformerEmbedder

    result: dict = {}
    run.data["steps"]["corpus"] = result  # partial until the step ends (then it gets its seconds)
    rows = result.setdefault("targets", [])

    def measure(make, batch_size):
        t0 = time.monotonic()
        label, spec, embedder = make()
        tgt = Target.loaded(label, spec, embedder, time.monotonic() - t0)
        part: dict = {}
        try:
            run_corpus([tgt], dataset, part, batch_size=batch_size, limit=documents_limit, queries=queries,
                       log=lambda m: print(m, flush=True))
        finally:
            embedder.close()  # the engine too: nothing after its row needs it
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        rows.extend(part["targets"])
        result.update({k: v for k, v in part.items() if k != "targets"})

    def st(dtype):
        embedder = SentenceTransformerEmbedder(merged, device=device, name=f"st-{dtype}", admission="skip")
        if dtype == "bf16":
            embedder.model.to(torch.bfloat16)
            embedder.precision = "bf16"
        return f"st-{dtype}", f"st:{merged}?device={device}", embedder

    def torch_spec(dtype):
        spec = f"torch:{merged}?device={device}&dtype={dtype}"
        return f"torch-{dtype}", spec, load(spec)[0]

    plan = []  # (label, make, batch size, seconds it needs at least)
    if run.engine is not None:
        plan.append(("engine", lambda: ("engine", run.engine.spec, run.engine.embedder), None, 20))
    if device == "cpu":  # the CPU side-by-side: fp32 only
        plan.append(("torch-fp32", lambda: torch_spec("fp32"), 32, 30))
    else:
        plan += [("st-bf16", lambda: st("bf16"), 128, 30), ("torch-bf16", lambda: torch_spec("bf16"), 128, 30),
                 ("st-fp32", lambda: st("fp32"), 128, 45)]
    for label, make, batch_size, needs_s in plan:
        if not run.fits(f"corpus {label}", needs_s):
            continue
        try:
            measure(make, batch_size)
        except Exception as exc:
            run.record_error(f"corpus {label}", exc)
        finally:
            summarize(result)
            run.save()
    return result


def summarize(result: dict) -> None:
    """The issue's targets from the rows measured so far."""
    by = {r["target"]: r for r in result.get("targets", [])}
    engine, st_bf16 = by.get("engine"), by.get("st-bf16")
    result["issue_targets"] = {
        "engine_docs_per_s": engine and engine["docs_per_s"],
        "engine_vs_st_bf16": engine and st_bf16 and engine["docs_per_s"] / st_bf16["docs_per_s"],
        "engine_query_p50_ms": engine and engine["query_p50_ms"],
        "wanted": ISSUE_TARGETS,
    }


def triton_on_gpu(run: Run, merged: Path, device: str, dataset, documents_limit: int | None, queries: int) -> dict:
    """Triton on this machine's GPU when the nvidia-pytriton wheel travelled
    (`bench/prepare_gpu_carry.sh --triton`): the engine encoder model that `moai-export triton
    --encoder engine --engine-device cuda` writes, loaded ALONE and sent token rows over HTTP
    (the client tokenizes with the contract). The ensemble's tokenizer model cannot run there:
    the wheel's python-backend stub is built against numpy 1, the image has numpy 2, and a BYTES
    input then crashes the stub (deserialize_bytes_tensor; reproduced on CPU with the stub in a
    numpy 2 environment). The engine model passes tensors by DLPack and is not affected.
    Parity against the fp32 PEFT reference, the corpus in requests of the model's batch size,
    batch-1 query p50/p99, all over HTTP with binary tensors."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")  # located, not imported: its client needs more packages
    server_dir = Path(spec.origin).parent / "tritonserver" if spec and spec.origin else None
    if server_dir is None or not (server_dir / "bin" / "tritonserver").is_file():
        return {"measured": False, "reason": "no tritonserver on this machine (nvidia-pytriton not installed); "
                                             "carry its wheel with bench/prepare_gpu_carry.sh --triton"}
    from moai_export.benchmark.corpus import run_corpus
    from moai_export.embedders.triton_encoder import TritonEncoderEmbedder
    from moai_export.export.triton import TritonOptions, write_repository
    from moai_export.gates.table import gate_for
    from moai_export.launchers.triton_server import TritonServer, free_ports
    from moai_export.model_files.contract_tokenizer import ContractTokenizer
    from moai_export.model_files.model_contract import read_contract

    os.environ["MOAI_TRITONSERVER_DIR"] = str(server_dir)
    options = TritonOptions(encoder="engine", engine_device="cuda" if device.startswith("cuda") else "cpu",
                            max_batch_size=64, verify="none", force=True)  # eager engine: no second compile
    repo = run.work / "triton_models"
    write_repository(merged, repo, options, log=lambda m: print(m, flush=True))
    encoder = options.model_names()["encoder"]
    server = TritonServer(repo, *free_ports(3), log_path=run.out / "triton.log",
                          extra_args=["--model-control-mode=explicit", f"--load-model={encoder}"])
    t0 = time.monotonic()
    server.start(timeout=max(30.0, min(240.0, run.left() - 30)))
    result: dict = {"measured": True, "model": encoder, "start_s": round(time.monotonic() - t0, 1),
                    "note": "encoder model alone (client-side tokenization); eager engine in the python backend"}
    run.data["steps"]["triton"] = result
    contract = read_contract(merged)
    try:
        embedder = TritonEncoderEmbedder(server.http_url, encoder, contract, ContractTokenizer.from_dir(merged, contract),
                                         max_batch_size=options.max_batch_size, name="triton-engine",
                                         precision="bf16" if device.startswith("cuda") else "fp32")
        if run.reference is not None:
            report = run.reference.gate_with(embedder, gate_for("triton", embedder.precision))
            result["parity"] = {k: v for k, v in report.to_dict().items() if k != "probes"}
        part: dict = {}
        run_corpus([Target.loaded("triton-engine", f"http://{server.http_url}/v2/models/{encoder}", embedder, result["start_s"])],
                   dataset, part, batch_size=options.max_batch_size, limit=documents_limit, queries=queries,
                   log=lambda m: print(m, flush=True))
        result["corpus"] = part["targets"][0]
    finally:
        server.stop()
    return result


def markdown(data: dict) -> str:
    lines = ["# GPU engine run (bench/gpu_engine.py)", "", f"- machine: `{json.dumps(data['machine'])}`",
             f"- settings: `{json.dumps(data['settings'])}`", ""]
    steps = data["steps"]
    if "attention" in steps:
        lines += ["## Attention backends (eager engine, same slice)", "", "| backend | docs/s | note |", "|---|---|---|"]
        for name, row in steps["attention"]["backends"].items():
            lines.append(f"| {name} | {row.get('docs_per_s', 0):.1f} | {row.get('error', '')[:120]} |")
        lines += [f"\nfastest: {steps['attention']['fastest']}", ""]
    for name in ("engine", "engine_no_cuda_graphs", "engine_eager"):
        if name not in steps:
            continue
        e = steps[name]
        p = e["parity"]
        lines += [f"## Engine parity vs float32 PEFT reference (step {name})", "",
                  f"- spec `{e['spec']}`, attention {e['attention']}, load {e['load_s']:.1f} s, "
                  f"warm-up (compile) {e['warmup_s']:.1f} s",
                  f"- gate {'PASS' if p['passed'] else 'FAIL'}: min cosine {p.get('min_cosine')}, "
                  f"top-10 {p.get('rank_agreement_top10')}; failures: {p['failures'][:3]}",
                  f"- batch independence (alone vs packed): min cosine {e['batch_independence_min_cosine']:.6f}", ""]
    if "corpus" in steps and steps["corpus"].get("targets"):
        c = steps["corpus"]
        lines += ["## Corpus: every document in one call per target, then batch-1 queries", "",
                  f"{c.get('dataset')}; MFU over {c.get('peak_tflops')} TFLOP/s ({c.get('peak_source')})", "",
                  "| target | precision | batch | docs/s | real tokens/s | MFU | peak GPU GiB | warm-up s | "
                  "query p50 ms | query p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in c["targets"]:
            mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
            gib = f"{r['peak_gpu_gib']:.2f}" if r.get("peak_gpu_gib") is not None else "-"
            warm = f"{r['warmup_s']:.1f}" if r.get("warmup_s") is not None else "-"
            lines.append(f"| {r['target']} | {r['precision']} | {r.get('batch_size') or 'own'} | {r['docs_per_s']:.1f} | "
                         f"{r['real_tokens_per_s']:.0f} | {mfu} | {gib} | {warm} | {r['query_p50_ms']:.2f} | "
                         f"{r['query_p99_ms']:.2f} |")
        lines += ["", f"issue targets: `{json.dumps(json_ready(c.get('issue_targets', {})))}`", ""]
    if "triton" in steps:
        t = steps["triton"]
        lines += ["## Triton on the GPU (engine encoder model, HTTP binary tensors)", ""]
        if not t.get("measured"):
            lines += [f"not measured: {t.get('reason')}", ""]
        else:
            p, c = t.get("parity") or {}, t.get("corpus") or {}
            lines += [f"- {t['note']}; server start {t['start_s']} s",
                      f"- gate {'PASS' if p.get('passed') else 'FAIL' if p else '-'}: min cosine {p.get('min_cosine')}",
                      f"- corpus {c.get('docs_per_s', 0):.1f} docs/s in requests of 64; batch-1 query p50 "
                      f"{c.get('query_p50_ms', 0):.2f} ms, p99 {c.get('query_p99_ms', 0):.2f} ms (issue target p50 <= 6 ms)", ""]
    if data["errors"]:
        lines += ["## Errors", ""] + [f"- {k}: {v.splitlines()[0][:300]}" for k, v in data["errors"].items()] + [""]
    if data["skipped"]:
        lines += ["## Skipped (deadline)", ""] + [f"- {s}" for s in data["skipped"]] + [""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="full", choices=["tiny", "small", "full"])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dataset", type=Path, required=True, help="BEIR directory (autorag-ko).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/moai-gpu-engine"))
    parser.add_argument("--deadline", type=float, default=540.0, help="Seconds for the whole run.")
    parser.add_argument("--limit", type=int, default=None, help="Only the first N documents.")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--max-batch-tokens", type=int, default=32768)
    parser.add_argument("--compile", default="true", choices=["true", "false"])
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from moai_export.evaluation.beir import load_beir

    on_gpu = args.device.startswith("cuda")
    dtype = "bf16" if on_gpu else "fp32"
    run = Run(args.out, args.work, args.deadline, vars(args) | {"dataset": str(args.dataset), "out": str(args.out),
                                                                "work": str(args.work)})
    dataset = load_beir(args.dataset)
    documents = dataset.documents()[:args.limit]
    merged, example = args.work / "merged", args.work / "example"
    run.step("build", 150, lambda: build(args.work, args.size))
    run.step("attention", 120, lambda: attention_backends(merged, args.device, dtype, documents[:128]))
    compile_ = args.compile == "true"
    attention = engine_attention(run.data["steps"].get("attention"), compile_, on_gpu)
    base = (f"engine:{merged}?device={args.device}&dtype={dtype}&max_batch_tokens={args.max_batch_tokens}"
            f"&attention={attention}&compile_cache_dir={args.work / 'inductor'}")
    # The engine as it serves, then (each only if the one before failed, each recorded) the compiled
    # engine without CUDA graphs (graph trees are the least tried part), then the eager engine.
    tries = [("engine", f"{base}&compile={args.compile}", 200)]
    if compile_ and on_gpu:
        tries.append(("engine_no_cuda_graphs", f"{base}&compile=true&cuda_graphs=false", 200))
    if compile_:  # eager: the fastest backend of step 2 as it is (sdpa allowed)
        eager = engine_attention(run.data["steps"].get("attention"), False, on_gpu)
        tries.append(("engine_eager", f"{base.replace(f'attention={attention}', f'attention={eager}')}"
                                      "&compile=false", 90))
    for name, spec, needs_s in tries:
        if run.step(name, needs_s, lambda spec=spec: engine_and_parity(run, merged, example, args.device, spec)):
            break
    run.step("corpus", 60, lambda: corpus(run, merged, args.device, dataset, args.limit, args.queries))
    run.step("triton", 60, lambda: triton_on_gpu(run, merged, args.device, dataset, args.limit, args.queries))
    print(markdown(run.data), flush=True)
    return 0 if not run.data["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
