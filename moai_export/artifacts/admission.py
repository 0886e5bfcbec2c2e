"""Which serving configurations an artifact was verified in, and the check that refuses others.

Every artifact's manifest (`moai_manifest.json`) lists the files it ships with their hashes and,
under `admitted_for`, each configuration a parity gate passed in: runtime, device, compute
dtype/precision and provider, with the tool versions and the gate's figures. An Embedder or a
launcher states the configuration it is about to serve and calls `require_admitted`: a
configuration that was never gated (bf16 on a GPU when only float32 on CPU was checked) is
refused with the command that admits it; a shipped file changed since the gate is refused too.

Standard library only: the launchers import it without torch.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from ..core.errors import MoaiError
from ..model_files.triton_config import REPOSITORY_ID_PARAMETER, read_model_config

MANIFEST_FILE = "moai_manifest.json"
# Stages whose artifacts are published by a parity gate (an example base is not).
GATED_STAGES = ("merge", "onnx", "vllm", "triton")
# How a loader treats a configuration that was not admitted: refuse it, serve it with a loud
# warning (--allow-unverified, benchmarks), or not look (a gate verifying the candidate itself).
ADMISSION_MODES = ("require", "warn", "skip")
# Files up to this size are re-hashed at every load; larger ones (weights) are checked by size
# (hashing a 2.4 GB graph at every start would cost seconds).
REHASH_BELOW = 64 << 20


class NotAdmitted(MoaiError):
    """A configuration that no gate admitted, or files changed since one did."""


@dataclass(frozen=True)
class ServingConfig:
    runtime: str  # the word of the kind that serves it (kinds.Kind.runtime)
    device: str = "cpu"  # cpu | cuda
    dtype: str = "fp32"  # the compute precision: fp32 | bf16 | fp16 | int8
    provider: str = ""  # onnxruntime execution provider, Triton encoder kind, vLLM route ...

    def matches(self, entry: dict) -> bool:
        return all(entry.get(k, "") == v for k, v in asdict(self).items())

    def describe(self) -> str:
        extra = f", {self.provider}" if self.provider else ""
        return f"{self.runtime} on {self.device} in {self.dtype}{extra}"


def read_manifest(directory: Path) -> dict | None:
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NotAdmitted(f"{path}: unreadable manifest ({exc})") from None


def sha256_file(path: Path) -> str:
    """The file's sha256, read in 4 MiB blocks (weight files are gigabytes): the one hasher of
    manifests and provenance records."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    return {"sha256": sha256_file(path), "bytes": Path(path).stat().st_size}


def shipped_files(directory: Path) -> dict[str, dict]:
    """{relative path: {sha256, bytes}} of every file under `directory` but the manifest."""
    directory = Path(directory)
    return {
        path.relative_to(directory).as_posix(): file_record(path)
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != MANIFEST_FILE
    }


def changed_files(directory: Path, manifest: dict, *, full: bool = False) -> list[str]:
    """Shipped files that differ from the manifest (missing, resized, or re-hashed and different).
    Loaders check every size but re-hash only files under REHASH_BELOW at each start (hashing a
    2.4 GB graph would cost seconds every time); `full` re-hashes every file, as a command that
    derives a new artifact, or admits one, must: what it passes on is every byte."""
    directory = Path(directory) / manifest.get("files_root", ".")  # a Triton ensemble covers its repository
    problems = []
    for name, record in (manifest.get("files") or {}).items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif path.stat().st_size != record["bytes"]:
            problems.append(f"{name} changed size")
        elif (full or record["bytes"] < REHASH_BELOW) and file_record(path)["sha256"] != record["sha256"]:
            problems.append(f"{name} changed")
    return problems


def admission_entry(config: ServingConfig, *, gate: dict, reference: str, versions: dict) -> dict:
    return {
        **asdict(config),
        "verified": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "reference": reference,
        "gate": gate,
        "versions": versions,
    }


def record_admission(directory: Path, entry: dict) -> None:
    """Add (or replace) one admitted configuration in an existing manifest, atomically."""
    path = Path(directory) / MANIFEST_FILE
    manifest = read_manifest(directory)
    if manifest is None:
        raise NotAdmitted(f"{directory}: no {MANIFEST_FILE}; only artifacts written by moai-export can be admitted")
    key = {k: entry.get(k, "") for k in ("runtime", "device", "dtype", "provider")}
    kept = [e for e in manifest.get("admitted_for", []) if {k: e.get(k, "") for k in key} != key]
    manifest["admitted_for"] = kept + [entry]
    manifest.pop("unverified", None)  # a gate against a reference has now passed in this configuration
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def admission_mode(admission: str = "require", allow_unverified: bool = False) -> str:
    if admission not in ADMISSION_MODES:
        raise NotAdmitted(f"unknown admission mode {admission!r}: expected one of {', '.join(ADMISSION_MODES)}")
    return "warn" if allow_unverified and admission == "require" else admission


def require_admitted(directory: Path, config: ServingConfig, *, mode: str = "require",
                     spec: str | None = None) -> None:
    """Refuse to serve `directory` in `config` unless a gate admitted exactly that, and its
    shipped files are the ones gated. A directory without a gated manifest is not an artifact of
    this toolkit (a hub model, a hand-made merge, the example's base): nothing is claimed, so
    there is nothing to check."""
    if mode == "skip":
        return
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("stage") not in GATED_STAGES:
        return
    problems = []
    changed = changed_files(directory, manifest)
    if changed:
        problems.append(f"files changed since verification: {', '.join(changed[:5])}")
    admitted = manifest.get("admitted_for") or []
    if manifest.get("unverified"):
        problems.append(f"derived from an unverified input ({manifest['unverified']})")
    elif not any(config.matches(entry) for entry in admitted):
        known = "; ".join(ServingConfig(**{k: e.get(k, "") for k in ("runtime", "device", "dtype", "provider")})
                          .describe() for e in admitted) or "none"
        problems.append(f"not verified for {config.describe()} (admitted: {known})")
    if not problems:
        return
    target = spec or str(directory)
    if changed:
        remedy = "re-export it (what was verified is not what is there now)"
    else:
        remedy = (f"verify it in this configuration on the machine that will serve it: moai-export verify "
                  f"'{target}' --reference BASE+ADAPTER (admits it when it passes)")
    message = f"{directory}: {'; '.join(problems)}. {remedy.capitalize()}, or pass --allow-unverified to serve it unverified"
    if mode == "require":
        raise NotAdmitted(message)
    print(f"WARNING: SERVING UNVERIFIED: {message}", file=sys.stderr, flush=True)


def repository_ensembles(repository: Path) -> list[str]:
    """Models of a repository that `moai-export triton` wrote (their ensembles carry a manifest)."""
    return sorted(p.parent.name for p in Path(repository).glob(f"*/{MANIFEST_FILE}")
                  if (read_manifest(p.parent) or {}).get("stage") == "triton")


def repository_id(ensemble_dir: Path) -> str | None:
    """The id `moai-export triton` writes into an ensemble's config.pbtxt (parameter
    `moai_repository_id`): it ties a running server to the files it serves."""
    return read_model_config(ensemble_dir).parameters.get(REPOSITORY_ID_PARAMETER)
