"""Prometheus rules and the Grafana dashboard.

* ``promtool check rules deploy/prometheus/rules.yml`` and
  ``promtool test rules deploy/prometheus/rules_test.yml`` pass, and the unit tests show every
  alert both firing and staying quiet;
* the alerts are the ones issue 5 asks for, each with a severity, a summary and a description;
* every metric a rule or a dashboard panel queries is one the service exports (names parsed
  from the PromQL, checked against the declarations in ``app/metrics``), a recorded series or
  Prometheus's own ``up``; promtool parses every dashboard expression;
* Grafana's provisioning points at the dashboard and at the Prometheus of docker-compose.yml.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.support import (
    GRAFANA_DIR,
    PROMETHEUS_DIR,
    RULES,
    RULES_TEST,
    app_metrics,
    app_series_names,
    assert_success,
    describe,
    load_yaml,
    promql_metric_names,
    promtool,
    promtool_check_exprs,
    run,
)

DASHBOARD = GRAFANA_DIR / "dashboards" / "segment-scoring.json"
DATASOURCES = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA_DIR / "provisioning" / "dashboards" / "segment-scoring.yml"
PROMETHEUS_CONFIGS = (PROMETHEUS_DIR / "prometheus.yml", PROMETHEUS_DIR / "prometheus.compose.yml")

# The contract's metrics (README, app/metrics): the parser below must find all of them.
CONTRACT_METRICS = {
    "segment_request_duration_seconds": "Histogram",
    "segment_inference_duration_seconds": "Histogram",
    "segment_assignments": "Counter",
    "segment_unknown_categories": "Counter",
    "segment_store_failures": "Counter",
    "segment_group_commit_rows": "Histogram",
    "segment_drift_psi": "GaugeMetricFamily",
    "segment_feature_drift_psi": "GaugeMetricFamily",
    "segment_drift_samples": "GaugeMetricFamily",
    "segment_model_info": "GaugeMetricFamily",
}
# Series Prometheus itself adds to every target.
PROMETHEUS_SERIES = {"up"}

# alert -> (`for`, severity, a fragment its expression must contain)
EXPECTED_ALERTS = {
    "SegmentDriftHigh": ("30m", "warning", "segment_drift_samples) >= 500"),
    "FeatureDriftHigh": ("30m", "warning", "segment_drift_samples) >= 500"),
    "SegmentLatencyP99High": ("10m", "warning", "> 0.05"),
    "SegmentErrorRatioHigh": ("10m", "critical", "> 0.01"),
    "SegmentStoreFailures": (
        "5m",
        "critical",
        'segment_store_failures_total{reason="unavailable"}',
    ),
    "SegmentStoreDown": ("2m", "critical", "segment_store_up"),
    "ScoredTrafficDriftHigh": ("30m", "warning", "segment_scored_feature_psi:1h > 0.25"),
    "SegmentStoreStrained": (
        "10m",
        "warning",
        'segment_store_failures_total{reason!="unavailable"}',
    ),
    "SegmentRefreshBehind": ("10m", "warning", "segment_refresh_lag_seconds"),
    "SegmentServiceDown": ("2m", "critical", "up{"),
    "SegmentNoAssignments": ("30m", "warning", "segment_assignments_total"),
    "SegmentModelLoadFailed": (None, "critical", 'segment_model_loads_total{outcome="failed"}'),
    "SegmentModelVersionsSplit": ("5m", "warning", "count by (job, version) (segment_model_info)"),
}
PSI_BANDS = (0.1, 0.25)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def _recorded() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return dashboard


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def _panel_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    """{'panel title / refId': expr} for every query of every panel."""
    exprs = {}
    for panel in _panels(dashboard):
        for target in panel.get("targets", []):
            exprs[f"{panel['title']} / {target['refId']}"] = target["expr"]
    return exprs


def _variable_exprs(dashboard: dict[str, Any]) -> dict[str, str]:
    """The PromQL inside the query variables (label_values(EXPR, label))."""
    exprs = {}
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", text)
        assert match, f"variable {variable['name']}: unexpected query {text!r}"
        exprs[f"variable {variable['name']}"] = match.group(1)
    return exprs


def _as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, for promtool."""
    return (
        expr.replace("$__rate_interval", "5m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$job", ".*")
    )


# --------------------------------------------------------------------------
# metric names
# --------------------------------------------------------------------------


