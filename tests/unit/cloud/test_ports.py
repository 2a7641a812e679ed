"""A port in use is refused in one clear line, before gRPC's C core or http.server get to it."""

from __future__ import annotations

import socket

import pytest

from splitserve.cloud._metrics import Metrics, MetricsHTTPServer
from splitserve.cloud.server import _check_port_free
from splitserve.core.errors import ConfigError


@pytest.fixture()
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def test_grpc_address_in_use_is_a_config_error(busy_port):
    with pytest.raises(ConfigError, match=rf"cannot listen on 127.0.0.1:{busy_port}: .*in use.*--address"):
        _check_port_free(f"127.0.0.1:{busy_port}")
    _check_port_free("127.0.0.1:0")  # any free port: nothing to check
    _check_port_free("no-such-host.invalid:50051")  # gRPC resolves and reports names itself


def test_metrics_port_in_use_is_a_config_error(busy_port):
    with pytest.raises(ConfigError, match=rf"cannot serve metrics on 127.0.0.1:{busy_port}: .*--metrics-port"):
        MetricsHTTPServer(Metrics(), "127.0.0.1", busy_port, lambda: True)


def test_idle_metrics_connections_are_closed_and_early_hangups_are_quiet(caplog):
    import time

    from splitserve.cloud import _metrics

    server = MetricsHTTPServer(Metrics(), "127.0.0.1", 0, lambda: True)
    server.start()
    try:
        original = _metrics.HTTP_IDLE_TIMEOUT_S
        idle = socket.create_connection(("127.0.0.1", server.port))
        idle.settimeout(original + 5)
        t0 = time.monotonic()
        assert idle.recv(1) == b""  # the server hangs up on a connection that sends nothing
        assert original - 1 < time.monotonic() - t0 < original + 5
        idle.close()
        half = socket.create_connection(("127.0.0.1", server.port))
        half.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        half.close()  # gone before the reply is written
        time.sleep(0.5)
        assert not [r for r in caplog.records if r.levelname == "ERROR"]
    finally:
        server.close()


def test_an_endpoint_with_trusted_keys_refuses_an_unsigned_bundle(tmp_path):
    import asyncio

    from splitserve.cloud.config import CloudConfig
    from splitserve.cloud.server import _open
    from splitserve.core.errors import BundleError
    from splitserve.core.signing import generate_key

    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(
        '{"format": "splitserve.bundle", "format_version": 1, "name": "m", "version": "1", "input": {"shape": [1, 2, 2], '
        '"dtype": "uint8"}, "classes": ["a"], "total_macs": 1, "unsplit_accuracy": 1, "splits": [], "local": {}, '
        '"offload": {}, "files": {}}'
    )
    config = CloudConfig(trusted_keys_file=str(generate_key(tmp_path / "k")))
    with pytest.raises(BundleError, match="not signed"):
        asyncio.run(_open(tmp_path / "b", config))
