"""The kustomize base and production overlay beyond the core schemas (test_deploy_files.py).

* The Prometheus Operator's ServiceMonitor and PrometheusRule are not in the Kubernetes
  schemas kubernetes-validate ships, and it has no support for custom resources: they are
  validated against the strict JSON schemas in ``tests/deploy/schemas/`` (written from the
  operator's CRD fields), and their contents against the rest of the manifests.
* The PrometheusRule's ``spec.groups`` must equal ``deploy/prometheus/rules.yml`` (the file
  promtool checks and unit-tests), in the source file and as rendered by each kustomization.
* The overlay keeps the base Deployment's settings (one worker per whole CPU, probes,
  non-root, read-only root filesystem, preStop, multiprocess metrics directory).
"""

from __future__ import annotations

import copy
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    K8S_BASE,
    K8S_PRODUCTION,
    KUSTOMIZATIONS,
    PROMETHEUS_DIR,
    REPO,
    RULES,
    argv,
    assert_success,
    container,
    load_yaml,
    module,
    one,
    rendered,
    run,
)

SCHEMAS = Path(__file__).parent / "schemas"
PROMETHEUSRULE_SOURCE = K8S_BASE / "prometheusrule.yaml"
RENDER_SCRIPT = PROMETHEUS_DIR / "render_prometheusrule.py"
IDS = [str(d.relative_to(REPO)) for d in KUSTOMIZATIONS]
CUSTOM_RESOURCES = {
    "ServiceMonitor": SCHEMAS / "servicemonitor.schema.json",
    "PrometheusRule": SCHEMAS / "prometheusrule.schema.json",
}
# What every scrape job of the service is called; the rules select job=~"segment-scoring.*".
JOB_PATTERN = r"segment-scoring.*"


