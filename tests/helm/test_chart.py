"""The rendered chart: lint, Kubernetes schema validity, and the invariants a reviewer would check by eye.

Tests that take ``value_set`` run once per value set (see conftest): the defaults and each operator
scenario in ``values/``. Objects are validated with ``kubernetes-validate`` in strict mode (unknown fields
are errors) against the oldest Kubernetes the chart supports and a recent one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

# The chart's kubeVersion floor (native gRPC probes are GA from 1.27) and a recent release.
KUBE_VERSIONS = ("1.27", "1.33")
# Custom resources have no schema in kubernetes-validate; test_service_monitors checks them by hand.
CRD_KINDS = {"ServiceMonitor"}
STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
)
LINT_WARNING = 2  # helm lint severities: 1 info, 2 warning, 3 error


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    """Whether a ``matchLabels``-style selector selects an object with ``labels``."""
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment."""
    spec: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return spec


def all_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The init containers, then the containers, of a pod spec."""
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any]:
    """The container called ``name`` of a Deployment."""
    (found,) = [c for c in pod_spec(deployment)["containers"] if c["name"] == name]
    return found


def container_port(spec: dict[str, Any], port: int | str) -> int:
    """Resolve a probe or Service target port, by name or number, against a container's ports.

    Raises:
        AssertionError: when no declared container port matches.
    """
    for declared in spec.get("ports", []):
        if port in (declared["name"], declared["containerPort"]):
            return int(declared["containerPort"])
    raise AssertionError(f"port {port!r} is not declared by container {spec['name']}")


def endpoint_env(rendered: Any) -> dict[str, Any]:
    """The endpoint container's environment: its ConfigMap, overlaid by its own ``env`` entries."""
    env: dict[str, Any] = dict(rendered.one("ConfigMap", "endpoint")["data"])
    for entry in container(rendered.one("Deployment", "endpoint"), "endpoint").get("env", []):
        env[entry["name"]] = entry.get("value", entry.get("valueFrom"))
    return env


def triton_flags(rendered: Any) -> list[str]:
    """The tritonserver flags of the Triton container."""
    args: list[str] = container(rendered.one("Deployment", "triton"), "triton")["args"]
    assert args[0] == "tritonserver"
    return args[1:]


