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
