#!/usr/bin/env python3
"""Writes deploy/kubernetes/overlays/prometheus-operator/prometheusrule.yaml from
deploy/prometheus/pullwatch-rules.yml (the PrometheusRule embeds the same groups; a test in
tests/e2e/deploy.rs keeps them identical). Run after editing the rules."""
import pathlib
import yaml

root = pathlib.Path(__file__).resolve().parent.parent
rules = yaml.safe_load((root / "deploy/prometheus/pullwatch-rules.yml").read_text())
doc = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "pullwatch", "labels": {"app.kubernetes.io/name": "pullwatch"}},
    "spec": rules,
}
out = root / "deploy/kubernetes/overlays/prometheus-operator/prometheusrule.yaml"
text = "# The rules of deploy/prometheus/pullwatch-rules.yml (tests/deploy.rs keeps them identical;\n"
text += "# scripts/sync-prometheusrule.py writes this file from it).\n"
text += yaml.safe_dump(doc, sort_keys=False, width=1000, allow_unicode=True)
out.write_text(text)
