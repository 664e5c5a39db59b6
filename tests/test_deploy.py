"""deploy/ stays true to the code: files parse, rules check, metrics exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from gateway.metrics import Metrics
from gateway.rules import parse_rules

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def exported_metric_names() -> set[str]:
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
        # Counters are exposed with _total, histograms with _bucket/_sum/_count, even
        # before they have samples.
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
    return names


def promql_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\b(gateway_[a-z_]+)\b", expr))


def test_every_yaml_file_parses() -> None:
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 9
    for f in files:
        docs = list(yaml.safe_load_all(f.read_text()))
        assert docs and all(d is not None for d in docs), f


def test_kubernetes_manifests_have_the_expected_kinds() -> None:
    kinds = {yaml.safe_load(f.read_text())["kind"] for f in (DEPLOY / "k8s").glob("*.yaml")}
    assert kinds == {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget"}


def test_the_configmap_rules_pass_gateway_check() -> None:
    configmap = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    rules = parse_rules(configmap["data"]["rules.yaml"], filename="configmap rules.yaml")
    assert set(rules.plans) == {"free", "pro"}


def test_alerts_and_dashboard_use_only_metrics_that_exist() -> None:
    exported = exported_metric_names()
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    used = {m for group in alerts["groups"] for rule in group["rules"]
            for m in promql_metrics(rule["expr"])}
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "gateway.json").read_text())
    used |= {m for panel in dashboard["panels"] for t in panel["targets"]
             for m in promql_metrics(t["expr"])}
    assert len(used) >= 10
    assert used <= exported, f"not exported by the gateway: {sorted(used - exported)}"


def test_the_container_drains_longer_than_the_gateway_does() -> None:
    deployment = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    spec = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert spec["terminationGracePeriodSeconds"] > int(env["GATEWAY_DRAIN_TIMEOUT_S"])
