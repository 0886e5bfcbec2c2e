"""`moai-export triton`: write the three models for an artifact into a repository, verify the
repository on a real server, and publish it in one rename."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ...artifacts.admission import read_manifest
from ...artifacts.directories import atomic_output_dir, check_output_location, write_manifest
from ...core.errors import MoaiError
from ...embedders.base import Embedder
from ...embedders.onnx_runtime import ONNX_FILE
from ...gates.verification import GateRun, chain_of, copy_reference_vectors
from ...model_files.model_contract import read_contract
from ..exporter import admit, check_input, derived_reference_figures, load_candidate
from .files import link_tree, rewrite_manifest_files, write_models
from .options import TritonOptions, check_options, engine_options, served_precision, serving_config
from .remote import verify_remote


def write_repository(artifact: Path, repo: Path, options: TritonOptions | None = None, log=print, *,
                     reference: Embedder | None = None, reference_label: str | None = None) -> dict:
    """Write the three models for the ONNX `artifact` into `repo`, verify the repository on a real
    server (`options.verify`), and publish the whole repository in one rename (other models and
    other versions already there are kept)."""
    options = options or TritonOptions()
    artifact, repo = Path(artifact), Path(repo).absolute()
    check_options(options)
    if options.encoder == "engine" and not (artifact / "config.json").is_file():
        raise MoaiError(f"{artifact}: no config.json; --encoder engine takes a merged model (`moai-export merge`)")
    if options.encoder != "engine" and not (artifact / ONNX_FILE).is_file():
        raise MoaiError(f"{artifact}: no {ONNX_FILE}; pass a directory written by `moai-export onnx`")
    if repo.exists() and not repo.is_dir():
        raise MoaiError(f"cannot write {repo}: exists as a file, not a directory")
    check_output_location(repo)  # graphs are hard-linked when the file system allows
    contract = read_contract(artifact)
    provenance = check_input(artifact, allow_unverified=options.allow_unverified)
    names = options.model_names()
    version = str(options.version)
    for model in names.values():
        if (repo / model / version).exists() and not options.force:
            raise MoaiError(f"{repo / model / version} exists; pass --force to replace it, or --version N for a new version")
    source_manifest = read_manifest(artifact) or {}
    precision = served_precision(options, source_manifest.get("options", {}).get("precision", "fp32"))
    if options.verify == "local" and options.encoder == "engine" and options.engine_device == "cuda":
        from ...embedders.torch_model import check_device

        check_device("cuda")  # a GPU instance on a machine without one would never load
    elif options.verify == "local" and options.encoder == "onnxruntime":
        raise MoaiError("the local tritonserver has the python backend only: verify an --encoder onnxruntime "
                        "repository on the server that will run it (--verify-with grpc://HOST:PORT), or --no-verify")

    figures = None
    if options.verify != "none":
        # an unverified input is gated against itself as it serves: its graph, or the merged model in torch
        fallback = f"torch:{artifact}" if options.encoder == "engine" else f"onnx:{artifact}"
        figures, reference_label = derived_reference_figures(provenance, reference, reference_label,
                                                             fallback=fallback, log=log, timings={},
                                                             probes=options.probes)

    with atomic_output_dir(repo, force=True) as staging:
        if repo.is_dir():
            link_tree(repo, staging)  # the repository as it is: other models, other versions
        for model in names.values():
            shutil.rmtree(staging / model / version, ignore_errors=True)
        write_models(staging, artifact, contract, options, precision)
        inputs = {"artifact": str(artifact.resolve()), "artifact_files": source_manifest.get("files", {}),
                  "artifact_options": source_manifest.get("options", {})}
        manifest_options = {"encoder": options.encoder, "precision": precision, "max_batch_size": options.max_batch_size,
                            "max_queue_delay_us": options.max_queue_delay_us,
                            "preferred_batch_sizes": list(options.preferred_batch_sizes),
                            "instances": options.instances, "tensorrt": options.tensorrt,
                            "tensorrt_precision": options.tensorrt_precision if options.tensorrt else None,
                            "version": options.version, "models": names}
        if options.encoder == "engine":
            manifest_options["engine"] = {**engine_options(options), "device": options.engine_device,
                                          "env": options.engine_env or sys.prefix}
        ensemble_dir = staging / names["ensemble"]
        config = serving_config(options, precision)
        gate = options.overrides.apply("triton", precision)
        if options.verify == "local":
            log("verifying the repository on a real local tritonserver (free loopback ports): the probe set "
                "through the ensemble, as clients will send it")
            from ...embedders.triton import TritonRepositoryEmbedder

            with load_candidate(lambda: TritonRepositoryEmbedder(staging, names["ensemble"], admission="skip",
                                                                 name=f"triton ({options.encoder} encoder, "
                                                                      f"{precision})"), "triton") as candidate:
                report = figures.gate_with(candidate, gate)
            admit(ensemble_dir, [GateRun(report, gate, config)], stage="triton", what="triton repository",
                  source=None, parent=artifact, reference_label=reference_label, figures=figures,
                  fields={"precision": precision}, timings={}, log=log, manifest_options=manifest_options,
                  manifest_inputs=inputs, unverified=provenance.unverified)
            rewrite_manifest_files(staging, names)
        else:
            # what a deployment must answer, from the artifact's own record (`verify URL --expected`)
            copy_reference_vectors(artifact, ensemble_dir)
            write_manifest(ensemble_dir, stage="triton", inputs=inputs, options=manifest_options,
                           extra={"chain": chain_of(artifact, provenance.root_reference or reference_label or ""),
                                  **({"unverified": provenance.unverified} if provenance.unverified else {})})
            rewrite_manifest_files(staging, names)
            if options.verify == "none":
                log("warning: --no-verify: the repository was NOT run through a server; run_local.sh refuses it "
                    "until `moai-export verify triton:REPO` admits it (or --allow-unverified)")
    if options.verify.startswith(("grpc://", "http://")):
        verify_remote(repo, names["ensemble"], options.verify, figures, gate, config, reference_label, log,
                      wait_s=options.verify_wait_s, unverified=provenance.unverified)
    log(f"triton repository {repo}: {', '.join(names.values())} (encoder: {options.encoder}, {precision})")
    return {"repository": str(repo), "models": names, "dims": contract.dims, "encoder": options.encoder,
            "precision": precision, "verified": options.verify}
