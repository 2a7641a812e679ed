"""The cloud half of splitserve: a gRPC endpoint that decodes bitstreams and runs the tails (torch-free).

::

    server, port = await create_server(CloudConfig(bundles=("bundle/",), address="127.0.0.1:0"))
    ...
    await server.stop()

See :mod:`splitserve.cloud.server` for the lifecycle and :mod:`splitserve.cloud.config` for settings.
"""

from __future__ import annotations

from ._backends import EmbeddedBackend as EmbeddedBackend
from ._backends import TailBackend as TailBackend
from ._backends import TailResult as TailResult
from ._triton import LocalTriton as LocalTriton
from ._triton import TritonBackend as TritonBackend
from .config import CloudConfig as CloudConfig
from .server import SERVICE_NAME as SERVICE_NAME
from .server import CloudServer as CloudServer
from .server import create_server as create_server
from .server import serve as serve
from .servicer import SplitInferenceServicer as SplitInferenceServicer

__all__ = [
    "SERVICE_NAME",
    "CloudConfig",
    "CloudServer",
    "EmbeddedBackend",
    "LocalTriton",
    "SplitInferenceServicer",
    "TailBackend",
    "TailResult",
    "TritonBackend",
    "create_server",
    "serve",
]
