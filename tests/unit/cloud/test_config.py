"""CloudConfig: environment contract, validation, flag overrides; the click command that reads it."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from splitserve.cloud import CloudConfig
from splitserve.cloud.cli import cloud
from splitserve.core.errors import ConfigError


def test_defaults_match_the_deployment_contract():
    c = CloudConfig.from_env({})
    assert c.address == "[::]:50051" and c.metrics_port == 9464 and c.triton_url == ""
    assert c.max_message_bytes == 4194304 and c.max_inflight_per_client == 64 and c.decode_workers == 0
    assert c.decode_worker_count >= 1 and c.decode_mode == "auto"


def test_every_variable_is_read():
    env = {
        "SPLITSERVE_CLOUD_BUNDLES": "/models/a, /models/b.tar,",
        "SPLITSERVE_CLOUD_ADDRESS": "127.0.0.1:6000",
        "SPLITSERVE_CLOUD_METRICS_PORT": "9200",
        "SPLITSERVE_CLOUD_TRITON_URL": "triton:8001",
        "SPLITSERVE_CLOUD_TLS_CERT": "/tls/crt",
        "SPLITSERVE_CLOUD_TLS_KEY": "/tls/key",
        "SPLITSERVE_CLOUD_TLS_CLIENT_CA": "/tls/ca",
        "SPLITSERVE_CLOUD_TOKENS_FILE": "/secrets/tokens",
        "SPLITSERVE_CLOUD_MAX_MESSAGE_BYTES": "65536",
        "SPLITSERVE_CLOUD_MAX_INFLIGHT_PER_CLIENT": "8",
        "SPLITSERVE_CLOUD_DECODE_WORKERS": "3",
        "SPLITSERVE_CLOUD_DECODE_MODE": "process",
        "SPLITSERVE_CLOUD_GRACE_S": "2.5",
        "SPLITSERVE_CLOUD_LOG_LEVEL": "debug",
    }
    c = CloudConfig.from_env(env)
    assert c.bundles == ("/models/a", "/models/b.tar")
    assert (c.address, c.metrics_port, c.triton_url) == ("127.0.0.1:6000", 9200, "triton:8001")
    assert (c.tls_cert, c.tls_key, c.tls_client_ca, c.tokens_file) == (
        "/tls/crt",
        "/tls/key",
        "/tls/ca",
        "/secrets/tokens",
    )
    assert (c.max_message_bytes, c.max_inflight_per_client, c.decode_worker_count) == (65536, 8, 3)
    assert (c.decode_mode, c.grace_s, c.log_level) == ("process", 2.5, "debug")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SPLITSERVE_CLOUD_METRICS_PORT": "http"}, "is not a valid int"),
        ({"SPLITSERVE_CLOUD_METRICS_PORT": "70000"}, "not a port number"),
        ({"SPLITSERVE_CLOUD_TLS_CERT": "/c"}, "must be given together"),
        ({"SPLITSERVE_CLOUD_TLS_CLIENT_CA": "/ca"}, "needs tls_cert"),
        ({"SPLITSERVE_CLOUD_MAX_INFLIGHT_PER_CLIENT": "0"}, "must be >= 1"),
        ({"SPLITSERVE_CLOUD_DECODE_MODE": "gpu"}, "is not one of"),
        ({"SPLITSERVE_CLOUD_ADDRESS": "50051"}, "HOST:PORT"),
        ({"SPLITSERVE_CLOUD_LOG_LEVEL": "loud"}, "not a logging level"),
    ],
)
def test_bad_values_are_config_errors_that_name_the_problem(env, message):
    with pytest.raises(ConfigError, match=message):
        CloudConfig.from_env(env)


def test_flags_override_the_environment_and_unset_flags_do_not():
    c = CloudConfig.from_env(
        {"SPLITSERVE_CLOUD_ADDRESS": "0.0.0.0:1", "SPLITSERVE_CLOUD_MAX_INFLIGHT_PER_CLIENT": "5"}
    )
    c = c.with_overrides(address="127.0.0.1:2", max_inflight_per_client=None)
    assert (c.address, c.max_inflight_per_client) == ("127.0.0.1:2", 5)
    with pytest.raises(ConfigError, match="unknown cloud config fields"):
        c.with_overrides(port=1)


def test_cli_serve_needs_a_bundle_and_reports_config_errors(monkeypatch):
    monkeypatch.delenv("SPLITSERVE_CLOUD_BUNDLES", raising=False)
    runner = CliRunner()
    result = runner.invoke(cloud, ["serve"])
    assert result.exit_code == 2 and "no bundle to serve" in result.output
    result = runner.invoke(cloud, ["serve", "--bundle", ".", "--max-inflight-per-client", "0"])
    assert result.exit_code == 2 and "max_inflight_per_client 0 must be >= 1" in result.output
    help_text = runner.invoke(cloud, ["serve", "--help"]).output
    for flag in ("--bundle", "--address", "--metrics-port", "--triton", "--tls-cert", "--tokens-file"):
        assert flag in help_text
