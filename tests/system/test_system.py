"""The whole stack under load, faults and a changing network (about a minute): nothing may be lost.

Real tritonserver (nvidia-pytriton), the endpoint with TLS and bearer tokens, Prometheus scraping both, and
edge client processes behind a tbf-shaped veth link whose rate follows a trace (root; otherwise loopback,
and only the shaped check is skipped). During the run Triton is SIGKILLed and restarted, a bad client sends
a burst of malformed and unauthenticated requests, and the endpoint is restarted. The orchestration and
the accounting live in ``splitserve.benchmarks.soak`` (``splitserve bench soak`` runs the long version).
No assertion here is about timing: every check counts things.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest

from splitserve.benchmarks.soak import SoakConfig, check, run_soak, summarize

_MISSING = [
    what
    for what, ok in (
        ("Debian package prometheus", Path("/usr/bin/prometheus").is_file()),
        ("nvidia-pytriton", importlib.util.find_spec("pytriton") is not None),
        ("openssl", shutil.which("openssl") is not None),
    )
    if not ok
]
pytestmark = [
    pytest.mark.system,
    pytest.mark.triton,
    pytest.mark.skipif(bool(_MISSING), reason=f"system test needs {', '.join(_MISSING)}"),
]
CONFIG = SoakConfig(duration_s=45.0, clients=3, rate_hz=3.0, hold_s=8.0, burst_repeats=3)


@pytest.fixture(scope="module")
def soak(test_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One short soak run, summarised (shared by every check below)."""
    report = run_soak(CONFIG, test_bundle, tmp_path_factory.mktemp("soak"))
    return summarize(CONFIG, report)


def test_every_input_gets_exactly_one_result(soak: dict[str, Any]) -> None:
    assert soak["requests"] > 0
    assert soak["lost"] == 0 and soak["duplicates"] == 0, soak["client_errors"]
    assert soak["results"] == soak["requests"]
    assert sum(soak["places"].values()) == soak["requests"]


def test_the_cloud_answered_and_came_back_after_every_restart(soak: dict[str, Any]) -> None:
    assert soak["places"].get("split", 0) + soak["places"].get("offload", 0) > 0, soak["places"]
    recovery = soak["first_cloud_result_after_s"]
    assert set(recovery) == {"triton", "endpoint 2"}
    assert all(v is not None for v in recovery.values()), recovery


def test_results_are_as_accurate_as_the_manifest_promises(soak: dict[str, Any]) -> None:
    # each option's accuracy within 4 binomial standard errors (+0.01) of the manifest's figure
    wrong = {o: v for o, v in soak["by_option"].items() if not v["ok"]}
    assert not wrong, wrong


def test_malformed_and_unauthenticated_requests_get_the_right_status(soak: dict[str, Any]) -> None:
    assert soak["bad_client_wrong"] == []
    got = soak["errors_by_status"]["bad_client"]
    assert got["UNAUTHENTICATED"] == 2 * CONFIG.burst_repeats
    assert {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"} <= set(got)
    endpoint = soak["errors_by_status"]["endpoint_prometheus"]
    for status, n in soak["bad_counted_expected"].items():
        assert endpoint.get(status, 0) == n, status


def test_prometheus_counts_equal_what_the_clients_counted(soak: dict[str, Any]) -> None:
    for incarnation, cmp in soak["prometheus_vs_final_metrics"].items():
        assert cmp["equal"], f"endpoint {incarnation}: {cmp}"
    assert soak["prometheus"]["endpoint_up"] == {"1": 1.0, "2": 1.0}
    assert soak["prometheus"]["triton_up_min_max"] == [0.0, 1.0]  # Prometheus saw Triton down, then up
    for key, a in soak["accounting"].items():
        assert a["client_ok"] <= a["endpoint_ok"] <= a["client_ok"] + a["client_indeterminate"], (key, a)
    assert check(soak) == []


def test_no_process_is_left_behind(soak: dict[str, Any]) -> None:
    assert soak["survivors"] == []


def test_the_link_followed_the_bandwidth_trace(soak: dict[str, Any]) -> None:
    if not soak["shaped"]:
        pytest.skip(f"ran on loopback, the link was not shaped: {soak['unshaped_reason']}")
    steps = int(CONFIG.duration_s // CONFIG.hold_s)
    assert soak["trace"]["tc_commands"] >= steps  # one `tc qdisc change` per step, plus the lab's setup
