"""The chart's values: what the schema and the templates refuse, and that every key is documented.

values.schema.json catches types, ranges and misspelt keys; ``splitserve.validateValues`` catches rules
across keys. Both must name the offending key. values.yaml documents each key with a ``## @param`` line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

# (values, fragments the error must contain): the JSON pointer of the bad key and the broken rule.
SCHEMA_REJECTS = {
    "port out of range": ({"endpoint": {"ports": {"grpc": 70000}}}, ["/endpoint/ports/grpc", "maximum"]),
    "unknown source": (
        {"modelRepository": {"source": "ftp"}},
        ["/modelRepository/source", "'pvc', 'image', 'objectStore'"],
    ),
    "misspelt key": (
        {"endpoint": {"replicas": 3}},
        ["/endpoint", "additional properties 'replicas' not allowed"],
    ),
    "root user": (
        {"endpoint": {"podSecurityContext": {"runAsUser": 0}}},
        ["/endpoint/podSecurityContext/runAsUser", "minimum"],
    ),
    "root allowed": (
        {"triton": {"podSecurityContext": {"runAsNonRoot": False}}},
        ["/triton/podSecurityContext/runAsNonRoot", "value must be true"],
    ),
    "privilege escalation": (
        {"endpoint": {"containerSecurityContext": {"allowPrivilegeEscalation": True}}},
        ["/endpoint/containerSecurityContext/allowPrivilegeEscalation", "value must be false"],
    ),
    "no bundles": ({"modelRepository": {"bundles": []}}, ["/modelRepository/bundles", "minItems"]),
    "bundle path escapes the root": (
        {"modelRepository": {"bundles": ["../etc"]}},
        ["/modelRepository/bundles/0", "pattern"],
    ),
    "unsupported object store": (
        {"modelRepository": {"objectStore": {"url": "ftp://models/splitserve"}}},
        ["/modelRepository/objectStore/url", "pattern"],
    ),
    "zero GPUs": ({"triton": {"gpu": {"count": 0}}}, ["/triton/gpu/count", "minimum"]),
    "CPU target above 100%": (
        {"endpoint": {"autoscaling": {"targetCPUUtilizationPercentage": 150}}},
        ["/endpoint/autoscaling/targetCPUUtilizationPercentage", "maximum"],
    ),
    "boolean for a mode": (
        {"serviceMonitor": {"create": True}},
        ["/serviceMonitor/create", "'auto', 'always', 'never'"],
    ),
    "tag in the digest": (
        {"endpoint": {"image": {"digest": "latest"}}},
        ["/endpoint/image/digest", "pattern"],
    ),
    "unknown log level": (
        {"endpoint": {"config": {"logLevel": "verbose"}}},
        ["/endpoint/config/logLevel", "'INFO'"],
    ),
    "tritonserver flag without dashes": (
        {"triton": {"extraArgs": ["log-verbose=1"]}},
        ["/triton/extraArgs/0", "pattern"],
    ),
    "unknown decode mode": (
        {"endpoint": {"config": {"decodeMode": "gpu"}}},
        ["/endpoint/config/decodeMode", "'auto', 'process', 'thread', 'inline'"],
    ),
    "global that is not a mapping": ({"global": "registry.example.com"}, ["/global", "want object"]),
    "sidecar without an image": (
        {"endpoint": {"extraContainers": [{"name": "proxy"}]}},
        ["/endpoint/extraContainers/0", "missing property 'image'"],
    ),
    "sidecar name not a DNS label": (
        {"triton": {"extraContainers": [{"name": "Log_Shipper", "image": "fluent-bit:3.1"}]}},
        ["/triton/extraContainers/0/name", "pattern"],
    ),
    "sidecar escalating privileges": (
        {
            "endpoint": {
                "extraContainers": [
                    {
                        "name": "proxy",
                        "image": "envoy:1.31",
                        "securityContext": {"allowPrivilegeEscalation": True},
                    }
                ]
            }
        },
        ["/endpoint/extraContainers/0/securityContext/allowPrivilegeEscalation", "value must be false"],
    ),
    "privileged init container": (
        {
            "triton": {
                "initContainers": [
                    {
                        "name": "setup",
                        "image": "busybox:1.36",
                        "securityContext": {"allowPrivilegeEscalation": False, "privileged": True},
                    }
                ]
            }
        },
        ["/triton/initContainers/0/securityContext/privileged", "value must be false"],
    ),
    "envFrom with two sources": (
        {"endpoint": {"extraEnvFrom": [{"configMapRef": {"name": "a"}, "secretRef": {"name": "b"}}]}},
        ["/endpoint/extraEnvFrom/0", "oneOf"],
    ),
    "envFrom without a source": (
        {"triton": {"extraEnvFrom": [{"prefix": "LICENSE_"}]}},
        ["/triton/extraEnvFrom/0", "oneOf"],
    ),
    "volume without a source": (
        {"endpoint": {"extraVolumes": [{"name": "cache"}]}},
        ["/endpoint/extraVolumes/0", "minProperties"],
    ),
    "relative mount path": (
        {"triton": {"extraVolumeMounts": [{"name": "cache", "mountPath": "cache"}]}},
        ["/triton/extraVolumeMounts/0/mountPath", "pattern"],
    ),
    "bidirectional mount propagation": (
        {
            "endpoint": {
                "extraVolumeMounts": [{"name": "c", "mountPath": "/c", "mountPropagation": "Bidirectional"}]
            }
        },
        ["/endpoint/extraVolumeMounts/0/mountPropagation", "'None', 'HostToContainer'"],
    ),
    "Triton scaled on CPU": (
        {"triton": {"autoscaling": {"queueTime": {"type": "Resource"}}}},
        ["/triton/autoscaling/queueTime/type", "'Pods', 'External'"],
    ),
    "queue time target with a unit": (
        {"triton": {"autoscaling": {"queueTime": {"target": "5 ms"}}}},
        ["/triton/autoscaling/queueTime/target", "pattern"],
    ),
    "Triton scaled to zero": (
        {"triton": {"autoscaling": {"minReplicas": 0}}},
        ["/triton/autoscaling/minReplicas", "minimum"],
    ),
    "misspelt endpoint policy key": (
        {"networkPolicy": {"endpoint": {"grpcfrom": []}}},
        ["/networkPolicy/endpoint", "additional properties 'grpcfrom' not allowed"],
    ),
}

# (values, the line splitserve.validateValues must print).
TEMPLATE_REJECTS = {
    "claim missing": (
        {"modelRepository": {"pvc": {"existingClaim": ""}}},
        "modelRepository.source=pvc needs modelRepository.pvc.existingClaim",
    ),
    "bundle image missing": (
        {"modelRepository": {"source": "image"}},
        "modelRepository.source=image needs modelRepository.image.repository",
    ),
    "bundle image without a tag": (
        {"modelRepository": {"source": "image", "image": {"repository": "ml/bundles"}}},
        "modelRepository.image needs a tag or a digest",
    ),
    "Triton image without a tag": (
        {"triton": {"image": {"tag": ""}}},
        "triton.image needs a tag or a digest",
    ),
    "object store URL missing": (
        {"modelRepository": {"source": "objectStore"}},
        "modelRepository.source=objectStore needs",
    ),
    "TLS without a secret": (
        {"endpoint": {"tls": {"enabled": True}}},
        "endpoint.tls.enabled needs endpoint.tls.existingSecret",
    ),
    "mutual TLS without TLS": (
        {"endpoint": {"tls": {"clientCA": {"enabled": True}}}},
        "endpoint.tls.clientCA.enabled (mutual TLS) needs endpoint.tls.enabled",
    ),
    "gRPC probes with TLS": (
        {"endpoint": {"tls": {"enabled": True, "existingSecret": "tls"}, "probes": {"mode": "grpc"}}},
        "kubelet's gRPC probes do not speak TLS",
    ),
    "two Tritons": ({"endpoint": {"config": {"tritonUrl": "triton.shared:8001"}}}, "set one of them"),
    "replica bounds crossed": (
        {"endpoint": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
        "endpoint.autoscaling.minReplicas (5) is greater than endpoint.autoscaling.maxReplicas (2)",
    ),
    "HPA without a CPU request": (
        {"endpoint": {"resources": {"requests": {"cpu": None}}}},
        "endpoint.autoscaling needs endpoint.resources.requests.cpu",
    ),
    "drain longer than the grace period": (
        {"endpoint": {"config": {"graceSeconds": 30}}},
        (
            "endpoint.preStopSleepSeconds + endpoint.config.graceSeconds (35 s) must be below "
            "endpoint.terminationGracePeriodSeconds (30 s)"
        ),
    ),
    "Triton replica bounds crossed": (
        {"triton": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}}},
        "triton.autoscaling.minReplicas (5) is greater than triton.autoscaling.maxReplicas (2)",
    ),
    "external queue metric without a selector": (
        {"triton": {"autoscaling": {"enabled": True, "queueTime": {"type": "External"}}}},
        "triton.autoscaling.queueTime.type=External needs triton.autoscaling.queueTime.selector",
    ),
    "sidecar named like the chart's container": (
        {"endpoint": {"extraContainers": [{"name": "endpoint", "image": "envoy:1.31"}]}},
        'endpoint.initContainers and endpoint.extraContainers: container name "endpoint" is taken',
    ),
    "init container named like a bundle copy": (
        {
            "modelRepository": {"source": "image", "image": {"repository": "ml/bundles", "tag": "1"}},
            "triton": {"initContainers": [{"name": "copy-bundle-0", "image": "busybox:1.36"}]},
        },
        'triton.initContainers and triton.extraContainers: container name "copy-bundle-0" is taken',
    ),
    "init container and sidecar with one name": (
        {
            "triton": {
                "initContainers": [{"name": "helper", "image": "busybox:1.36"}],
                "extraContainers": [{"name": "helper", "image": "busybox:1.36"}],
            }
        },
        'container name "helper" is taken',
    ),
    "extra volume named like the chart's": (
        {"endpoint": {"extraVolumes": [{"name": "tokens", "emptyDir": {}}]}},
        'endpoint.extraVolumes: volume name "tokens" is taken',
    ),
    "extra volume listed twice": (
        {"triton": {"extraVolumes": [{"name": "logs", "emptyDir": {}}, {"name": "logs", "emptyDir": {}}]}},
        'triton.extraVolumes: volume name "logs" is taken',
    ),
    "mount of a volume the pod lacks": (
        {"triton": {"extraVolumeMounts": [{"name": "logs", "mountPath": "/var/log/triton"}]}},
        'triton.extraVolumeMounts: "logs" names no volume of the pod (models, dshm, tmp)',
    ),
    "mount over a chart mount": (
        {
            "endpoint": {
                "extraVolumes": [{"name": "scratch", "emptyDir": {}}],
                "extraVolumeMounts": [{"name": "scratch", "mountPath": "/tmp"}],
            }
        },
        'endpoint.extraVolumeMounts: mountPath "/tmp" is already mounted in the endpoint container',
    ),
    "PDB with both bounds": (
        {"triton": {"pdb": {"minAvailable": 1}}},
        (
            'triton.pdb: set exactly one of minAvailable and maxUnavailable (the other to ""); '
            'got minAvailable="1", maxUnavailable="1"'
        ),
    ),
}

PARAM = re.compile(r"^\s*## @param (\S+) \S")


@pytest.mark.parametrize(("values", "fragments"), SCHEMA_REJECTS.values(), ids=SCHEMA_REJECTS.keys())
def test_schema_rejects_bad_values(chart: helm.Chart, values: dict[str, Any], fragments: list[str]) -> None:
    with pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    for fragment in fragments:
        assert fragment in str(caught.value)
    with pytest.raises(helm.HelmValuesError):
        chart.render(values)


@pytest.mark.parametrize(("values", "message"), TEMPLATE_REJECTS.values(), ids=TEMPLATE_REJECTS.keys())
def test_cross_field_rules_fail_the_render(chart: helm.Chart, values: dict[str, Any], message: str) -> None:
    chart.validate_schema(values)
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(values)
    assert "VALUES VALIDATION" in str(caught.value)
    assert message in str(caught.value)


def test_every_broken_rule_is_reported_at_once(chart: helm.Chart) -> None:
    values = {"endpoint": {"tls": {"enabled": True}, "autoscaling": {"minReplicas": 9, "maxReplicas": 3}}}
    with pytest.raises(helm.HelmRenderError) as caught:
        chart.render(values)
    assert str(caught.value).count("\n- ") == 2


def leaf_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of the leaves of a values tree; an empty mapping counts as a leaf.

    Args:
        values: a (sub)tree of values.yaml.
        prefix: the dotted path of ``values`` itself.

    Yields:
        One path per leaf.
    """
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield from leaf_paths(value, f"{path}.")
        else:
            yield path


def has_path(values: dict[str, Any], path: str) -> bool:
    """Whether the dotted ``path`` names a key of ``values``."""
    node: Any = values
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def test_every_value_is_documented(chart_dir: Path) -> None:
    text = (chart_dir / "values.yaml").read_text()
    values = yaml.safe_load(text)
    params = [m.group(1) for line in text.splitlines() if (m := PARAM.match(line))]
    assert len(params) == len(set(params)), "a key is documented twice"
    assert [p for p in params if not has_path(values, p)] == [], "@param lines naming no key"
    documented = set(params)

    def is_documented(path: str) -> bool:
        parts = path.split(".")
        return any(".".join(parts[:n]) in documented for n in range(1, len(parts) + 1))

    assert [p for p in leaf_paths(values) if not is_documented(p)] == []


def test_scenario_values_pass_the_schema(chart: helm.Chart, values_of: dict[str, Any]) -> None:
    chart.validate_schema(values_of)