def test_lint_is_clean(chart_dir: Path, values_of: dict[str, Any]) -> None:
    report = helm.lint(chart_dir, values_of, strict=True, kube_version="v1.27.0")
    problems = [m for m in report["messages"] if m["severity"] >= LINT_WARNING]
    assert not problems, problems
    assert not report["errors"], report["errors"]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_objects_are_valid_kubernetes(rendered: Any, kube_version: str) -> None:
    validated = set()
    for obj in rendered.objects:
        if obj["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = f"{obj['kind']}/{obj['metadata']['name']} on Kubernetes {kube_version}"
            pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")
        validated.add(obj["kind"])
    assert {"ConfigMap", "Deployment", "Service"} <= validated


def test_every_object_is_labelled_and_namespaced(rendered: Any) -> None:
    for obj in rendered.objects:
        metadata = obj["metadata"]
        assert metadata["namespace"] == "inference", obj["kind"]
        assert len(metadata["name"]) <= 63, metadata["name"]
        for label in STANDARD_LABELS:
            assert label in metadata["labels"], (obj["kind"], metadata["name"], label)
        if obj["kind"] != "ServiceAccount":
            assert metadata["labels"]["app.kubernetes.io/component"] in {"endpoint", "triton"}
    names = [(obj["kind"], obj["metadata"]["name"]) for obj in rendered.objects]
    assert len(names) == len(set(names)), "two objects share a kind and name"


def test_selectors_match_their_pods_only(rendered: Any) -> None:
    deployments = rendered.all("Deployment")
    pod_labels = {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["metadata"]["labels"]
        for d in deployments
    }
    for deployment in deployments:
        assert matches(
            deployment["spec"]["selector"]["matchLabels"],
            deployment["spec"]["template"]["metadata"]["labels"],
        )

    def selected(selector: dict[str, str]) -> set[str]:
        return {component for component, labels in pod_labels.items() if matches(selector, labels)}

    for service in rendered.all("Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        assert selected(service["spec"]["selector"]) == {component}, service["metadata"]["name"]
    for pdb in rendered.all("PodDisruptionBudget"):
        component = pdb["metadata"]["labels"]["app.kubernetes.io/component"]
        assert selected(pdb["spec"]["selector"]["matchLabels"]) == {component}
    for hpa in rendered.all("HorizontalPodAutoscaler"):
        component = hpa["metadata"]["labels"]["app.kubernetes.io/component"]
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
        assert target["name"] == rendered.one("Deployment", component)["metadata"]["name"]
    for policy in rendered.all("NetworkPolicy"):
        component = policy["metadata"]["labels"]["app.kubernetes.io/component"]
        assert selected(policy["spec"]["podSelector"]["matchLabels"]) == {component}


def test_ports_agree_between_services_probes_and_containers(rendered: Any) -> None:
    for service in rendered.all("Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        spec = container(rendered.one("Deployment", component), component)
        for port in service["spec"]["ports"]:
            assert port["targetPort"] == port["name"], "target ports are referenced by name"
            container_port(spec, port["targetPort"])
    for deployment in rendered.all("Deployment"):
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        for spec in pod_spec(deployment)["containers"]:
            for probe_kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if spec["name"] != component and probe_kind not in spec:
                    continue  # sidecars (extraContainers) bring their own probes, or none
                probe = spec[probe_kind]
                action = probe.get("httpGet") or probe.get("grpc")
                assert action is not None, f"{spec['name']} {probe_kind} is neither httpGet nor grpc"
                container_port(spec, action["port"])

    endpoint = container(rendered.one("Deployment", "endpoint"), "endpoint")
    env = endpoint_env(rendered)
    assert int(env["SPLITSERVE_CLOUD_ADDRESS"].rsplit(":", 1)[1]) == container_port(endpoint, "grpc")
    assert int(env["SPLITSERVE_CLOUD_METRICS_PORT"]) == container_port(endpoint, "metrics")
    extra_rules = len(rendered.merged["networkPolicy"]["endpoint"]["extraIngress"])
    for policy in rendered.all("NetworkPolicy", "endpoint"):
        rules = policy["spec"]["ingress"][: len(policy["spec"]["ingress"]) - extra_rules]
        policy_ports = {p["port"] for rule in rules for p in rule["ports"]}
        assert policy_ports <= {container_port(endpoint, "grpc"), container_port(endpoint, "metrics")}

    if not rendered.all("Deployment", "triton"):
        return
    triton = container(rendered.one("Deployment", "triton"), "triton")
    flags = triton_flags(rendered)
    for name in ("http", "grpc", "metrics"):
        assert f"--{name}-port={container_port(triton, name)}" in flags
    service = rendered.one("Service", "triton")
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    namespace = service["metadata"]["namespace"]
    assert (
        env["SPLITSERVE_CLOUD_TRITON_URL"]
        == f"{service['metadata']['name']}.{namespace}.svc:{grpc_port['port']}"
    )
    for policy in rendered.all("NetworkPolicy", "triton"):
        policy_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
        assert policy_ports <= {container_port(triton, "grpc"), container_port(triton, "metrics")}


def test_nothing_runs_as_root(rendered: Any) -> None:
    for deployment in rendered.all("Deployment"):
        spec = pod_spec(deployment)
        pod_context = spec["securityContext"]
        assert pod_context["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        for c in all_containers(spec):
            context = {**pod_context, **c["securityContext"]}
            where = f"{deployment['metadata']['name']}/{c['name']}"
            assert context["runAsNonRoot"] is True, where
            assert context["runAsUser"] > 0, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context.get("privileged", False) is False, where
            assert "ALL" in context["capabilities"]["drop"], where
            assert "add" not in context["capabilities"], where


def test_references_inside_the_release_resolve(rendered: Any) -> None:
    configmaps = {c["metadata"]["name"] for c in rendered.all("ConfigMap")}
    accounts = {a["metadata"]["name"] for a in rendered.all("ServiceAccount")}
    for deployment in rendered.all("Deployment"):
        spec = pod_spec(deployment)
        component = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        # ConfigMaps the operator adds with extraEnvFrom live outside the release.
        external = {
            source["configMapRef"]["name"]
            for source in rendered.merged[component]["extraEnvFrom"]
            if "configMapRef" in source
        }
        if rendered.merged["serviceAccount"]["create"]:
            assert spec["serviceAccountName"] in accounts
        volumes = {v["name"] for v in spec["volumes"]}
        assert len(volumes) == len(spec["volumes"]), "two volumes share a name"
        names = {c["name"] for c in spec["containers"]}
        every_name = [c["name"] for c in all_containers(spec)]
        assert len(every_name) == len(set(every_name)), "two containers share a name"
        for c in all_containers(spec):
            mounts = [m["name"] for m in c.get("volumeMounts", [])]
            assert set(mounts) <= volumes, c["name"]
            assert len(mounts) == len(set(mounts)), c["name"]
            paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
            assert len(paths) == len(set(paths)), c["name"]
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps | external
            for entry in c.get("env", []):
                field_ref = entry.get("valueFrom", {}).get("resourceFieldRef")
                if field_ref:
                    assert field_ref["containerName"] in names, entry["name"]


def test_every_container_has_requests_and_limits(rendered: Any) -> None:
    for deployment in rendered.all("Deployment"):
        for c in all_containers(pod_spec(deployment)):
            resources = c["resources"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= resources[kind].keys(), (c["name"], kind)


def test_config_change_rolls_the_endpoint(rendered: Any) -> None:
    annotations = rendered.one("Deployment", "endpoint")["spec"]["template"]["metadata"]["annotations"]
    configmap = rendered.manifest("endpoint/configmap.yaml")
    assert annotations["checksum/config"] == hashlib.sha256(configmap.encode()).hexdigest()


def test_endpoint_probes(rendered: Any) -> None:
    endpoint = rendered.merged["endpoint"]
    spec = container(rendered.one("Deployment", "endpoint"), "endpoint")
    # Liveness must not follow Triton: restarting the endpoint cannot fix a missing backend.
    for probe in ("startupProbe", "livenessProbe"):
        assert spec[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    mode = endpoint["probes"]["mode"]
    if mode == "grpc" or (mode == "auto" and not endpoint["tls"]["enabled"]):
        assert spec["readinessProbe"]["grpc"] == {
            "port": endpoint["ports"]["grpc"],
            "service": "splitserve.v1.SplitInference",
        }
    else:
        assert spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}


def test_endpoint_drains_within_the_grace_period(rendered: Any) -> None:
    deployment = rendered.one("Deployment", "endpoint")
    spec = container(deployment, "endpoint")
    sleep_s = int(spec["lifecycle"]["preStop"]["exec"]["command"][1]) if "lifecycle" in spec else 0
    drain_s = int(endpoint_env(rendered)["SPLITSERVE_CLOUD_GRACE_S"])
    assert sleep_s + drain_s < pod_spec(deployment)["terminationGracePeriodSeconds"]


def test_endpoint_tls_and_tokens_come_from_secrets(rendered: Any) -> None:
    endpoint = rendered.merged["endpoint"]
    env = endpoint_env(rendered)
    spec = pod_spec(rendered.one("Deployment", "endpoint"))
    secrets = {v["name"]: v["secret"] for v in spec["volumes"] if "secret" in v}
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    expected_files = {}
    if endpoint["tls"]["enabled"]:
        assert secrets["tls"]["secretName"] == endpoint["tls"]["existingSecret"]
        expected_files["SPLITSERVE_CLOUD_TLS_CERT"] = ("tls", "tls.crt")
        expected_files["SPLITSERVE_CLOUD_TLS_KEY"] = ("tls", "tls.key")
        if endpoint["tls"]["clientCA"]["enabled"]:
            expected_files["SPLITSERVE_CLOUD_TLS_CLIENT_CA"] = ("client-ca", "ca.crt")
    if endpoint["auth"]["tokensSecret"]:
        assert secrets["tokens"]["secretName"] == endpoint["auth"]["tokensSecret"]
        expected_files["SPLITSERVE_CLOUD_TOKENS_FILE"] = ("tokens", "tokens")
    for variable, (volume, path) in expected_files.items():
        assert env[variable] == f"{mounts[volume]}/{path}"
        assert path in [item["path"] for item in secrets[volume]["items"]]
    unexpected = {
        k for k in env if k.startswith(("SPLITSERVE_CLOUD_TLS", "SPLITSERVE_CLOUD_TOKENS"))
    } - expected_files.keys()
    assert not unexpected


def test_trusted_signing_keys_come_from_a_config_map(rendered: Any) -> None:
    signing = rendered.merged["endpoint"]["signing"]
    env = endpoint_env(rendered)
    spec = pod_spec(rendered.one("Deployment", "endpoint"))
    maps = {v["name"]: v["configMap"] for v in spec["volumes"] if "configMap" in v}
    mounts = {m["name"]: m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    if not signing["trustedKeysConfigMap"]:
        assert "SPLITSERVE_CLOUD_TRUSTED_KEYS_FILE" not in env and "signing" not in mounts
        return
    assert maps["signing"]["name"] == signing["trustedKeysConfigMap"]
    assert maps["signing"]["items"] == [{"key": signing["trustedKeysKey"], "path": "trusted_keys.pem"}]
    assert env["SPLITSERVE_CLOUD_TRUSTED_KEYS_FILE"] == f"{mounts['signing']}/trusted_keys.pem"


def test_model_repository_reaches_both_pods(rendered: Any) -> None:
    repo = rendered.merged["modelRepository"]
    root = repo["mountPath"]
    env = endpoint_env(rendered)
    assert env["SPLITSERVE_CLOUD_BUNDLES"] == ",".join(f"{root}/{b}" for b in repo["bundles"])

    endpoint_spec = pod_spec(rendered.one("Deployment", "endpoint"))
    models = next(v for v in endpoint_spec["volumes"] if v["name"] == "models")
    copies = [c for c in endpoint_spec.get("initContainers", []) if c["name"].startswith("copy-bundle-")]
    for deployment in rendered.all("Deployment"):
        for c in pod_spec(deployment)["containers"]:
            for mount in c.get("volumeMounts", []):
                if mount["name"] == "models":
                    assert mount["readOnly"] is True, "servers never write to the model repository"
    if repo["source"] == "pvc":
        assert models["persistentVolumeClaim"]["claimName"] == repo["pvc"]["existingClaim"]
        assert not copies
    else:
        assert "emptyDir" in models
        assert [c["args"][-1] for c in copies] == [f"/scratch/{b}" for b in repo["bundles"]]

    if not rendered.all("Deployment", "triton"):
        return
    triton_spec = pod_spec(rendered.one("Deployment", "triton"))
    repositories = [f.split("=", 1)[1] for f in triton_flags(rendered) if f.startswith("--model-repository=")]
    if repo["source"] == "objectStore":
        base = repo["objectStore"]["url"].rstrip("/")
        assert repositories == [f"{base}/{b}/{repo['tritonSubPath']}" for b in repo["bundles"]]
        assert "initContainers" not in triton_spec, "Triton reads object storage itself"
        assert all(v["name"] != "models" for v in triton_spec["volumes"])
    else:
        assert repositories == [f"{root}/{b}/{repo['tritonSubPath']}" for b in repo["bundles"]]
        triton_models = next(v for v in triton_spec["volumes"] if v["name"] == "models")
        assert triton_models.keys() == models.keys()


def test_triton_pod_shape(rendered: Any) -> None:
    if not rendered.all("Deployment", "triton"):
        pytest.skip("this value set runs the embedded tail, without Triton")
    triton = rendered.merged["triton"]
    spec = pod_spec(rendered.one("Deployment", "triton"))
    c = container(rendered.one("Deployment", "triton"), "triton")
    assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    shm = next(v for v in spec["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    gpu = triton["gpu"]["resourceName"]
    tolerated = any(t.get("key") == "nvidia.com/gpu" for t in spec.get("tolerations", []))
    if triton["gpu"]["enabled"]:
        assert c["resources"]["requests"][gpu] == c["resources"]["limits"][gpu] == triton["gpu"]["count"]
        assert tolerated
        assert "--allow-gpu-metrics=true" in triton_flags(rendered)
    else:
        assert gpu not in c["resources"]["requests"] and gpu not in c["resources"]["limits"]
        assert not tolerated


def test_autoscaler_owns_the_replica_count(rendered: Any) -> None:
    autoscaling = rendered.merged["endpoint"]["autoscaling"]
    deployment = rendered.one("Deployment", "endpoint")
    hpas = rendered.all("HorizontalPodAutoscaler", "endpoint")
    if not autoscaling["enabled"]:
        assert not hpas
        assert deployment["spec"]["replicas"] == rendered.merged["endpoint"]["replicaCount"]
        return
    (hpa,) = hpas
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert "replicas" not in deployment["spec"], "the HPA, not each upgrade, sets the replica count"
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert (
        metrics["Resource"]["resource"]["target"]["averageUtilization"]
        == autoscaling["targetCPUUtilizationPercentage"]
    )
    if autoscaling["inflight"]["enabled"]:
        assert metrics["Pods"]["pods"]["metric"]["name"] == "splitserve_inflight_requests"
        assert metrics["Pods"]["pods"]["target"]["averageValue"] == autoscaling["inflight"]["averageValue"]
    else:
        assert "Pods" not in metrics


def test_triton_autoscaler_owns_the_replica_count(rendered: Any) -> None:
    if not rendered.all("Deployment", "triton"):
        assert not rendered.all("HorizontalPodAutoscaler", "triton")
        return
    triton = rendered.merged["triton"]
    autoscaling = triton["autoscaling"]
    deployment = rendered.one("Deployment", "triton")
    hpas = rendered.all("HorizontalPodAutoscaler", "triton")
    if not autoscaling["enabled"]:
        assert not hpas
        assert deployment["spec"]["replicas"] == triton["replicaCount"]
        return
    (hpa,) = hpas
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert "replicas" not in deployment["spec"], "the HPA, not each upgrade, sets the replica count"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        autoscaling["minReplicas"],
        autoscaling["maxReplicas"],
    )
    (metric,) = hpa["spec"]["metrics"]
    queue = autoscaling["queueTime"]
    assert metric["type"] == queue["type"], "Triton scales on queue time only, never on CPU"
    source = metric["pods"] if queue["type"] == "Pods" else metric["external"]
    assert source["metric"]["name"] == queue["metricName"]
    assert str(source["target"].get("averageValue", source["target"].get("value"))) == str(queue["target"])


def test_endpoint_network_policy(rendered: Any) -> None:
    policy_values = rendered.merged["networkPolicy"]
    policies = rendered.all("NetworkPolicy", "endpoint")
    if not (policy_values["enabled"] and policy_values["endpoint"]["enabled"]):
        assert not policies
        return
    (policy,) = policies
    endpoint = container(rendered.one("Deployment", "endpoint"), "endpoint")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    rules = policy["spec"]["ingress"]
    by_port = {rule["ports"][0]["port"]: rule for rule in rules if len(rule["ports"]) == 1}
    grpc_rule = by_port[container_port(endpoint, "grpc")]
    assert grpc_rule.get("from", []) == policy_values["endpoint"]["grpcFrom"]
    metrics_rule = by_port.get(container_port(endpoint, "metrics"))
    if policy_values["metricsFrom"]:
        assert metrics_rule is not None and metrics_rule["from"] == policy_values["metricsFrom"]
    else:
        assert metrics_rule is None, "an empty metricsFrom closes the metrics port"
    assert rules[len(rules) - len(policy_values["endpoint"]["extraIngress"]) :] == (
        policy_values["endpoint"]["extraIngress"]
    )


def test_only_the_endpoint_reaches_triton(rendered: Any) -> None:
    if not rendered.all("Deployment", "triton"):
        assert not rendered.all("NetworkPolicy", "triton")
        return
    (policy,) = rendered.all("NetworkPolicy", "triton")
    endpoint_labels = rendered.one("Deployment", "endpoint")["spec"]["template"]["metadata"]["labels"]
    triton_labels = rendered.one("Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    triton = container(rendered.one("Deployment", "triton"), "triton")
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    inference_ports = {container_port(triton, "grpc"), container_port(triton, "http")}
    for rule in policy["spec"]["ingress"]:
        ports = {p["port"] for p in rule["ports"]}
        assert rule.get("from"), "a rule without peers would admit everyone"
        if ports & inference_ports:
            (peer,) = rule["from"]
            assert peer.keys() == {"podSelector"}, "only pods of this namespace"
            selector = peer["podSelector"]["matchLabels"]
            assert matches(selector, endpoint_labels) and not matches(selector, triton_labels)
        else:
            assert ports == {container_port(triton, "metrics")}


def test_notes_render(rendered: Any) -> None:
    endpoint_name = rendered.one("Service", "endpoint")["metadata"]["name"]
    assert endpoint_name in rendered.notes
    assert ("served in plaintext" in rendered.notes) != rendered.merged["endpoint"]["tls"]["enabled"]


def test_service_monitors_follow_the_operator_crd(render: Any, install_dry_run: Any) -> None:
    assert not render({}).all("ServiceMonitor"), "auto must not create CRD objects the cluster cannot take"
    with_crd = install_dry_run({}, ["monitoring.coreos.com/v1/ServiceMonitor"])
    assert {
        o["metadata"]["labels"]["app.kubernetes.io/component"]
        for o in with_crd
        if o["kind"] == "ServiceMonitor"
    } == {
        "endpoint",
        "triton",
    }
    never = install_dry_run(
        {"serviceMonitor": {"create": "never"}}, ["monitoring.coreos.com/v1/ServiceMonitor"]
    )
    assert not [o for o in never if o["kind"] == "ServiceMonitor"]


def test_service_monitors(rendered: Any) -> None:
    monitors = rendered.all("ServiceMonitor")
    if rendered.merged["serviceMonitor"]["create"] != "always":
        assert not monitors
        return
    assert len(monitors) == len(rendered.all("Service"))
    for monitor in monitors:
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        component = monitor["metadata"]["labels"]["app.kubernetes.io/component"]
        service = rendered.one("Service", component)
        spec = monitor["spec"]
        assert spec.keys() == {"namespaceSelector", "selector", "endpoints"}
        assert spec["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
        assert matches(spec["selector"]["matchLabels"], service["metadata"]["labels"])
        service_ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in spec["endpoints"]:
            assert endpoint["port"] in service_ports
            assert endpoint["path"] == "/metrics"
        for key, value in rendered.merged["serviceMonitor"]["labels"].items():
            assert monitor["metadata"]["labels"][key] == value
