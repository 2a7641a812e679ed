"""``splitserve edge run``: classify images, folders of images or raw frames through an endpoint.

Inputs are read lazily and sent over one pipelined stream (``--unary`` for one call each); a progress
bar runs on stderr and a table with a summary is printed at the end (``--format jsonl`` prints one JSON
object per result instead). Every flag defaults to its ``SPLITSERVE_EDGE_*`` variable.

Accepted inputs:

- image files (PNG, JPEG, BMP, GIF, TIFF, WebP, PNM), converted and resized to the model's input;
- ``.npy`` uint8 arrays: one frame ``(C, H, W)``/``(H, W)`` or a batch ``(N, C, H, W)``/``(N, H, W)``;
- ``.raw`` / ``.bin`` / ``.u8`` files: frames of exactly the model's input size, back to back, uint8,
  in (C, H, W) order;
- folders, searched recursively for the above (in sorted order).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from numpy.typing import NDArray

from splitserve.core.bundle import Bundle
from splitserve.core.cli_errors import ErrorLineGroup
from splitserve.core.errors import SplitServeError

from ._config import PRECISIONS, EdgeConfig
from ._results import Result
from ._sync import EdgeClient

__all__ = ["IMAGE_SUFFIXES", "RAW_SUFFIXES", "edge", "iter_inputs"]

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}
)
RAW_SUFFIXES = frozenset({".raw", ".bin", ".u8"})
_NOTE_CHARS = 48


@dataclass(frozen=True)
class _Source:
    """One input: an image file, or frame ``index`` of a frames file."""

    name: str
    path: Path
    index: int | None = None


def _frames(path: Path, shape: tuple[int, ...]) -> NDArray[Any]:
    """The frames of a ``.npy`` or raw file as a (memory-mapped) batch ``(N, ...)``."""
    if path.suffix.lower() != ".npy":
        frame = math.prod(shape)
        size = path.stat().st_size
        if size == 0 or size % frame:
            raise click.UsageError(
                f"{path}: {size} bytes is not a whole number of {frame}-byte frames {shape}"
            )
        return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, *shape)
    a: NDArray[Any] = np.load(path, mmap_mode="r")
    if a.dtype != np.uint8:
        raise click.UsageError(f"{path}: .npy frames must be uint8, not {a.dtype}")
    c, h, w = shape
    if a.shape in (tuple(shape), (h, w, c)) or (c == 1 and a.shape == (h, w)):
        return a[None]
    if a.ndim == 4 or (c == 1 and a.ndim == 3):
        return a
    raise click.UsageError(
        f"{path}: an array of shape {a.shape} holds no frames of the model's input {shape}"
    )


def _sources(paths: tuple[Path, ...], shape: tuple[int, ...]) -> list[_Source]:
    out: list[_Source] = []
    for given in paths:
        files = sorted(p for p in given.rglob("*") if p.is_file()) if given.is_dir() else [given]
        for p in files:
            suffix = p.suffix.lower()
            if suffix in IMAGE_SUFFIXES:
                out.append(_Source(str(p), p))
            elif suffix == ".npy" or suffix in RAW_SUFFIXES:
                n = len(_frames(p, shape))
                out.extend(_Source(f"{p}[{i}]" if n > 1 else str(p), p, i) for i in range(n))
            elif not given.is_dir():
                raise click.UsageError(
                    f"{p}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))}) nor frames (.npy, "
                    f"{', '.join(sorted(RAW_SUFFIXES))})"
                )
    return out


def iter_inputs(paths: tuple[Path, ...], shape: tuple[int, ...]) -> tuple[list[str], Iterator[Any]]:
    """Names of every input under ``paths`` and a lazy iterator over the inputs themselves.

    Image files are yielded as paths (the client reads them); frames as uint8 arrays.

    Raises:
        click.UsageError: an unsupported file, or a frames file of the wrong size or dtype.
    """
    sources = _sources(paths, shape)

    def frames() -> Iterator[Any]:
        batch: tuple[Path, NDArray[Any]] | None = None
        for s in sources:
            if s.index is None:
                yield s.path
                continue
            if batch is None or batch[0] != s.path:
                batch = (s.path, _frames(s.path, shape))
            yield np.array(batch[1][s.index])

    return [s.name for s in sources], frames()


@click.group("edge", cls=ErrorLineGroup)
def edge() -> None:
    """The edge client: classify inputs on this device and the cloud endpoint."""


@edge.command("run")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--bundle", required=True, type=click.Path(exists=True, path_type=Path), help="The model bundle."
)
@click.option("--endpoint", help="Cloud endpoint HOST:PORT [SPLITSERVE_EDGE_ENDPOINT].")
@click.option("--policy", help="local | offload | SPLIT@LEVEL | an orchestrator policy [min_latency].")
@click.option("--timeout-s", type=float, help="Per-input deadline in seconds [1.0].")
@click.option("--max-inflight", type=int, help="Requests in flight on the stream [8].")
@click.option(
    "--token-file", type=click.Path(exists=True, dir_okay=False), help="File holding the bearer token."
)
@click.option(
    "--tls-ca", type=click.Path(exists=True, dir_okay=False), help="PEM CA of the endpoint (enables TLS)."
)
@click.option(
    "--tls-cert", type=click.Path(exists=True, dir_okay=False), help="PEM client certificate (mutual TLS)."
)
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), help="PEM key of --tls-cert.")
@click.option("--tls-server-name", help="Name the endpoint's certificate must carry.")
@click.option("--precision", type=click.Choice(PRECISIONS), help="Heads and local model [auto: the faster here].")
@click.option("--top-k", type=int, help="Classes per result [5].")
@click.option("--unary", is_flag=True, help="One call per input instead of the pipelined stream.")
@click.option("--limit", type=click.IntRange(min=1), help="Classify at most this many inputs.")
@click.option("--format", "fmt", type=click.Choice(["table", "jsonl"]), default="table", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bar on stderr.")
def run(
    inputs: tuple[Path, ...],
    bundle: Path,
    unary: bool,
    limit: int | None,
    fmt: str,
    progress: bool,
    **flags: Any,
) -> None:
    """Classify INPUTS (images, folders, .npy or raw frames) and print one row per input."""
    from tqdm.auto import tqdm

    # Splitserve errors (a bad bundle, a bad setting) propagate: the top-level command prints them as
    # one line, "error: ...", exit 2, as every splitserve command does.
    config = EdgeConfig.from_env().with_overrides(**flags)
    b = Bundle.open(bundle)
    names, frames = iter_inputs(inputs, b.manifest.input_shape)
    if limit is not None:
        names = names[:limit]
    if not names:
        b.close()
        skipped = _unsupported(inputs)
        shown = ", ".join(p.name for p in skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        raise SplitServeError(
            "no input found (images, .npy or raw frames)"
            + (f": skipped {len(skipped)} other files ({shown})" if skipped else ": the folders are empty")
        )
    results: list[Result] = []
    unreachable: str | None = None
    try:
        with EdgeClient(b, config=config) as client:
            if config.endpoint:
                try:
                    client.ping()
                except SplitServeError as exc:
                    unreachable = f"endpoint {config.endpoint} did not answer a ping ({exc})"
                    click.echo(f"warning: {unreachable}; inputs are answered on this device", err=True)
            feed = (frame for _, frame in zip(names, frames, strict=False))  # --limit may cut the inputs
            answers = (client.infer(f) for f in feed) if unary else client.stream(feed)
            bar = tqdm(answers, total=len(names), unit="input", disable=not progress, dynamic_ncols=True)
            for result in bar:
                results.append(result)
                bar.set_postfix_str(result.computed, refresh=False)
    finally:
        b.close()
    if fmt == "jsonl":
        for name, r in zip(names, results, strict=True):
            click.echo(json.dumps({"input": name, **asdict(r)}))
    else:
        click.echo(_table(names, results))
        click.echo(_summary(results))
    note = _why_local(results, config, unreachable)
    if note:
        click.echo(note, err=True)
    if unreachable and not any(r.remote for r in results):
        raise SystemExit(3)


def _unsupported(paths: tuple[Path, ...]) -> list[Path]:
    """Files under ``paths`` that are neither images nor frames."""
    accepted = IMAGE_SUFFIXES | RAW_SUFFIXES | {".npy"}
    files = [p for given in paths for p in (sorted(given.rglob("*")) if given.is_dir() else [given])]
    return [p for p in files if p.is_file() and p.suffix.lower() not in accepted]


def _why_local(results: list[Result], config: EdgeConfig, unreachable: str | None) -> str | None:
    """A note when nothing was sent although an endpoint is configured, saying why and what sends."""
    if not config.endpoint or any(r.remote for r in results):
        return None
    if unreachable:
        return f"note: every input was answered on this device because the {unreachable}."
    if any(r.fallback_reason for r in results):
        return None
    return (
        f"note: every input ran on this device: the orchestrator ({config.policy}) expected it to be faster "
        "than sending; --policy offload or --policy SPLIT@LEVEL (see `splitserve eval BUNDLE`) sends them."
    )


def _table(names: list[str], results: list[Result]) -> str:
    width = min(max((len(n) for n in names), default=5), 40)
    head = f"{'#':>5}  {'input':{width}}  {'class':14}  {'score':>6}  {'where':7}  {'split':8}  {'lvl':>3}  "
    head += f"{'bytes':>6}  {'ms':>7}  note"
    rows = [head, "-" * len(head)]
    for i, (name, r) in enumerate(zip(names, results, strict=True)):
        shown = name if len(name) <= width else "..." + name[-(width - 3) :]
        note = (r.fallback_reason or "")[:_NOTE_CHARS]
        level = "" if r.level is None else str(r.level)
        rows.append(
            f"{i:>5}  {shown:{width}}  {r.label[:14]:14}  {r.scores[0]:6.3f}  {r.computed:7}  "
            f"{r.split or '':8}  {level:>3}  {r.bytes_sent:6d}  {r.timings.total_ms:7.2f}  {note}"
        )
    return "\n".join(rows)


def _summary(results: list[Result]) -> str:
    total = np.array([r.timings.total_ms for r in results])
    where = {k: sum(r.computed == k for r in results) for k in ("split", "offload", "local")}
    fallbacks = sum(r.fallback_reason is not None for r in results)
    sent = [r.bytes_sent for r in results if r.remote]
    return (
        f"{len(results)} inputs: "
        + ", ".join(f"{k} {v}" for k, v in where.items())
        + f" ({fallbacks} fallbacks); "
        f"latency p50 {np.percentile(total, 50):.2f} ms, p95 {np.percentile(total, 95):.2f} ms; "
        f"mean bytes sent per remote input {np.mean(sent) if sent else 0:.1f}"
    )
