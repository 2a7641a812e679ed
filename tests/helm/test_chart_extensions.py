"""Values that extend the chart: `global` (use as a subchart), extra volumes, envFrom and containers,
the decode mode, the endpoint's NetworkPolicy, Triton's queue-time autoscaler and the metrics port.

Each test renders the chart with the value set, finds it in the manifest where Kubernetes will read it,
and validates every rendered object strictly (``validate_strictly``, as test_chart does for the scenarios).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CLOUD_README = REPO_ROOT / "cloud" / "README.md"
NODE_EXPORTER_PORT = 9100
COMPONENTS = ("endpoint", "triton")
# A pinned image for the containers the tests add.
TOOL_IMAGE = "registry.example.com/tools/busybox:1.36"

Validate = Callable[[list[dict[str, Any]]], None]


def pod_spec(rendered: Any, component: str) -> dict[str, Any]:
    """The pod spec of a component's Deployment."""
    spec: dict[str, Any] = rendered.one("Deployment", component)["spec"]["template"]["spec"]
    return spec


def main_container(rendered: Any, component: str) -> dict[str, Any]:
    """The chart's own container of a component (named after it)."""
    (found,) = [c for c in pod_spec(rendered, component)["containers"] if c["name"] == component]
    return found


def cloud_config() -> Any:
    """The endpoint's configuration module, or a skip where the package is not installed."""
    return pytest.importorskip("splitserve.cloud.config")


# ---- global: the chart as a subchart --------------------------------------------------------------


def test_global_values_are_accepted(chart: helm.Chart, render: Any, validate_strictly: Validate) -> None:
    values = {"global": {"foo": "bar", "imageRegistry": "registry.example.com", "nested": {"a": [1, 2]}}}
    chart.validate_schema(values)
    rendered = render(values)
    assert rendered.merged["global"]["foo"] == "bar"
    validate_strictly(rendered.objects)


def test_global_must_be_a_mapping(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema({"global": "registry.example.com"})
    assert "/global" in str(caught.value)


def test_renders_as_a_subchart(chart_dir: Path, tmp_path: Path, validate_strictly: Validate) -> None:
    parent = tmp_path / "platform"
    shutil.copytree(chart_dir, parent / "charts" / "splitserve")
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: platform\nversion: 1.0.0\n"
        "dependencies:\n  - name: splitserve\n    version: 0.1.0\n"
    )
    (parent / "values.yaml").write_text("global:\n  imageRegistry: registry.example.com\n")
    values = {"global": {"storageClass": "fast"}, "splitserve": {"endpoint": {"replicaCount": 3}}}
    with helm.Chart.load(parent) as platform:
        manifests = platform.render(values, name="demo", namespace="inference")
    objects = [
        obj
        for path, text in manifests.items()
        if path.endswith(".yaml")
        for obj in yaml.safe_load_all(text)
        if obj
    ]
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert {("Deployment", "demo-splitserve-endpoint"), ("Deployment", "demo-splitserve-triton")} <= names
    validate_strictly(objects)


# ---- extra volumes, mounts, envFrom, init containers and sidecars ---------------------------------


@pytest.mark.parametrize("component", COMPONENTS)
def test_extra_volumes(render: Any, validate_strictly: Validate, component: str) -> None:
    volumes = [
        {"name": "cache", "emptyDir": {"sizeLimit": "1Gi"}},
        {"name": "platform-ca", "configMap": {"name": "platform-ca-bundle", "defaultMode": 292}},
    ]
    rendered = render({component: {"extraVolumes": volumes}})
    spec = pod_spec(rendered, component)
    assert spec["volumes"][-2:] == volumes
    assert "models" in [v["name"] for v in spec["volumes"]], "the chart's volumes stay"
    validate_strictly(rendered.objects)


@pytest.mark.parametrize("component", COMPONENTS)
def test_extra_volume_mounts(render: Any, validate_strictly: Validate, component: str) -> None:
    mounts = [
        {"name": "cache", "mountPath": "/var/cache/splitserve"},
        {"name": "models", "mountPath": "/srv/bundles", "readOnly": True},
    ]
    rendered = render(
        {component: {"extraVolumes": [{"name": "cache", "emptyDir": {}}], "extraVolumeMounts": mounts}}
    )
    volume_mounts = main_container(rendered, component)["volumeMounts"]
    assert volume_mounts[-2:] == mounts
    assert {"name": "tmp", "mountPath": "/tmp"} in volume_mounts, "the chart's mounts stay"
    validate_strictly(rendered.objects)


