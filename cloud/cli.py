"""``splitserve cloud ...``: the click group the top-level CLI mounts (``python -m splitserve.cloud`` too)."""

from __future__ import annotations

import asyncio
import logging

import click

from splitserve.core.cli_errors import ErrorLineGroup
from splitserve.core.errors import SplitServeError

from .config import DECODE_MODES, CloudConfig
from .server import serve as _serve

__all__ = ["cloud"]


@click.group("cloud", cls=ErrorLineGroup)
def cloud() -> None:
    """The cloud endpoint: decode bitstreams from the edge and run the tails."""


@cloud.command("serve")
@click.option(
    "--bundle", "bundles", multiple=True, type=click.Path(exists=True), help="Bundle to serve (repeatable)."
)
@click.option(
    "--address", help="gRPC listen address HOST:PORT [SPLITSERVE_CLOUD_ADDRESS, default [::]:50051]."
)
@click.option(
    "--metrics-port", type=int, help="HTTP port of /metrics, /healthz, /readyz; -1 disables [9464]."
)
@click.option("--metrics-host", help="HTTP listen host [0.0.0.0].")
@click.option(
    "--triton",
    "triton_url",
    metavar="local|HOST:PORT",
    help="Tails on Triton: 'local' starts nvidia-pytriton's tritonserver; default: embedded ONNX Runtime.",
)
@click.option(
    "--tls-cert", type=click.Path(exists=True, dir_okay=False), help="PEM server certificate chain."
)
@click.option(
    "--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM private key of --tls-cert."
)
@click.option(
    "--tls-client-ca",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM CA: require client certificates.",
)
@click.option(
    "--tokens-file",
    type=click.Path(exists=True, dir_okay=False),
    help="Accepted bearer tokens, one per line.",
)
@click.option(
    "--trusted-keys",
    "trusted_keys_file",
    type=click.Path(exists=True, dir_okay=False),
    help="PEM Ed25519 public keys: serve only bundles signed by one of them (splitserve export --sign).",
)
@click.option("--max-message-bytes", type=int, help="Largest request accepted [4194304].")
@click.option("--max-inflight-per-client", type=int, help="Concurrent requests per client [64].")
@click.option("--decode-workers", type=int, help="Decode workers; 0 = one per core [0].")
@click.option("--decode-mode", type=click.Choice(DECODE_MODES), help="Where bitstreams are decoded [auto].")
@click.option("--decode-inline-max-symbols", type=int, help="auto: largest latent decoded inline [16384].")
@click.option("--embedded-threads", type=int, help="Concurrent ONNX Runtime batches per tail (embedded) [1].")
@click.option("--grace-s", type=float, help="Seconds in-flight requests get on SIGTERM [10].")
@click.option(
    "--metrics-linger-s", type=float, help="Seconds /metrics stays up after the drain (final scrape) [0]."
)
@click.option("--log-level", help="Logging level [INFO].")
def serve(bundles: tuple[str, ...], **flags: object) -> None:
    """Serve bundles over gRPC until SIGTERM (drains in-flight requests first); SIGHUP reloads them.

    Every flag defaults to its SPLITSERVE_CLOUD_* environment variable.
    """
    try:
        config = CloudConfig.from_env().with_overrides(bundles=bundles or None, **flags)
    except SplitServeError as exc:
        raise click.UsageError(str(exc)) from exc
    if not config.bundles:
        raise click.UsageError("no bundle to serve: pass --bundle PATH or set SPLITSERVE_CLOUD_BUNDLES")
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(_serve(config))  # a SplitServeError becomes one line, exit 2 (ErrorLineGroup)
