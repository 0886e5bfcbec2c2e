"""Before any shard is embedded: can every Ray node that may run a worker read what the job reads
and write where it writes?

On a cluster the artifact, the corpus and the output must be on paths every node sees (a shared
filesystem) or URIs pyarrow reads. A node that sees another copy of the artifact (a stale
directory under the same path) would embed with other weights, so the check compares the bytes
of the artifact's manifest (its sha256 covers every file it ships), not just that a path exists.
One zero-CPU task per node, pinned to it, reports what it cannot see; the job refuses, naming
each node and what it lacks. On the embedded local Ray this is the one machine, checked the same way.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from ..core.errors import MoaiError


def check_nodes(ray, manifest: Path, manifest_sha256: str, files: list[str], out: Path) -> int:
    """Raise naming every node that cannot read `manifest` (with this sha256) and the local corpus
    `files`, or write into `out`; returns the number of nodes checked."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    probe = ray.remote(num_cpus=0)(_what_this_node_lacks)
    answers = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                       .remote(str(manifest), manifest_sha256, files, str(out)) for n in nodes])
    lacking = [f"{host}: {'; '.join(problems)}" for host, problems in answers if problems]
    if lacking:
        raise MoaiError("not every Ray node sees the job's files (put the artifact, the corpus and --out on a "
                        "path every node shares, or the corpus at a URI): " + " | ".join(lacking))
    return len(nodes)


def _what_this_node_lacks(manifest: str, manifest_sha256: str, files: list[str], out: str) -> tuple[str, list[str]]:
    from ..artifacts.admission import sha256_file
    from .corpus import is_uri

    problems = []
    if not Path(manifest).is_file():
        problems.append(f"no artifact at {Path(manifest).parent}")
    elif sha256_file(Path(manifest)) != manifest_sha256:
        problems.append(f"another artifact at {Path(manifest).parent} (its manifest's sha256 differs)")
    missing = [f for f in files if not is_uri(f) and not Path(f).is_file()]
    if missing:
        problems.append(f"{len(missing)} corpus file(s) missing, e.g. {missing[0]}")
    probe = Path(out) / f".write-check-{socket.gethostname()}-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        problems.append(f"cannot write into {out} ({exc.strerror})")
    return socket.gethostname(), problems