@pytest.mark.parametrize("component", COMPONENTS)
def test_extra_env_from(render: Any, validate_strictly: Validate, component: str) -> None:
    sources = [
        {"configMapRef": {"name": "platform-tracing"}, "prefix": "OTEL_"},
        {"secretRef": {"name": "platform-sentry", "optional": True}},
    ]
    rendered = render({component: {"extraEnvFrom": sources}})
    env_from = main_container(rendered, component)["envFrom"]
    assert env_from[-2:] == sources
    if component == "endpoint":
        # The chart's ConfigMap comes first; later sources win for a variable defined twice.
        configmap = rendered.one("ConfigMap", "endpoint")["metadata"]["name"]
        assert env_from[0] == {"configMapRef": {"name": configmap}}
    validate_strictly(rendered.objects)


def test_triton_env_from_keeps_the_object_store_credentials(render: Any, validate_strictly: Validate) -> None:
    rendered = render(
        {
            "modelRepository": {
                "source": "objectStore",
                "objectStore": {"url": "s3://ml-models/splitserve", "credentialsSecret": "splitserve-s3"},
            },
            "triton": {"extraEnvFrom": [{"secretRef": {"name": "platform-license"}}]},
        }
    )
    assert main_container(rendered, "triton")["envFrom"] == [
        {"secretRef": {"name": "splitserve-s3"}},
        {"secretRef": {"name": "platform-license"}},
    ]
    validate_strictly(rendered.objects)