def test_metric_declarations_are_found() -> None:
    """The name checks below are only as good as this parser: it finds the contract."""
    found = app_metrics()
    for name, kind in CONTRACT_METRICS.items():
        assert found.get(name) == kind, f"{name}: declared as {found.get(name)!r}, expected {kind}"
    series = app_series_names()
    for name in (
        "segment_assignments_total",
        "segment_request_duration_seconds_bucket",
        "segment_group_commit_rows_count",
        "segment_drift_psi",
    ):
        assert name in series


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (route, le) (rate(a_bucket{job=~"$job"}[$__rate_interval]))', {"a_bucket"}),
        ("histogram_quantile(0.99, sum by (le) (rate(b_bucket[5m]))) > 1e3", {"b_bucket"}),
        ("x / on (model_version) group_left sum by (model_version) (y)", {"x", "y"}),
        ("max by (job) (p) > 0.25 and on (job) q >= 500 unless r offset 5m", {"p", "q", "r"}),
        ('count by (version) (info{route!~"/healthz|/metrics"}) or vector(0)', {"info"}),
        ("job:requests:rate5m{route='/v1'} * 0", {"job:requests:rate5m"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


# --------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------


def test_rules_pass_promtool_check() -> None:
    proc = run([promtool(), "check", "rules", str(RULES)])
    assert_success(proc, "promtool check rules deploy/prometheus/rules.yml")
    assert f"SUCCESS: {len(_rules())} rules found" in proc.stdout, describe(proc)


def test_rules_unit_tests_pass() -> None:
    proc = run([promtool(), "test", "rules", str(RULES_TEST)])
    assert_success(proc, "promtool test rules deploy/prometheus/rules_test.yml")
    assert "SUCCESS" in proc.stdout, describe(proc)


def test_every_alert_is_tested_firing_and_quiet() -> None:
    tests = load_yaml(RULES_TEST)
    assert [Path(f).name for f in tests["rule_files"]] == [RULES.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    alerts = {rule["alert"] for rule in _rules() if "alert" in rule}
    assert alerts - fires == set(), f"never shown firing: {sorted(alerts - fires)}"
    assert alerts - quiet == set(), f"never shown quiet: {sorted(alerts - quiet)}"
    assert fires | quiet <= alerts, f"tests of unknown alerts: {sorted((fires | quiet) - alerts)}"


def test_alerts_are_the_ones_asked_for() -> None:
    alerts = {rule["alert"]: rule for rule in _rules() if "alert" in rule}
    assert set(alerts) == set(EXPECTED_ALERTS)
    for name, (duration, severity, fragment) in EXPECTED_ALERTS.items():
        rule = alerts[name]
        assert rule.get("for") == duration, f"{name}: for {rule.get('for')!r} != {duration}"
        assert rule["labels"]["severity"] == severity, name
        assert fragment in " ".join(rule["expr"].split()), f"{name}: {fragment!r} not in expr"
        for annotation in ("summary", "description"):
            assert rule["annotations"].get(annotation, "").strip(), f"{name}: no {annotation}"
    assert "readiness probe" in alerts["SegmentServiceDown"]["annotations"]["description"]


def test_recording_rules_cover_rate_errors_latency_and_segments() -> None:
    records = {
        rule["record"]: " ".join(rule["expr"].split()) for rule in _rules() if "record" in rule
    }
    for record in records:
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", record), f"level:metric:ops {record}"
    wanted = {
        "request rate": "rate(segment_request_duration_seconds_count[5m])",
        "error ratio": 'status=~"5.."',
        "p99 per route": "histogram_quantile(0.99, sum by (job, route, method, le)",
        "assignment rate per segment": "sum by (job, model_version, segment)",
        "shadow agreement": "rate(segment_shadow_agreements_total[5m])",
    }
    for what, fragment in wanted.items():
        assert any(fragment in expr for expr in records.values()), f"no recording rule for {what}"


def test_rules_query_only_exported_metrics() -> None:
    known = app_series_names() | _recorded() | PROMETHEUS_SERIES
    for rule in _rules():
        names = promql_metric_names(rule["expr"])
        assert names, f"{rule.get('record') or rule.get('alert')}: no metric found in expr"
        unknown = names - known
        assert not unknown, f"{rule.get('record') or rule.get('alert')} queries unknown {unknown}"


def test_scrape_jobs_are_the_ones_the_rules_select() -> None:
    selectors = {
        match.group(1)
        for rule in _rules()
        for match in re.finditer(r'job=~"([^"]+)"', rule["expr"])
    }
    assert selectors == {"segment-scoring.*"}, selectors
    for config in PROMETHEUS_CONFIGS:
        jobs = [job["job_name"] for job in load_yaml(config)["scrape_configs"]]
        ours = [job for job in jobs if job.startswith("segment")]
        assert ours, f"{config.name}: no segment-scoring job"
        for job in ours:
            assert re.fullmatch("segment-scoring.*", job), f"{config.name}: job {job}"


# --------------------------------------------------------------------------
# Grafana dashboard
# --------------------------------------------------------------------------


def test_dashboard_loads_and_is_laid_out() -> None:
    dashboard = _dashboard()
    assert dashboard["uid"] == "segment-scoring"
    assert dashboard["title"]
    assert isinstance(dashboard["schemaVersion"], int)
    panels = _panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0
        assert grid["w"] > 0
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel.get("targets"), f"{panel['title']}: no query"


def test_dashboard_queries_the_provisioned_prometheus() -> None:
    dashboard = _dashboard()
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in _panels(dashboard):
        if panel["type"] == "row":
            continue
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel["targets"]]
        for source in sources:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_dashboard_queries_only_exported_metrics() -> None:
    dashboard = _dashboard()
    exprs = _panel_exprs(dashboard) | _variable_exprs(dashboard)
    exported = app_series_names()
    used: set[str] = set()
    for where, expr in exprs.items():
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric name found in {expr!r}"
        unknown = names - exported
        assert not unknown, f"{where}: {sorted(unknown)} are not exported by app/metrics"
        used |= names
    # and the dashboard shows every metric of the contract
    used_families = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in used}
    missing = set(CONTRACT_METRICS) - used_families
    assert not missing, f"not on the dashboard: {sorted(missing)}"


def test_dashboard_expressions_parse(tmp_path: Path) -> None:
    dashboard = _dashboard()
    exprs = _panel_exprs(dashboard) | _variable_exprs(dashboard)
    promtool_check_exprs({where: _as_promql(expr) for where, expr in exprs.items()}, tmp_path)


def _panel(dashboard: dict[str, Any], metric: str, fragment: str = "") -> dict[str, Any]:
    matches = [
        panel
        for panel in _panels(dashboard)
        if any(
            metric in promql_metric_names(t["expr"]) and fragment in t["expr"]
            for t in panel.get("targets", [])
        )
    ]
    assert matches, f"no panel queries {metric} with {fragment!r}"
    return matches[0]


def _threshold_values(panel: dict[str, Any]) -> set[float]:
    steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
    return {step["value"] for step in steps if step["value"] is not None}


def test_dashboard_has_the_panels_asked_for() -> None:
    dashboard = _dashboard()
    _panel(dashboard, "segment_request_duration_seconds_count", "rate(")
    latency = _panel(dashboard, "segment_request_duration_seconds_bucket", "histogram_quantile")
    quantiles = {
        q
        for t in latency["targets"]
        for q in re.findall(r"histogram_quantile\(([\d.]+)", t["expr"])
    }
    assert {"0.5", "0.99"} <= quantiles, quantiles
    assert all("route" in t["legendFormat"] for t in latency["targets"]), "latency per route"
    errors = _panel(dashboard, "segment_request_duration_seconds_count", 'status=~"5.."')
    assert errors["fieldConfig"]["defaults"]["unit"] == "percentunit"
    shares = _panel(dashboard, "segment_assignments_total", "group_left")
    assert "rate(segment_assignments_total" in shares["targets"][0]["expr"]
    assert shares["fieldConfig"]["defaults"]["unit"] == "percentunit"
    for metric in ("segment_drift_psi", "segment_feature_drift_psi"):
        panel = _panel(dashboard, metric)
        assert set(PSI_BANDS) <= _threshold_values(panel), f"{metric}: lines at 0.1 and 0.25"
        style = panel["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"]
        assert style.startswith("line"), f"{metric}: thresholds drawn as {style}"
    _panel(dashboard, "segment_drift_samples")
    info = _panel(dashboard, "segment_model_info")
    assert any("version" in t["expr"] for t in info["targets"])
    commits = _panel(dashboard, "segment_group_commit_rows_sum")
    assert any("segment_group_commit_rows_count" in t["expr"] for t in commits["targets"])


# --------------------------------------------------------------------------
# Grafana provisioning
# --------------------------------------------------------------------------


def test_grafana_datasource_provisioning() -> None:
    config = load_yaml(DATASOURCES)
    assert config["apiVersion"] == 1
    (source,) = config["datasources"]
    assert source["type"] == "prometheus"
    assert source["access"] == "proxy"
    assert source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090", "the prometheus service of docker-compose"


def test_grafana_dashboard_provider_points_at_the_dashboards() -> None:
    config = load_yaml(DASHBOARD_PROVIDERS)
    assert config["apiVersion"] == 1
    (provider,) = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"].startswith("/")
    assert list(DASHBOARD.parent.glob("*.json")) == [DASHBOARD]