def _validator(kind: str) -> Any:
    jsonschema = module("jsonschema", "pip install jsonschema (a kubernetes-validate dependency)")
    schema = json.loads(CUSTOM_RESOURCES[kind].read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _errors(kind: str, obj: dict[str, Any]) -> list[str]:
    return [
        f"{'.'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in _validator(kind).iter_errors(obj)
    ]


# --------------------------------------------------------------------------
# custom resources
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
@pytest.mark.parametrize("kind", sorted(CUSTOM_RESOURCES))
def test_custom_resources_match_their_schema(kind: str, kustomization: Path) -> None:
    obj = one(rendered(kustomization), kind)
    errors = _errors(kind, obj)
    assert not errors, f"{kind} from {kustomization}:\n" + "\n".join(errors)


@pytest.mark.parametrize("kind", sorted(CUSTOM_RESOURCES))
def test_custom_resource_schemas_reject_mistakes(kind: str) -> None:
    """The schemas are not vacuous: a misspelt field and a bad duration are errors."""
    obj = one(rendered(K8S_BASE), kind)
    assert not _errors(kind, obj)

    typo = copy.deepcopy(obj)
    if kind == "ServiceMonitor":
        typo["spec"]["endpoints"][0]["intervall"] = "15s"
    else:
        typo["spec"]["groups"][0]["rules"][0]["exp"] = "up"
    assert _errors(kind, typo), f"{kind} schema accepted a misspelt field"

    bad_duration = copy.deepcopy(obj)
    if kind == "ServiceMonitor":
        bad_duration["spec"]["endpoints"][0]["interval"] = "15 seconds"
    else:
        alert = next(r for g in bad_duration["spec"]["groups"] for r in g["rules"] if "for" in r)
        alert["for"] = "30min"
    assert _errors(kind, bad_duration), f"{kind} schema accepted a bad duration"

    if kind == "PrometheusRule":
        both = copy.deepcopy(obj)
        rule = both["spec"]["groups"][0]["rules"][0]
        rule["alert"] = "AlsoAnAlert"
        assert _errors(kind, both), "a rule with both `record` and `alert` must be an error"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
def test_service_monitor_scrapes_the_service_pods(kustomization: Path) -> None:
    docs = rendered(kustomization)
    monitor = one(docs, "ServiceMonitor")
    service = one(docs, "Service")
    deployment = one(docs, "Deployment")

    assert monitor["metadata"].get("namespace") == service["metadata"].get("namespace")
    assert "namespaceSelector" not in monitor["spec"], "the Service is in the monitor's namespace"
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), (
        f"ServiceMonitor selector {selector} does not select the Service "
        f"{service['metadata']['labels']}"
    )
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports, (endpoint, service_ports)
        assert endpoint.get("path", "/metrics") == annotations["prometheus.io/path"]

    # The operator names the job after the Service (no jobLabel): it must be one the rules use.
    assert "jobLabel" not in monitor["spec"]
    assert re.fullmatch(JOB_PATTERN, service["metadata"]["name"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
def test_prometheus_rule_is_rules_yml(kustomization: Path) -> None:
    rules = load_yaml(RULES)
    rule = one(rendered(kustomization), "PrometheusRule")
    assert rule["spec"]["groups"] == rules["groups"], (
        f"PrometheusRule rendered by {kustomization} differs from {RULES}: "
        f"run `python3 {RENDER_SCRIPT.relative_to(REPO)}`"
    )
    names = [g["name"] for g in rule["spec"]["groups"]]
    assert len(names) == len(set(names)), f"group names must be unique: {names}"


def test_prometheus_rule_source_is_generated_from_rules_yml() -> None:
    source = load_yaml(PROMETHEUSRULE_SOURCE)
    assert source["spec"]["groups"] == load_yaml(RULES)["groups"]
    proc = run([sys.executable, str(RENDER_SCRIPT), "--check"])
    assert_success(proc, f"{RENDER_SCRIPT.name} --check (the PrometheusRule is stale)")


# --------------------------------------------------------------------------
# HorizontalPodAutoscaler, overlay
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
def test_hpa_scales_the_deployment_on_cpu(kustomization: Path) -> None:
    docs = rendered(kustomization)
    hpa = one(docs, "HorizontalPodAutoscaler")
    deployment = one(docs, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    metrics = hpa["spec"]["metrics"]
    assert [m["resource"]["name"] for m in metrics if m["type"] == "Resource"] == ["cpu"]
    cpu = metrics[0]["resource"]["target"]
    assert cpu["type"] == "Utilization"
    assert 50 <= cpu["averageUtilization"] <= 90
    # Utilization is relative to the request: the container must request CPU.
    assert "cpu" in container(deployment)["resources"]["requests"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=IDS)
def test_one_worker_per_whole_cpu(kustomization: Path) -> None:
    """The settings the benchmark chose: requests = limits = "2" CPUs and --workers=2."""
    app = container(one(rendered(kustomization), "Deployment"))
    resources = app["resources"]
    assert resources["requests"]["cpu"] == "2", resources
    assert resources["limits"]["cpu"] == "2", resources
    words = argv(app)
    assert words[words.index("--workers") + 1] == "2", words


def _without(obj: dict[str, Any], *paths: tuple[str, ...]) -> dict[str, Any]:
    trimmed = copy.deepcopy(obj)
    for path in paths:
        node = trimmed
        for key in path[:-1]:
            node = node.get(key, {})
        node.pop(path[-1], None)
    return trimmed


def test_overlay_keeps_the_base_deployment_settings() -> None:
    base = one(rendered(K8S_BASE), "Deployment")
    production = one(rendered(K8S_PRODUCTION), "Deployment")

    base_pod = base["spec"]["template"]["spec"]
    production_pod = production["spec"]["template"]["spec"]
    # What the overlay may change: replicas, spreading, memory, the image tag.
    allowed = (("topologySpreadConstraints",), ("containers",))
    assert _without(production_pod, *allowed) == _without(base_pod, *allowed)
    changed = (("image",), ("resources", "requests", "memory"), ("resources", "limits", "memory"))
    assert _without(container(production), *changed) == _without(container(base), *changed)
    assert _without(production["spec"], ("replicas",), ("template",)) == _without(
        base["spec"], ("replicas",), ("template",)
    )
    assert production["spec"]["template"]["metadata"] == base["spec"]["template"]["metadata"]


def test_production_overlay() -> None:
    docs = rendered(K8S_PRODUCTION)
    namespaces = {d["metadata"].get("namespace") for d in docs}
    assert len(namespaces) == 1, f"every object in one namespace, got {namespaces}"
    assert None not in namespaces

    deployment = one(docs, "Deployment")
    app = container(deployment)
    assert deployment["spec"]["replicas"] >= 3
    # Guaranteed QoS: requests equal limits for CPU and memory.
    assert app["resources"]["requests"] == app["resources"]["limits"], app["resources"]

    image = app["image"]
    repository, _, tag = image.rpartition(":")
    assert "/" in repository, f"image should name a registry: {image}"
    assert tag not in ("", "latest"), f"pin a release tag, not {image!r}"
    job = one(docs, "Job")
    assert container(job)["image"] == image

    spread = deployment["spec"]["template"]["spec"]["topologySpreadConstraints"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for constraint in spread:
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
