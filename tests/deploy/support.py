"""Helpers shared by the deployment tests: tools, YAML, kustomize, PromQL and metric names.

A missing tool makes a test FAIL when the environment variable CI is "true" and SKIP
otherwise, so a CI job can never pass by silently not checking.
"""

from __future__ import annotations

import ast
import functools
import importlib
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO / "deploy"
K8S_DIR = DEPLOY_DIR / "k8s"
K8S_BASE = K8S_DIR / "base"
K8S_PRODUCTION = K8S_DIR / "overlays" / "production"
KUSTOMIZATIONS = (K8S_BASE, K8S_PRODUCTION)
PROMETHEUS_DIR = DEPLOY_DIR / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
RULES_TEST = PROMETHEUS_DIR / "rules_test.yml"
GRAFANA_DIR = DEPLOY_DIR / "grafana"
COMPOSE_FILE = REPO / "docker-compose.yml"
METRICS_PACKAGE = REPO / "app" / "metrics"

SUBPROCESS_TIMEOUT = 180


# --------------------------------------------------------------------------
# tools
# --------------------------------------------------------------------------


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def missing(what: str, how_to_get_it: str) -> None:
    """Fail under CI=true, skip otherwise."""
    message = f"{what} is not available ({how_to_get_it})"
    if in_ci():
        pytest.fail(f"{message}; CI=true, so this is a failure, not a skip", pytrace=False)
    pytest.skip(message)


def find_tool(name: str) -> str | None:
    """Path of an executable: the running interpreter's bin dir first (a venv
    that is not activated), then PATH."""
    beside_python = Path(sys.executable).parent / name
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return str(beside_python)
    return shutil.which(name)


def tool(name: str, how_to_get_it: str) -> str:
    found = find_tool(name)
    if found is None:
        missing(f"`{name}`", how_to_get_it)
    assert found is not None
    return found


def module(name: str, how_to_get_it: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"Python module `{name}` ({exc})", how_to_get_it)
        raise  # unreachable: missing() always raises


def yaml_module() -> ModuleType:
    return module("yaml", "pip install PyYAML (a dependency of yamllint)")


def load_yaml(path: Path) -> Any:
    return yaml_module().safe_load(path.read_text(encoding="utf-8"))


def run(cmd: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
        check=False,
    )


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return (
        f"$ {shlex.join(str(a) for a in proc.args)}\n"
        f"exit code: {proc.returncode}\n"
        f"--- stdout ---\n{proc.stdout}\n"
        f"--- stderr ---\n{proc.stderr}"
    )


def assert_success(proc: subprocess.CompletedProcess[str], what: str) -> None:
    assert proc.returncode == 0, f"{what} failed:\n{describe(proc)}"


def promtool() -> str:
    return tool("promtool", "apt-get install prometheus (provides /usr/bin/promtool)")


# --------------------------------------------------------------------------
# kustomize
# --------------------------------------------------------------------------


@functools.cache
def kustomize_output(directory: Path) -> str:
    kubectl = tool("kubectl", "install kubectl (e.g. Debian/Google Cloud SDK package)")
    proc = run([kubectl, "kustomize", str(directory)])
    assert_success(proc, f"kubectl kustomize {directory.relative_to(REPO)}")
    return proc.stdout


def rendered(directory: Path = K8S_BASE) -> list[dict[str, Any]]:
    docs = [d for d in yaml_module().safe_load_all(kustomize_output(directory)) if d is not None]
    assert docs, f"kubectl kustomize {directory} rendered no objects"
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == kind]
    assert len(found) == 1, (
        f"expected exactly one {kind}, got {[d['metadata']['name'] for d in found]}"
    )
    return found[0]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = obj["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{obj['kind']} should have one container"
    return containers[0]


def argv(container: dict[str, Any]) -> list[str]:
    """command + args with `--opt=value` split into `--opt`, `value`."""
    words: list[str] = []
    for word in container.get("command", []) + container.get("args", []):
        if word.startswith("--") and "=" in word:
            words.extend(word.split("=", 1))
        else:
            words.append(word)
    return words


def resolve_port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in named, f"probe/service port {port!r} is not a named container port ({named})"
    return int(named[port])


# --------------------------------------------------------------------------
# metric names
# --------------------------------------------------------------------------

# Series a metric of each kind exposes (prometheus_client naming).
_EXPOSED_SUFFIXES = {
    "Counter": ("_total", "_created"),
    "CounterMetricFamily": ("_total",),
    "Gauge": ("",),
    "GaugeMetricFamily": ("",),
    "Histogram": ("_bucket", "_count", "_sum", "_created"),
    "HistogramMetricFamily": ("_bucket", "_count", "_sum"),
    "Summary": ("", "_count", "_sum", "_created"),
    "SummaryMetricFamily": ("", "_count", "_sum"),
    "Info": ("_info",),
    "InfoMetricFamily": ("_info",),
}


@functools.cache
def app_metrics() -> dict[str, str]:
    """{declared metric name: kind} for every metric app/metrics declares, parsed from the
    source (Counter("name", ...), GaugeMetricFamily("name", ...), ...)."""
    found: dict[str, str] = {}
    for path in sorted(METRICS_PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else None
            )
            first = node.args[0]
            if (
                name in _EXPOSED_SUFFIXES
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found[first.value] = name
    return found


@functools.cache
def app_series_names() -> frozenset[str]:
    """Every series name the service exposes on /metrics."""
    names: set[str] = set()
    for declared, kind in app_metrics().items():
        base = declared.removesuffix("_total") if kind.startswith("Counter") else declared
        names.update(base + suffix for suffix in _EXPOSED_SUFFIXES[kind])
    return frozenset(names)


_PROMQL_KEYWORDS = {
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "atan2",
    "inf",
    "nan",
}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects: identifiers that are not functions,
    keywords, label names (in {...}, by/on/... clauses) or durations."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "1", text)  # Grafana variables
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges, subqueries
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def promtool_check_exprs(exprs: dict[str, str], tmp_path: Path) -> None:
    """Have promtool parse PromQL expressions: as recording rules in a throwaway file."""
    yaml = yaml_module()
    rules = [
        {"record": f"check:expr_{i}", "expr": expr, "labels": {"source": source[:60]}}
        for i, (source, expr) in enumerate(exprs.items())
    ]
    path = tmp_path / "exprs.rules.yml"
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}), encoding="utf-8"
    )
    assert_success(run([promtool(), "check", "rules", str(path)]), "promtool check rules")