@pytest.mark.parametrize("component", COMPONENTS)
def test_extra_containers(render: Any, validate_strictly: Validate, component: str) -> None:
    own_context = {
        "runAsNonRoot": True,
        "runAsUser": 65534,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    sidecars = [
        {"name": "log-shipper", "image": TOOL_IMAGE, "args": ["tail", "-F", "/tmp/log"]},
        {
            "name": "config-reloader",
            "image": TOOL_IMAGE,
            "ports": [{"name": "reloader", "containerPort": 9533, "protocol": "TCP"}],
            "securityContext": own_context,
        },
    ]
    rendered = render({component: {"extraContainers": sidecars}})
    containers = pod_spec(rendered, component)["containers"]
    assert [c["name"] for c in containers] == [component, "log-shipper", "config-reloader"]
    defaults = rendered.merged[component]["containerSecurityContext"]
    assert containers[1]["securityContext"] == defaults, "a sidecar without one gets the chart's context"
    assert containers[1]["args"] == ["tail", "-F", "/tmp/log"]
    assert containers[2]["securityContext"] == own_context, "a sidecar's own context is kept"
    assert containers[2]["ports"] == sidecars[1]["ports"]
    validate_strictly(rendered.objects)


@pytest.mark.parametrize("component", COMPONENTS)
def test_init_containers(render: Any, validate_strictly: Validate, component: str) -> None:
    init = {"name": "warm-up", "image": TOOL_IMAGE, "command": ["sh", "-c", "ls /models"]}
    bundle_image = {
        "source": "image",
        "image": {"repository": "ml/splitserve-bundles", "tag": "2024.06"},
    }
    rendered = render({"modelRepository": bundle_image, component: {"initContainers": [init]}})
    init_containers = pod_spec(rendered, component)["initContainers"]
    assert [c["name"] for c in init_containers] == ["copy-bundle-0", "warm-up"], "after the bundle copies"
    assert init_containers[1]["command"] == init["command"]
    assert init_containers[1]["securityContext"] == rendered.merged[component]["containerSecurityContext"]
    validate_strictly(rendered.objects)

    alone = render({component: {"initContainers": [init]}})  # pvc source: no copies
    assert [c["name"] for c in pod_spec(alone, component)["initContainers"]] == ["warm-up"]
    validate_strictly(alone.objects)


def test_no_additions_by_default(render: Any) -> None:
    rendered = render({})
    for component in COMPONENTS:
        spec = pod_spec(rendered, component)
        assert [c["name"] for c in spec["containers"]] == [component]
        assert "initContainers" not in spec
    assert "envFrom" not in main_container(rendered, "triton")


# ---- decode mode ----------------------------------------------------------------------------------


def test_decode_mode_default_is_the_measured_best(chart: helm.Chart, render: Any) -> None:
    config = cloud_config()
    default = chart.merge_values({})["endpoint"]["config"]["decodeMode"]
    assert default == "auto"
    assert default == config.CloudConfig().decode_mode, "the chart and the endpoint agree"
    assert "`decode_mode=auto`, the default" in CLOUD_README.read_text(), "cloud/README.md's decision"
    configmap = render({}).one("ConfigMap", "endpoint")
    assert configmap["data"]["SPLITSERVE_CLOUD_DECODE_MODE"] == "auto"


def test_schema_allows_every_decode_mode_of_the_endpoint(chart_dir: Path) -> None:
    config = cloud_config()
    schema = json.loads((chart_dir / "values.schema.json").read_text())
    enum = schema["properties"]["endpoint"]["properties"]["config"]["properties"]["decodeMode"]["enum"]
    assert sorted(enum) == sorted(config.DECODE_MODES)


@pytest.mark.parametrize("mode", ["auto", "process", "thread", "inline"])
def test_decode_mode_reaches_the_endpoint(render: Any, validate_strictly: Validate, mode: str) -> None:
    config = cloud_config()
    rendered = render({"endpoint": {"config": {"decodeMode": mode}}})
    data = rendered.one("ConfigMap", "endpoint")["data"]
    assert data["SPLITSERVE_CLOUD_DECODE_MODE"] == mode
    assert config.CloudConfig.from_env({"SPLITSERVE_CLOUD_DECODE_MODE": mode}).decode_mode == mode
    validate_strictly(rendered.objects)


# ---- the endpoint's NetworkPolicy -----------------------------------------------------------------


def ingress_by_port(policy: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The ingress rules of a policy by their (single) port."""
    rules = policy["spec"]["ingress"]
    assert all(len(rule["ports"]) == 1 for rule in rules)
    return {rule["ports"][0]["port"]: rule for rule in rules}


def test_endpoint_network_policy_by_default(render: Any, validate_strictly: Validate) -> None:
    rendered = render({})
    policy = rendered.one("NetworkPolicy", "endpoint")
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "endpoint"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = ingress_by_port(policy)
    assert rules.keys() == {50051, 9464}, "nothing but gRPC and metrics"
    assert "from" not in rules[50051], "edge devices reach gRPC from anywhere unless grpcFrom narrows it"
    assert rules[9464]["from"] == [{"namespaceSelector": {}}]
    validate_strictly(rendered.objects)


def test_endpoint_network_policy_sources(render: Any, validate_strictly: Validate) -> None:
    grpc_from = [
        {"ipBlock": {"cidr": "10.20.0.0/16"}},
        {"namespaceSelector": {"matchLabels": {"team": "edge"}}},
    ]
    metrics_from = [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    extra = [{"from": [{"podSelector": {"matchLabels": {"app": "debug"}}}], "ports": [{"port": 9533}]}]
    rendered = render(
        {
            "endpoint": {"ports": {"grpc": 8443, "metrics": 9090}},
            "networkPolicy": {
                "metricsFrom": metrics_from,
                "endpoint": {"grpcFrom": grpc_from, "extraIngress": extra},
            },
        }
    )
    policy = rendered.one("NetworkPolicy", "endpoint")
    rules = ingress_by_port(policy)
    assert rules[8443]["from"] == grpc_from, "the container port, not the Service port"
    assert rules[9090]["from"] == metrics_from
    assert policy["spec"]["ingress"][-1] == extra[0]
    assert ingress_by_port(rendered.one("NetworkPolicy", "triton"))[8002]["from"] == metrics_from
    validate_strictly(rendered.objects)


def test_empty_metrics_from_closes_the_metrics_ports(render: Any, validate_strictly: Validate) -> None:
    rendered = render({"networkPolicy": {"metricsFrom": []}})
    assert ingress_by_port(rendered.one("NetworkPolicy", "endpoint")).keys() == {50051}
    assert ingress_by_port(rendered.one("NetworkPolicy", "triton")).keys() == {8001}
    validate_strictly(rendered.objects)


def test_endpoint_network_policy_switches(render: Any, validate_strictly: Validate) -> None:
    endpoint_off = render({"networkPolicy": {"endpoint": {"enabled": False}}})
    assert not endpoint_off.all("NetworkPolicy", "endpoint")
    assert endpoint_off.all("NetworkPolicy", "triton"), "Triton keeps its policy"
    all_off = render({"networkPolicy": {"enabled": False}})
    assert not all_off.all("NetworkPolicy"), "networkPolicy.enabled switches every policy off"
    embedded = render({"triton": {"enabled": False}})
    policies = embedded.all("NetworkPolicy")
    components = [p["metadata"]["labels"]["app.kubernetes.io/component"] for p in policies]
    assert components == ["endpoint"], "without Triton the endpoint keeps its policy"
    validate_strictly(embedded.objects)


# ---- Triton's queue-time autoscaler ---------------------------------------------------------------


def test_triton_keeps_a_fixed_replica_count_by_default(render: Any) -> None:
    rendered = render({"triton": {"replicaCount": 3}})
    assert not rendered.all("HorizontalPodAutoscaler", "triton")
    assert rendered.one("Deployment", "triton")["spec"]["replicas"] == 3


def test_triton_autoscaling_on_a_pods_metric(render: Any, validate_strictly: Validate) -> None:
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 600}}
    rendered = render(
        {
            "triton": {
                "replicaCount": 3,
                "autoscaling": {
                    "enabled": True,
                    "minReplicas": 2,
                    "maxReplicas": 8,
                    "queueTime": {
                        "metricName": "triton_queue_us_per_request",
                        "target": 2500,
                        "selector": {"model": "fmnist_resnet_split"},
                    },
                    "behavior": behavior,
                },
            }
        }
    )
    deployment = rendered.one("Deployment", "triton")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = rendered.one("HorizontalPodAutoscaler", "triton")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 8)
    assert spec["metrics"] == [
        {
            "type": "Pods",
            "pods": {
                "metric": {
                    "name": "triton_queue_us_per_request",
                    "selector": {"matchLabels": {"model": "fmnist_resnet_split"}},
                },
                "target": {"type": "AverageValue", "averageValue": "2500"},
            },
        }
    ]
    assert spec["behavior"] == behavior
    assert rendered.one("HorizontalPodAutoscaler", "endpoint"), "the endpoint keeps its own HPA"
    validate_strictly(rendered.objects)


def test_triton_autoscaling_defaults(chart: helm.Chart, render: Any, validate_strictly: Validate) -> None:
    defaults = chart.merge_values({})["triton"]["autoscaling"]
    assert defaults["enabled"] is False, "off by default: it needs a metrics adapter"
    rendered = render({"triton": {"autoscaling": {"enabled": True}}})
    (metric,) = rendered.one("HorizontalPodAutoscaler", "triton")["spec"]["metrics"]
    assert metric == {
        "type": "Pods",
        "pods": {
            "metric": {"name": "nv_inference_queue_duration_us_per_request"},
            "target": {"type": "AverageValue", "averageValue": defaults["queueTime"]["target"]},
        },
    }
    assert "metrics adapter" in rendered.notes, "NOTES say what the HPA needs"
    assert "metrics adapter" not in render({}).notes
    validate_strictly(rendered.objects)


def test_triton_autoscaling_on_an_external_metric(render: Any, validate_strictly: Validate) -> None:
    selector = {"namespace": "inference", "service": "demo-splitserve-triton"}
    rendered = render(
        {
            "triton": {
                "autoscaling": {
                    "enabled": True,
                    "queueTime": {
                        "type": "External",
                        "metricName": "triton_queue_us_per_request",
                        "target": "4k",
                        "selector": selector,
                    },
                }
            }
        }
    )
    (metric,) = rendered.one("HorizontalPodAutoscaler", "triton")["spec"]["metrics"]
    assert metric == {
        "type": "External",
        "external": {
            "metric": {"name": "triton_queue_us_per_request", "selector": {"matchLabels": selector}},
            "target": {"type": "Value", "value": "4k"},
        },
    }
    validate_strictly(rendered.objects)


def test_no_triton_autoscaler_without_triton(render: Any) -> None:
    rendered = render({"triton": {"enabled": False, "autoscaling": {"enabled": True}}})
    assert not rendered.all("HorizontalPodAutoscaler", "triton")


def test_triton_autoscaling_documents_the_adapter(chart_dir: Path) -> None:
    values_text = (chart_dir / "values.yaml").read_text()
    line = next(x for x in values_text.splitlines() if "@param triton.autoscaling.enabled " in x)
    assert "metrics adapter" in line
    readme = (chart_dir / "README.md").read_text()
    assert "nv_inference_queue_duration_us" in readme and "prometheus-adapter" in readme
    rule = yaml.safe_load(re.search(r"```yaml\n(# prometheus-adapter.*?)```", readme, re.DOTALL).group(1))
    names = [r["name"]["as"] for r in rule["rules"]["custom"]]
    assert yaml.safe_load(values_text)["triton"]["autoscaling"]["queueTime"]["metricName"] in names


# ---- the metrics port -----------------------------------------------------------------------------


def test_metrics_port_matches_the_endpoint_default(chart: helm.Chart, render: Any) -> None:
    config = cloud_config()
    endpoint = chart.merge_values({})["endpoint"]
    assert endpoint["ports"]["metrics"] == config.CloudConfig().metrics_port
    assert endpoint["service"]["ports"]["metrics"] == endpoint["ports"]["metrics"]
    data = render({}).one("ConfigMap", "endpoint")["data"]
    assert int(data["SPLITSERVE_CLOUD_METRICS_PORT"]) == endpoint["ports"]["metrics"], "set, not assumed"


def test_metrics_port_is_not_node_exporters(chart: helm.Chart) -> None:
    endpoint = chart.merge_values({})["endpoint"]
    assert NODE_EXPORTER_PORT not in (endpoint["ports"]["metrics"], endpoint["service"]["ports"]["metrics"])
