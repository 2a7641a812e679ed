"""A two-namespace network lab whose uplink bandwidth the kernel shapes along a trace.

::

    netns <prefix>-edge                                  netns <prefix>-cloud
    ┌───────────────────────────────┐                    ┌──────────────────────────────────────────┐
    │ edge client ──► veth E        │──── veth pair ────►│ veth C ──► delay relay ──► endpoint      │
    │   root qdisc: tbf rate R      │   10.213.x.y/30    │  (cloud_ip:port)  (+d ms    (127.0.0.1)   │
    │     └─ pfifo_fast: band 1 =   │                    │                   each way)              │
    │        traffic, band 2 = fill │◄───────────────────│ replies, unshaped                        │
    └───────────────────────────────┘                    └──────────────────────────────────────────┘

- **Bandwidth**: ``tc qdisc change dev E root tbf rate R burst B latency L`` at every trace sample (the
  kernel shapes; nothing here paces bytes in user space).
- **Small messages**: a token bucket lets up to ``B`` bytes (at least one MTU) through at line rate after
  an idle spell, so a 200-byte request would never see a 64 kbit/s link. A *filler* keeps the bucket
  empty: UDP datagrams with ``SO_PRIORITY`` 1 land in pfifo_fast's lowest band, real traffic (priority 0)
  in the band above, and tbf always dequeues the highest band first, so every request packet waits for
  its own tokens, as on a busy link it has to itself. Filler datagrams are small (at most half a
  millisecond of link time, at most 200 bytes) and few are queued at a time. The filler runs only at
  rates up to ``max_bps`` (2 Mbit/s: above that, a 3 KB burst costs at most 12 ms, a request a few).
- **Propagation delay**: ``netem`` is not available here, so an asyncio TCP relay in the cloud namespace
  forwards every chunk after a fixed one-way delay in each direction (round trip + 2 x delay).
- **Helpers run as processes** (``python -m benchmarks.netlab relay|filler|endpoint`` under ``ip netns
  exec``, steered by lines on stdin), so they never share an interpreter lock with the client under test.
  ``endpoint`` is a stand-in server for emulated runs (it waits the server time a request asks for).
- **Scope and bounds**: the namespaces, the veth pair and its /30 exist only for the lab's lifetime; no
  route, address or qdisc outside them is touched. Every command has a timeout and the lab refuses more
  than ``max_commands``. Teardown (``ip netns del`` of both, which also removes the veth pair) runs on
  exit of the ``with`` block and, as a last resort, at interpreter exit.

Needs root and iproute2 (``ip``, ``tc``); :func:`unavailable_reason` says why a lab cannot be built.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import itertools
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:  # the helper processes start faster without numpy
    from splitserve.orchestrator import Trace

__all__ = [
    "ENDPOINT_REPLY",
    "ENDPOINT_REQUEST",
    "DelayRelay",
    "Filler",
    "HelperProcess",
    "Netlab",
    "NetlabError",
    "TraceFollower",
    "in_netns",
    "unavailable_reason",
]

Side = Literal["edge", "cloud"]
_CLONE_NEWNET = 0x40000000
_NETNS_DIR = "/run/netns"
_MIN_RATE_BPS = 1000.0
_FILLER_PRIORITY = 1  # pfifo_fast priomap: priority 1 -> band 2 (lowest); ordinary traffic (0) -> band 1
_MTU_FRAME = 1514
_UDP_FRAME_OVERHEAD = 42  # Ethernet + IPv4 + UDP headers
_counter = itertools.count()
_REPO_ROOT = Path(__file__).resolve().parents[1]


class NetlabError(RuntimeError):
    """A lab command failed, timed out, or the lab's command budget is spent."""


