"""docs/deploy.md and the Grafana dashboard stay true to the chart and to the metrics the services export."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DOC = REPO_ROOT / "docs" / "deploy.md"
DASHBOARD = REPO_ROOT / "docs" / "grafana" / "splitserve-dashboard.json"
# Triton's own series (server metrics port 8002) that the dashboard reads.
TRITON_SERIES = {
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
}
TRITON_LABELS = {"model", "version", "gpu_uuid"}
# Labels Prometheus adds to every series scraped through a ServiceMonitor, and the histogram bucket label.
TARGET_LABELS = {"namespace", "service", "pod", "job", "instance", "container", "endpoint", "le"}
DASHBOARD_VARIABLES = {"datasource", "namespace", "endpoint", "triton"}


def fenced_blocks(markdown: str, language: str) -> list[str]:
    """The bodies of the fenced code blocks of ``language`` in a Markdown text."""
    return re.findall(rf"^```{language}\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE)


def has_path(values: dict[str, Any], dotted: str) -> bool:
    """Whether the dotted path names a key of ``values``."""
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    """The dashboard JSON."""
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


@pytest.fixture(scope="module")
def expressions(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and variable queries."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return exprs


@pytest.fixture(scope="module")
def endpoint_series() -> tuple[set[str], set[str]]:
    """Sample names and label names the endpoint really exports, from its metrics registry."""
    metrics_module = pytest.importorskip("splitserve.cloud._metrics")
    metrics = metrics_module.Metrics()
    metrics.count("model", "1", "split", "0", "OK")
    metrics.observe_received("model", "split", "0", 100)
    metrics.observe_stages("model", "split", "0", total=0.001)
    names: set[str] = set()
    labels: set[str] = set()
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.add(sample.name)
            labels |= sample.labels.keys()
    return names, labels


def test_values_examples_pass_the_schema_and_render(chart: helm.Chart) -> None:
    examples = [
        block for block in fenced_blocks(DEPLOY_DOC.read_text(), "yaml") if block.startswith("# values-")
    ]
    assert examples, "deploy.md shows a values file"
    for block in examples:
        values = yaml.safe_load(block)
        chart.validate_schema(values)
        chart.render(values)


def test_set_flags_name_real_values(chart_dir: Path) -> None:
    values = yaml.safe_load((chart_dir / "values.yaml").read_text())
    keys = re.findall(r"--set(?:-string)? ([\w.]+)=", DEPLOY_DOC.read_text())
    assert keys, "deploy.md shows --set flags"
    assert [key for key in keys if not has_path(values, key)] == []


def test_dashboard_reads_only_series_that_exist(
    expressions: list[str], endpoint_series: tuple[set[str], set[str]]
) -> None:
    names, _ = endpoint_series
    used = {m for expr in expressions for m in re.findall(r"\b((?:splitserve|nv)_\w+)", expr)}
    assert used - names - TRITON_SERIES == set()
    assert {
        "splitserve_requests_total",
        "splitserve_stage_seconds_bucket",
        "nv_inference_queue_duration_us",
    } <= used


def test_dashboard_groups_by_labels_that_exist(
    expressions: list[str], endpoint_series: tuple[set[str], set[str]]
) -> None:
    _, labels = endpoint_series
    grouped = {
        label.strip()
        for expr in expressions
        for group in re.findall(r"by \(([^)]*)\)", expr)
        for label in group.split(",")
    }
    assert grouped - labels - TRITON_LABELS - TARGET_LABELS == set()


def test_dashboard_is_well_formed(dashboard: dict[str, Any], expressions: list[str]) -> None:
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == DASHBOARD_VARIABLES
    used = {v for expr in expressions for v in re.findall(r"\$(\w+)", expr)} - {"__rate_interval"}
    assert used <= variables
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
