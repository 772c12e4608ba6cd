#!/usr/bin/env python3
"""Write deploy/k8s/base/prometheusrule.yaml from deploy/prometheus/rules.yml.

The PrometheusRule's `spec.groups` is the `groups:` block of rules.yml copied
verbatim (indented by two spaces, comments kept), so Prometheus Operator users
run exactly the rules that `promtool check rules` and `promtool test rules`
check. tests/deploy checks both that the file is what this script writes and
that the parsed groups are equal.

    python3 deploy/prometheus/render_prometheusrule.py          # rewrite it
    python3 deploy/prometheus/render_prometheusrule.py --check  # exit 1 if stale

Standard library only: it works with any python3.
"""

from __future__ import annotations

import sys
from pathlib import Path

DEPLOY = Path(__file__).resolve().parents[1]
RULES = DEPLOY / "prometheus" / "rules.yml"
TARGET = DEPLOY / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
---
# GENERATED from deploy/prometheus/rules.yml by
# deploy/prometheus/render_prometheusrule.py: edit rules.yml and rerun the
# script, never this file (tests/deploy fails when the two differ).
# The Prometheus Operator loads it; your Prometheus must select it (its
# ruleSelector / ruleNamespaceSelector), e.g. add the `release` label that
# kube-prometheus-stack expects in an overlay.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: segment-scoring
  labels:
    app.kubernetes.io/name: segment-scoring
    app.kubernetes.io/component: monitoring
spec:
"""


def render(rules_text: str) -> str:
    """The PrometheusRule manifest for the text of rules.yml."""
    lines = rules_text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.rstrip() == "groups:"]
    if len(starts) != 1:
        raise ValueError(f"{RULES} must have exactly one top-level `groups:` line")
    body = lines[starts[0] :]
    indented = [f"  {line}" if line.strip() else "" for line in body]
    return HEADER + "\n".join(indented) + "\n"


def main(argv: list[str]) -> int:
    wanted = render(RULES.read_text(encoding="utf-8"))
    if argv[1:] == ["--check"]:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != wanted:
            print(f"{TARGET} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    if argv[1:]:
        print(__doc__, file=sys.stderr)
        return 2
    TARGET.write_text(wanted, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