def unavailable_reason() -> str | None:
    """Why no lab can be built here, or ``None`` when it can (root, ``ip``, ``tc``, ``ip netns``)."""
    if os.geteuid() != 0:
        return "network namespaces and tc need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` (iproute2) is not installed"
    probe = f"ssvprobe-{os.getpid()}-{next(_counter)}"
    try:
        add = subprocess.run(
            ["ip", "netns", "add", probe], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`ip netns add` failed: {exc}"
    if add.returncode != 0:
        return f"`ip netns add` failed: {add.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=10, check=False)
    return None


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the body with the *calling thread* in network namespace ``name``.

    Sockets created inside stay in that namespace after the block ends, so a thread can create its
    sockets here and use them anywhere. Other threads are unaffected.
    """
    with (
        open(f"/proc/self/task/{threading.get_native_id()}/ns/net") as home,
        open(f"{_NETNS_DIR}/{name}") as ns,
    ):
        _setns(ns.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


@dataclass(frozen=True)
class _Names:
    edge_ns: str
    cloud_ns: str
    edge_if: str
    cloud_if: str
    edge_ip: str
    cloud_ip: str


def _names(tag: str) -> _Names:
    pid, n = os.getpid(), next(_counter)
    subnet = (pid * 7 + n) % 16384  # 16384 /30 subnets in 10.213.0.0/16; only visible inside the lab
    base = f"10.213.{subnet >> 6}.{(subnet & 63) << 2}"
    prefix = base.rsplit(".", 1)[0]
    last = int(base.rsplit(".", 1)[1])
    short = f"{pid % 100000}{n % 10}"
    return _Names(
        edge_ns=f"{tag}-{pid}-{n}-edge",
        cloud_ns=f"{tag}-{pid}-{n}-cloud",
        edge_if=f"{tag}{short}e"[:15],
        cloud_if=f"{tag}{short}c"[:15],
        edge_ip=f"{prefix}.{last + 1}",
        cloud_ip=f"{prefix}.{last + 2}",
    )


class Netlab:
    """Two namespaces joined by a veth pair whose edge-to-cloud direction tbf shapes.

    Args:
        rate_bps: initial uplink rate.
        tag: name prefix of the namespaces and interfaces.
        latency_ms: tbf ``latency`` (how long a packet may wait in tbf's own queue).
        cmd_timeout_s: timeout of every ``ip``/``tc`` command.
        max_commands: the most commands this lab may run (rate changes included).
    """

    def __init__(
        self,
        *,
        rate_bps: float = 10e6,
        tag: str = "ssv",
        latency_ms: float = 1000.0,
        cmd_timeout_s: float = 5.0,
        max_commands: int = 5000,
    ) -> None:
        self.names = _names(tag)
        self.rate_bps = rate_bps
        self.latency_ms = latency_ms
        self.cmd_timeout_s = cmd_timeout_s
        self.max_commands = max_commands
        self.commands = 0
        self._up = False
        self._lock = threading.Lock()

    @property
    def edge_ip(self) -> str:
        return self.names.edge_ip

    @property
    def cloud_ip(self) -> str:
        return self.names.cloud_ip

    def namespace(self, side: Side) -> str:
        return self.names.edge_ns if side == "edge" else self.names.cloud_ns

    def __enter__(self) -> Netlab:
        atexit.register(self.close)
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _setup(self) -> None:
        n = self.names
        self._up = True
        self._cmd(f"ip netns add {n.edge_ns}")
        self._cmd(f"ip netns add {n.cloud_ns}")
        self._cmd(
            f"ip -n {n.edge_ns} link add {n.edge_if} type veth peer name {n.cloud_if} netns {n.cloud_ns}"
        )
        self._cmd(f"ip -n {n.edge_ns} addr add {n.edge_ip}/30 dev {n.edge_if}")
        self._cmd(f"ip -n {n.cloud_ns} addr add {n.cloud_ip}/30 dev {n.cloud_if}")
        for ns, dev in (
            (n.edge_ns, n.edge_if),
            (n.cloud_ns, n.cloud_if),
            (n.edge_ns, "lo"),
            (n.cloud_ns, "lo"),
        ):
            self._cmd(f"ip -n {ns} link set {dev} up")
        self._cmd(
            f"tc -n {n.edge_ns} qdisc add dev {n.edge_if} root handle 1: tbf {self._tbf_args(self.rate_bps)}"
        )
        self._cmd(f"tc -n {n.edge_ns} qdisc add dev {n.edge_if} parent 1:1 handle 10: pfifo_fast")

    @staticmethod
    def burst_bytes(rate_bps: float) -> int:
        """tbf bucket size at ``rate_bps``: two full frames or 1 ms of traffic, whichever is more."""
        return max(2 * _MTU_FRAME, int(max(float(rate_bps), _MIN_RATE_BPS) / 8 * 0.001))

    def _tbf_args(self, rate_bps: float) -> str:
        rate = max(float(rate_bps), _MIN_RATE_BPS)
        return f"rate {int(rate)}bit burst {self.burst_bytes(rate)} latency {int(self.latency_ms)}ms"

    def set_rate(self, rate_bps: float) -> None:
        """Change the uplink rate (rates below 1 kbit/s become 1 kbit/s: an outage in practice)."""
        n = self.names
        self._cmd(
            f"tc -n {n.edge_ns} qdisc change dev {n.edge_if} root handle 1: tbf {self._tbf_args(rate_bps)}"
        )
        self.rate_bps = rate_bps

    def qdisc_stats(self) -> str:
        """``tc -s qdisc show`` of the shaped interface (for diagnostics)."""
        n = self.names
        return self._cmd(f"tc -s -n {n.edge_ns} qdisc show dev {n.edge_if}")

    def exec_prefix(self, side: Side) -> list[str]:
        """The command prefix that runs a program in one namespace (``ip netns exec NS``).

        Start children through it rather than from a thread inside the namespace: a fork from such a
        thread lets libraries with fork handlers (gRPC restarts its threads in the forking thread)
        move their threads into the namespace.
        """
        return ["ip", "netns", "exec", self.namespace(side)]

    def popen(self, side: Side, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside one namespace (:meth:`exec_prefix`); the caller stops it.

        Args:
            side: ``"edge"`` or ``"cloud"``.
            argv: the command.
            **kwargs: passed to :class:`subprocess.Popen`.
        """
        return subprocess.Popen([*self.exec_prefix(side), *argv], **kwargs)

    @contextlib.contextmanager
    def inside(self, side: Side) -> Iterator[None]:
        """The calling thread in one of the lab's namespaces for the block (see :func:`in_netns`)."""
        with in_netns(self.namespace(side)):
            yield

    def socket(self, side: Side, kind: int = socket.SOCK_STREAM) -> socket.socket:
        """A new IPv4 socket that lives in one of the lab's namespaces."""
        with self.inside(side):
            return socket.socket(socket.AF_INET, kind)

    def close(self) -> None:
        """Delete both namespaces (and with them the veth pair); safe to call twice."""
        with self._lock:
            if not self._up:
                return
            self._up = False
        for ns in (self.names.edge_ns, self.names.cloud_ns):
            subprocess.run(
                ["ip", "netns", "del", ns], capture_output=True, timeout=self.cmd_timeout_s, check=False
            )
        atexit.unregister(self.close)

    def _cmd(self, command: str) -> str:
        """Run one ``ip``/``tc`` command (words split on spaces; every name here is space-free)."""
        with self._lock:
            if not self._up:
                raise NetlabError("the lab is closed")
            if self.commands >= self.max_commands:
                raise NetlabError(f"command budget of {self.max_commands} spent")
            self.commands += 1
        try:
            out = subprocess.run(
                command.split(), capture_output=True, text=True, timeout=self.cmd_timeout_s, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise NetlabError(f"`{command}` timed out after {self.cmd_timeout_s} s") from exc
        if out.returncode != 0:
            raise NetlabError(f"`{command}` failed: {out.stderr.strip()}")
        return out.stdout


class HelperProcess:
    """A helper process inside one namespace (``python -m benchmarks.netlab <argv>``), steered by stdin.

    It prints ``ready <port>`` once serving; ``quit`` (or stdin closing) ends it. Runs as its own process
    so that it never shares an interpreter lock with the code under test. The caller closes it.
    """

    def __init__(
        self, lab: Netlab, side: Side, argv: Sequence[str], *, ready_timeout_s: float = 20.0
    ) -> None:
        self._proc = lab.popen(
            side,
            [sys.executable, "-m", __spec__.name if __spec__ else "benchmarks.netlab", *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=_REPO_ROOT,
            text=True,
            bufsize=1,
        )
        self.port = 0
        assert self._proc.stdout is not None and self._proc.stdin is not None
        self._stdin: IO[str] = self._proc.stdin
        ready, _, _ = select.select([self._proc.stdout], [], [], ready_timeout_s)
        line = self._proc.stdout.readline() if ready else ""
        if not line.startswith("ready"):
            self.close()
            raise NetlabError(f"helper {argv[0]} did not start within {ready_timeout_s} s: {line!r}")
        self.port = int(line.split()[1])

    def send(self, line: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._stdin.write(line + "\n")

    def close(self) -> None:
        self.send("quit")
        with contextlib.suppress(OSError, ValueError):
            self._stdin.close()
        try:
            self._proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=5.0)
        if self._proc.stdout is not None:
            self._proc.stdout.close()


class Filler:
    """Low-priority UDP traffic that keeps the shaped link's token bucket empty (see the module doc).

    A helper process in the edge namespace sends the datagrams; a socket bound in the cloud namespace
    swallows them (never read: the kernel drops what overflows its buffer, silently).

    Args:
        lab: the lab.
        overdrive: offered filler rate relative to the link rate.
        max_bps: link rates above this get no filler.
    """

    def __init__(self, lab: Netlab, *, overdrive: float = 1.25, max_bps: float = 2e6) -> None:
        self.lab, self.overdrive, self.max_bps = lab, overdrive, max_bps
        self._rate_bps = lab.rate_bps
        self._sink = lab.socket("cloud", socket.SOCK_DGRAM)
        self._sink.bind((lab.cloud_ip, 0))
        self._child: HelperProcess | None = None

    @property
    def rate_bps(self) -> float:
        return self._rate_bps

    @rate_bps.setter
    def rate_bps(self, value: float) -> None:
        self._rate_bps = value
        if self._child is not None:  # a rate change refills tbf's bucket: the filler empties it at once
            self._child.send(f"rate {self._offered(value)} {Netlab.burst_bytes(value)}")

    def _offered(self, rate_bps: float) -> float:
        return 0.0 if rate_bps > self.max_bps else self.overdrive * rate_bps

    def __enter__(self) -> Filler:
        dest = f"{self.lab.cloud_ip}:{self._sink.getsockname()[1]}"
        self._child = HelperProcess(self.lab, "edge", ["filler", dest, str(self._offered(self._rate_bps))])
        return self

    def __exit__(self, *exc: object) -> None:
        if self._child is not None:
            self._child.close()
        self._sink.close()


class DelayRelay:
    """A TCP relay in the cloud namespace that delays every chunk by ``one_way_ms`` in each direction.

    Listens on ``(lab.cloud_ip, port)`` and forwards to ``target`` (an address inside the cloud
    namespace, e.g. the endpoint on loopback). Runs as a helper process; ``one_way_ms`` may be changed
    while it runs.

    Args:
        lab: the lab.
        target: where to forward, as seen from the cloud namespace.
        one_way_ms: delay added to each direction.
        max_connections: connections served at once (more are refused).
        idle_timeout_s: a connection idle this long is closed.
    """

    def __init__(
        self,
        lab: Netlab,
        target: tuple[str, int],
        *,
        one_way_ms: float = 10.0,
        max_connections: int = 32,
        idle_timeout_s: float = 60.0,
    ) -> None:
        self.lab, self.target = lab, target
        self._one_way_ms = one_way_ms
        self._argv = [
            "relay",
            f"{lab.cloud_ip}:0",
            f"{target[0]}:{target[1]}",
            str(one_way_ms),
            str(max_connections),
            str(idle_timeout_s),
        ]
        self._child: HelperProcess | None = None
        self.address: tuple[str, int] = (lab.cloud_ip, 0)

    @property
    def one_way_ms(self) -> float:
        return self._one_way_ms

    @one_way_ms.setter
    def one_way_ms(self, value: float) -> None:
        self._one_way_ms = value
        if self._child is not None:
            self._child.send(f"delay {value}")

    def __enter__(self) -> DelayRelay:
        self._child = HelperProcess(self.lab, "cloud", self._argv)
        self.address = (self.lab.cloud_ip, self._child.port)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._child is not None:
            self._child.close()


class _RelayServer:
    """The relay's event loop (runs in the helper process)."""

    def __init__(
        self, target: tuple[str, int], one_way_ms: float, max_connections: int, idle_timeout_s: float
    ):
        self.target, self.one_way_ms = target, one_way_ms
        self.max_connections, self.idle_timeout_s = max_connections, idle_timeout_s
        self._writers: set[asyncio.StreamWriter] = set()

    async def serve(self, listen: tuple[str, int]) -> None:
        """Serve until ``quit`` or the end of stdin; ``delay <ms>`` lines change the delay."""
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(
            self._handle, *listen, limit=1 << 16, backlog=self.max_connections
        )
        print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
        control = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(control), sys.stdin)
        while line := (await control.readline()).decode().split():
            if line[0] == "quit":
                break
            if line[0] == "delay":
                self.one_way_ms = float(line[1])
        server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        up_writer = None
        try:
            if len(self._writers) > 2 * self.max_connections:
                return
            up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*self.target), 5.0)
            self._writers.add(up_writer)
            pumps = {
                asyncio.create_task(self._pump(reader, up_writer)),
                asyncio.create_task(self._pump(up_reader, writer)),
            }
            done, rest = await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            if all(t.result() for t in done):  # a clean end of stream: let the other direction finish
                done, rest = await asyncio.wait(rest, timeout=self.idle_timeout_s)
            for task in rest:  # a reset, or the other direction idles on: drop the connection
                task.cancel()
            await asyncio.gather(*rest, return_exceptions=True)
        except (TimeoutError, OSError, asyncio.CancelledError):  # cancelled: the relay is closing
            pass
        finally:
            for w in (writer, up_writer):
                if w is not None:
                    w.transport.abort()
                    self._writers.discard(w)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Copy one direction, each chunk ``one_way_ms`` after it arrived; True on a clean end of stream."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            with contextlib.suppress(OSError, RuntimeError):  # the peer went away
                while True:
                    due, data = await chunks.get()
                    if not data:
                        writer.write_eof()
                        return
                    await asyncio.sleep(max(due - loop.time(), 0.0))
                    writer.write(data)
                    await writer.drain()

        sender = asyncio.create_task(deliver())
        ended = False
        try:
            while True:
                data = await asyncio.wait_for(reader.read(1 << 16), self.idle_timeout_s)
                chunks.put_nowait((loop.time() + self.one_way_ms / 1000.0, data))
                if not data:
                    ended = True
                    break
        except (TimeoutError, OSError):
            pass
        finally:
            if not ended:  # a reset, an idle timeout, or the relay shutting down
                sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        return ended


ENDPOINT_REQUEST = struct.Struct("!Iff")
"""Emulated endpoint request header: body length, server ms to spend, queue ms to add; then the body."""
ENDPOINT_REPLY = struct.Struct("!5f")
"""Emulated endpoint reply: decode, queue, tail, total, queue_delay (ms), as ``ServerTimings``."""


async def _serve_endpoint() -> None:
    """An endpoint stand-in on loopback: read a request, wait its server time, reply with timings."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            while True:
                size, server_ms, queue_ms = ENDPOINT_REQUEST.unpack(
                    await reader.readexactly(ENDPOINT_REQUEST.size)
                )
                await reader.readexactly(size)
                await asyncio.sleep((server_ms + queue_ms) / 1000.0)
                writer.write(
                    ENDPOINT_REPLY.pack(
                        0.25 * server_ms, queue_ms, 0.75 * server_ms, server_ms + queue_ms, queue_ms
                    )
                )
                await writer.drain()
        writer.transport.abort()

    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=64)
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    control = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(control), sys.stdin)
    while (await control.readline()).strip() not in (b"quit", b""):
        pass
    server.close()
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _run_filler(dest: tuple[str, int], rate_bps: float) -> None:
    """Send filler datagrams at ``rate_bps`` until ``quit``.

    ``rate <bps> <burst>`` lines change the rate and send ``burst`` bytes at once (tbf refills its bucket
    when its rate changes).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PRIORITY, _FILLER_PRIORITY)
    # a tiny send buffer keeps only a few datagrams queued: none linger after the rate drops
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.setblocking(False)
    print("ready 0", flush=True)
    credit, last, pending = 0.0, time.monotonic(), b""
    while True:
        ready, _, _ = select.select([0], [], [], 0.002)
        if ready:  # read the fd itself: a buffered readline() would hide further lines from select()
            data = os.read(0, 4096)
            if not data:
                break
            *lines, pending = (pending + data).split(b"\n")
            commands = [line.split() for line in lines if line.strip()]
            if any(c[0] == b"quit" for c in commands):
                break
            for c in commands:
                if c[0] == b"rate":
                    rate_bps = float(c[1])
                    credit += float(c[2]) if rate_bps > 0 else 0.0
        now = time.monotonic()
        # half a millisecond of link time each, and never much bigger than a request's first packet: a
        # request finds at most one filler datagram's worth of tokens in the bucket
        size = int(min(max(rate_bps / 8 * 0.0005 - _UDP_FRAME_OVERHEAD, 1), 200))
        credit = min(credit + rate_bps / 8 * (now - last), max(16 * size, credit))
        last = now
        while credit >= size:
            credit -= size
            with contextlib.suppress(OSError):  # ENOBUFS when the lowest band is full: fine
                sock.sendto(b"\0" * size, dest)
    sock.close()


