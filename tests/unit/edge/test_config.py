"""EdgeConfig and Credentials: defaults, environment, validation, files."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from splitserve.core.errors import ConfigError
from splitserve.edge import Credentials, EdgeConfig


def test_defaults_are_valid() -> None:
    c = EdgeConfig()
    assert c.policy == "min_latency" and c.timeout_s == 1.0 and c.max_inflight >= 2 and c.fallback
    assert not c.uses_tls


def test_every_field_has_a_variable() -> None:
    env = {
        "SPLITSERVE_EDGE_ENDPOINT": "cloud:50051",
        "SPLITSERVE_EDGE_POLICY": "layer1@1",
        "SPLITSERVE_EDGE_TIMEOUT_S": "0.25",
        "SPLITSERVE_EDGE_MAX_INFLIGHT": "16",
        "SPLITSERVE_EDGE_FALLBACK": "false",
        "SPLITSERVE_EDGE_PRECISION": "auto",
        "SPLITSERVE_EDGE_TLS": "yes",
        "SPLITSERVE_EDGE_UNRELATED": "x",
        "SPLITSERVE_EDGE_TOP_K": "",
    }
    c = EdgeConfig.from_env(env)
    assert (c.endpoint, c.policy, c.timeout_s, c.max_inflight) == ("cloud:50051", "layer1@1", 0.25, 16)
    assert c.fallback is False and c.precision == "auto" and c.tls is True and c.top_k == 5
    assert {f.name for f in dataclasses.fields(EdgeConfig)} >= {"endpoint", "token_file", "breaker_reset_s"}


@pytest.mark.parametrize(
    ("var", "value", "match"),
    [
        ("TIMEOUT_S", "soon", "not a valid float"),
        ("FALLBACK", "maybe", "not a valid bool"),
        ("MAX_INFLIGHT", "1", "max_inflight"),
        ("RETRY_ATTEMPTS", "9", "retry_attempts"),
        ("PRECISION", "int4", "precision"),
        ("ENDPOINT", "nohost", "HOST:PORT"),
        ("TIMEOUT_S", "0", "timeout_s"),
        ("REMEASURE_S", "-1", "remeasure_s"),
        ("GIVE_UP_FACTOR", "0.5", "give_up_factor"),
        ("GIVE_UP_MIN_S", "-0.1", "give_up_min_s"),
        ("ACCURACY_FLOOR", "1.5", "accuracy_floor"),
        ("DEVICE_SLOWDOWN", "0.5", "device_slowdown"),
    ],
)
def test_bad_values_are_refused(var: str, value: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        EdgeConfig.from_env({f"SPLITSERVE_EDGE_{var}": value})


def test_overrides_skip_unset_flags() -> None:
    c = EdgeConfig(policy="local").with_overrides(policy=None, timeout_s=2.0)
    assert c.policy == "local" and c.timeout_s == 2.0
    with pytest.raises(ConfigError, match="unknown"):
        EdgeConfig().with_overrides(nope=1)


def test_credentials_from_files(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("\n  s3cret  \n")
    (tmp_path / "ca.pem").write_bytes(b"CA")
    (tmp_path / "c.pem").write_bytes(b"CERT")
    (tmp_path / "k.pem").write_bytes(b"KEY")
    config = EdgeConfig(
        token_file=str(tmp_path / "token"),
        tls_ca=str(tmp_path / "ca.pem"),
        tls_cert=str(tmp_path / "c.pem"),
        tls_key=str(tmp_path / "k.pem"),
        tls_server_name="cloud.test",
    )
    creds = Credentials.from_config(config)
    assert creds.token == "s3cret" and creds.metadata == (("authorization", "Bearer s3cret"),)
    assert creds.uses_tls and creds.root_certificates == b"CA" and creds.certificate_chain == b"CERT"
    assert creds.private_key == b"KEY" and creds.server_name == "cloud.test"
    assert Credentials.from_config(EdgeConfig(token="t")).token == "t"
    assert Credentials().metadata == () and not Credentials().uses_tls


def test_credential_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="holds no token"):
        Credentials.from_config(EdgeConfig(token_file=str(tmp_path / "empty")))
    with pytest.raises(ConfigError, match="cannot read"):
        Credentials.from_config(EdgeConfig(tls_ca=str(tmp_path / "missing.pem")))
    with pytest.raises(ConfigError, match="together"):
        Credentials(certificate_chain=b"x")
    with pytest.raises(ConfigError, match="single line"):
        Credentials(token="a\nb")
    with pytest.raises(ConfigError, match="together"):
        EdgeConfig(tls_cert="c.pem")
