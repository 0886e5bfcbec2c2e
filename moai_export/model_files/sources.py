"""Where a model comes from: a local directory, or a Hugging Face hub id downloaded once."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..core.errors import MoaiError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(spec: str) -> bool:
    return bool(_HUB_ID.match(spec)) and not spec.startswith((".", "/"))


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def resolve_model_dir(spec: str, what: str) -> Path:
    """A local directory for `spec` (`what` names it in errors: "base model", "adapter")."""
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir():
            raise MoaiError(f"{what} {spec}: is a file, expected a directory")
        return path.resolve()
    if not looks_like_hub_id(spec):
        raise MoaiError(f"{what} {spec}: no such directory")
    return _download(spec, what)


def _download(repo_id: str, what: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        # The local cache answers first; with HF_HUB_OFFLINE set it is the only place looked at.
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        pass
    if hub_offline():
        raise MoaiError(
            f"{what} {repo_id}: not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it where there is network or pass a local directory"
        )
    try:
        return Path(snapshot_download(repo_id))
    except Exception as exc:
        name = type(exc).__name__
        if "NotFound" in name or "RepositoryNotFound" in name or "401" in str(exc):
            raise MoaiError(f"{what} {repo_id}: no such repository on the hub (or it is private)") from None
        raise MoaiError(
            f"{what} {repo_id}: cannot download from the hub ({name}); are you offline? "
            "pass a local directory instead"
        ) from None