def _address(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> None:
    """Helper processes the lab starts inside its namespaces (not meant to be run by hand)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["relay"]:
        listen, target, one_way_ms, max_conn, idle_s = args[1:6]
        relay = _RelayServer(_address(target), float(one_way_ms), int(max_conn), float(idle_s))
        asyncio.run(relay.serve(_address(listen)))
    elif args[:1] == ["filler"]:
        _run_filler(_address(args[1]), float(args[2]))
    elif args[:1] == ["endpoint"]:
        asyncio.run(_serve_endpoint())
    else:
        raise SystemExit("usage: python -m benchmarks.netlab relay|filler|endpoint ...")


class TraceFollower:
    """Drives the lab along a trace: tbf rate, relay delay (half the RTT each way) and filler rate.

    Args:
        lab: the lab.
        trace: the trace; samples shorter than ``min_step_s`` are merged (bounds the ``tc`` commands).
        relay: the delay relay to follow the trace's RTT, if any.
        filler: the filler to follow the rate, if any.
        min_step_s: shortest interval between two rate changes.
    """

    def __init__(
        self,
        lab: Netlab,
        trace: Trace,
        *,
        relay: DelayRelay | None = None,
        filler: Filler | None = None,
        min_step_s: float = 0.5,
    ) -> None:
        self.lab, self.relay, self.filler = lab, relay, filler
        self.trace = trace if trace.dt_s >= min_step_s else trace.resampled(min_step_s)
        self.start_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="netlab-trace", daemon=True)

    def __enter__(self) -> TraceFollower:
        self._apply(0)
        self.start_s = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.lab.cmd_timeout_s + 1.0)

    def elapsed_s(self) -> float:
        return time.monotonic() - self.start_s

    def _apply(self, k: int) -> None:
        tr = self.trace
        self.lab.set_rate(float(tr.bandwidth_bps[k]))
        if self.relay is not None:
            self.relay.one_way_ms = float(tr.rtt_ms[k]) / 2.0
        if self.filler is not None:
            self.filler.rate_bps = max(float(tr.bandwidth_bps[k]), _MIN_RATE_BPS)

    def _run(self) -> None:
        tr = self.trace
        for k in range(1, len(tr.bandwidth_bps)):
            if self._stop.wait(max(self.start_s + k * tr.dt_s - time.monotonic(), 0.0)):
                return
            if tr.bandwidth_bps[k] != tr.bandwidth_bps[k - 1] or tr.rtt_ms[k] != tr.rtt_ms[k - 1]:
                self._apply(k)


if __name__ == "__main__":
    main()
