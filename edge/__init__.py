"""The splitserve edge client: the library apps embed (torch-free).

::

    from splitserve.edge import EdgeClient, FixedPolicy

    with EdgeClient("bundle/", "cloud.example:50051", policy=FixedPolicy(split="layer1", level=0)) as client:
        result = client.infer(image)                  # one input
        for result in client.stream(frames):          # pipelined, results in input order
            print(result.label, result.computed, result.bytes_sent, result.timings.total_ms)

The default policy is the orchestrator (``min_latency``), which picks split, level, local or offload
per request from what it measures; a :class:`FixedPolicy` or ``"local"`` / ``"offload"`` /
``"SPLIT@LEVEL"`` pins one option. Whatever happens to the endpoint, every input gets one
:class:`Result`: the whole model runs on the device when the endpoint fails or cannot meet the deadline.
The errors a client raises (all :class:`SplitServeError`) are importable from here too.
"""

from __future__ import annotations

from splitserve.core.errors import AuthenticationError as AuthenticationError
from splitserve.core.errors import ConfigError as ConfigError
from splitserve.core.errors import DeadlineExceededError as DeadlineExceededError
from splitserve.core.errors import RequestError as RequestError
from splitserve.core.errors import SplitServeError as SplitServeError
from splitserve.core.errors import TransportError as TransportError
from splitserve.core.errors import UnavailableError as UnavailableError

from ._async import AsyncEdgeClient as AsyncEdgeClient
from ._base import BaseEdgeClient as BaseEdgeClient
from ._breaker import CircuitBreaker as CircuitBreaker
from ._config import Credentials as Credentials
from ._config import EdgeConfig as EdgeConfig
from ._policy import EdgePolicy as EdgePolicy
from ._policy import FixedPolicy as FixedPolicy
from ._results import Result as Result
from ._results import Timings as Timings
from ._runtime import EdgeRuntime as EdgeRuntime
from ._runtime import ImageLike as ImageLike
from ._runtime import load_session as load_session
from ._runtime import session_options as session_options
from ._sync import EdgeClient as EdgeClient
from ._transports import AsyncBaseTransport as AsyncBaseTransport
from ._transports import AsyncGrpcTransport as AsyncGrpcTransport
from ._transports import BaseTransport as BaseTransport
from ._transports import GrpcTransport as GrpcTransport
from ._transports import MockTransport as MockTransport
from ._transports import StreamCall as StreamCall
from ._transports.base import status_name as status_name

__all__ = [
    "AsyncBaseTransport",
    "AuthenticationError",
    "ConfigError",
    "DeadlineExceededError",
    "RequestError",
    "SplitServeError",
    "TransportError",
    "UnavailableError",
    "AsyncEdgeClient",
    "AsyncGrpcTransport",
    "BaseEdgeClient",
    "BaseTransport",
    "CircuitBreaker",
    "Credentials",
    "EdgeClient",
    "EdgeConfig",
    "EdgePolicy",
    "EdgeRuntime",
    "FixedPolicy",
    "GrpcTransport",
    "ImageLike",
    "MockTransport",
    "Result",
    "StreamCall",
    "Timings",
    "load_session",
    "session_options",
    "status_name",
]
