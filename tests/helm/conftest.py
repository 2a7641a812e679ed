"""Fixtures that load, render and dry-run install the splitserve Helm chart with the real Helm library.

`helm-python-sdk` embeds Helm v4's Go library, so linting, schema checks and rendering here are what
`helm lint` / `helm template` do, offline: no helm binary, no cluster.

Every test that takes a ``value_set`` argument runs once per value set: ``default`` (the chart's own
values) and each file in ``values/`` (operator scenarios).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "helm" / "splitserve"
VALUES_DIR = Path(__file__).resolve().parent / "values"
RELEASE = "demo"
NAMESPACE = "inference"

# An empty kubeconfig: a client-side dry run never connects, and the tests must not read ~/.kube.
_NO_CLUSTER = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"


def value_sets() -> dict[str, dict[str, Any]]:
    """The named value sets every rendering test runs with.

    Returns:
        ``{"default": {}}`` plus one entry per ``values/*.yaml`` file, keyed by its stem.
    """
    sets: dict[str, dict[str, Any]] = {"default": {}}
    for path in sorted(VALUES_DIR.glob("*.yaml")):
        sets[path.stem] = yaml.safe_load(path.read_text()) or {}
    return sets


@dataclass(frozen=True)
class Rendered:
    """One rendering of the chart.

    Attributes:
        values: the user-supplied values (before the chart's defaults are merged in).
        merged: the values the templates saw (defaults coalesced with ``values``).
        manifests: template path -> rendered text, as Helm returns it.
        objects: every Kubernetes object, parsed, in template order.
        notes: the rendered NOTES.txt.
    """

    values: dict[str, Any]
    merged: dict[str, Any]
    manifests: dict[str, str]
    objects: list[dict[str, Any]]
    notes: str

    def all(self, kind: str, component: str | None = None) -> list[dict[str, Any]]:
        """Objects of ``kind``, optionally only those of one ``app.kubernetes.io/component``."""
        return [
            obj
            for obj in self.objects
            if obj["kind"] == kind
            and (
                component is None or obj["metadata"]["labels"].get("app.kubernetes.io/component") == component
            )
        ]

    def one(self, kind: str, component: str) -> dict[str, Any]:
        """The single object of ``kind`` for ``component``.

        Raises:
            AssertionError: when there is not exactly one.
        """
        found = self.all(kind, component)
        assert len(found) == 1, f"expected one {kind} for {component}, found {len(found)}"
        return found[0]

    def manifest(self, template: str) -> str:
        """The rendered text of ``template`` (a path below ``templates/``)."""
        return self.manifests[f"splitserve/templates/{template}"]


def parse_manifests(documents: Sequence[str]) -> list[dict[str, Any]]:
    """Parse multi-document YAML texts into objects, dropping empty documents.

    Args:
        documents: rendered manifest texts.

    Returns:
        The objects in order.
    """
    return [obj for text in documents for obj in yaml.safe_load_all(text) if obj]


@pytest.fixture(scope="session")
def chart_dir() -> Path:
    """The chart's source directory."""
    return CHART_DIR


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    """The chart, loaded once for the session."""
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Callable[[dict[str, Any]], Rendered]:
    """A function that renders the chart with given values, like ``helm template``.

    The function raises ``helm_python.HelmValuesError`` when the values fail values.schema.json and
    ``helm_python.HelmRenderError`` when a template fails, e.g. in ``splitserve.validateValues``.
    """

    def _render(values: dict[str, Any]) -> Rendered:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE)
        notes = manifests.pop("splitserve/templates/NOTES.txt", "")
        return Rendered(
            values=values,
            merged=chart.merge_values(values),
            manifests=manifests,
            objects=parse_manifests(list(manifests.values())),
            notes=notes,
        )

    return _render


@pytest.fixture(scope="session")
def install_dry_run(chart: helm.Chart) -> Callable[[dict[str, Any], Sequence[str]], list[dict[str, Any]]]:
    """A function that runs ``helm install --dry-run=client --api-versions ...`` and parses the manifest.

    This is the path on which ``.Capabilities.APIVersions`` holds what a cluster would serve, which
    plain rendering cannot set. helm-python-sdk 0.2.2's ``Config.install`` does not forward
    ``api_versions`` although its native ``helm_install`` accepts it, so the call goes to the native
    function directly.
    """
    from helm_python import _native

    def _install(values: dict[str, Any], api_versions: Sequence[str]) -> list[dict[str, Any]]:
        options = {"namespace": NAMESPACE, "dry_run": "client", "api_versions": list(api_versions)}
        with helm.Config(kubeconfig_content=_NO_CLUSTER, namespace=NAMESPACE) as config:
            payload = _native.call_string(
                "helm_install",
                config._raw(),
                _native.HANDLE(0),
                chart._raw(),
                None,
                RELEASE,
                json.dumps(values),
                json.dumps(options),
            )
        return parse_manifests([json.loads(payload)["manifest"]])

    return _install


# The same Kubernetes versions and CRD kinds as test_chart.test_objects_are_valid_kubernetes.
STRICT_KUBE_VERSIONS = ("1.27", "1.33")
CRD_KINDS = {"ServiceMonitor"}


@pytest.fixture(scope="session")
def validate_strictly() -> Callable[[Sequence[dict[str, Any]]], None]:
    """A function that validates objects (e.g. ``Rendered.objects``) with ``kubernetes-validate``, strictly.

    Unknown fields are errors; every object is checked against the chart's oldest supported Kubernetes
    and a recent one. Custom resources (ServiceMonitor) have no schema there and are skipped.
    """

    def _validate(objects: Sequence[dict[str, Any]]) -> None:
        assert objects, "nothing was rendered"
        for obj in objects:
            if obj["kind"] in CRD_KINDS:
                continue
            for kube_version in STRICT_KUBE_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, kube_version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    where = f"{obj['kind']}/{obj['metadata']['name']} on Kubernetes {kube_version}"
                    pytest.fail(f"{where}: {exc.message} at {list(exc.path)}")

    return _validate


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run every test that asks for ``value_set`` once per value set."""
    if "value_set" in metafunc.fixturenames:
        metafunc.parametrize("value_set", list(value_sets()))


@pytest.fixture(scope="session")
def rendered_sets(render: Callable[[dict[str, Any]], Rendered]) -> dict[str, Rendered]:
    """Every value set rendered once for the session, by name."""
    return {name: render(values) for name, values in value_sets().items()}


@pytest.fixture
def rendered(value_set: str, rendered_sets: dict[str, Rendered]) -> Rendered:
    """The chart rendered with the value set under test."""
    return rendered_sets[value_set]


@pytest.fixture
def values_of(value_set: str) -> dict[str, Any]:
    """The user-supplied values of the value set under test."""
    return value_sets()[value_set]
