"""10,000 malformed requests against an endpoint process; it stays up, bounded, and still answers right.

Hypothesis draws 100 batch recipes (a seed and a set of mutation kinds, derandomized so every run sends
the same requests); each recipe expands into 100 malformed messages built from valid ones: 80 unary
calls in waves of 40 concurrent, and 20 items of one pipelined stream. Messages travel as raw bytes, so
some are not even valid protobuf. Every answer must be a client-error status (never INTERNAL or
UNKNOWN); only a damaged PNG may also be answered (a flipped bit or a cut can miss the pixel data).
"""

from __future__ import annotations

import random
import struct
import urllib.request
import zlib

import grpc
import psutil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from splitserve.core import codec
from splitserve.protos.v1 import inference_pb2 as pb

BATCHES = 100
PER_BATCH = 100
STREAM_ITEMS = 20
WAVE = 40
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
}
LATENT_MUTATIONS = (
    "random_data",
    "flip_bits",
    "truncate",
    "extend",
    "crc",
    "shape",
    "model",
    "version",
    "split",
    "level",
    "codec",
    "codec_version",
    "no_tensor",
    "long_field",
    "raw_garbage",
    "cut_message",
    "bad_utf8",
)
PNG_MUTATIONS = ("png_garbage", "png_flip", "png_truncate", "png_bomb", "png_wrong_size")
MUTATIONS = LATENT_MUTATIONS + PNG_MUTATIONS
ANSWERABLE = ("png_flip", "png_truncate")


def _png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))


def _flip(data: bytes, rng: random.Random, bits: int) -> bytes:
    out = bytearray(data)
    for _ in range(bits):
        i = rng.randrange(len(out))
        out[i] ^= 1 << rng.randrange(8)
    return bytes(out) if bytes(out) != data else data[:-1]


def _mutate(kind: str, latent: pb.InferRequest, png: pb.InferRequest, rng: random.Random) -> bytes:
    """One malformed message (serialized) of the given kind."""
    r = pb.InferRequest()
    r.CopyFrom(png if kind.startswith("png") else latent)
    r.request_id = f"{kind}-{rng.randrange(1 << 30)}"
    t = r.tensor
    if kind == "random_data":
        t.data = rng.randbytes(rng.randrange(0, 700))
    elif kind == "flip_bits":
        t.data = _flip(t.data, rng, rng.randint(1, 8))
    elif kind == "truncate":
        t.data = t.data[: rng.randrange(len(t.data))]
    elif kind == "extend":
        t.data = t.data + rng.randbytes(rng.randint(1, 64))
    elif kind == "crc":
        t.symbols_crc32 ^= rng.randrange(1, 1 << 32)
    elif kind == "shape":
        del t.shape[:]
        t.shape.extend(
            rng.choice([0, 1, 7, 8, 9, 28, 1 << 31, (1 << 32) - 1]) for _ in range(rng.randrange(6))
        )
        if list(t.shape) == list(latent.tensor.shape):
            t.shape[0] += 1
    elif kind == "model":
        r.model = rng.choice(["", "x", "fmnist", "FMNIST_RESNET", "../etc/passwd", "\u00e9\u4e2d\U0001f600"])
    elif kind == "version":
        r.version = rng.choice(["0", "2", "1.0", " 1", "latest", "-1"])
    elif kind == "split":
        r.split = rng.choice(["", "STEM", "layer2", "inputs", "stem ", "\x00"])
    elif kind == "level":
        r.level = rng.choice([2, 3, 255, (1 << 32) - 1])
    elif kind == "codec":
        t.codec = rng.choice(["", "png", "rans", "bigrans2", "BIGRANS"])
    elif kind == "codec_version":
        t.codec_version = rng.choice([0, codec.CODEC_VERSION + 1, 99, (1 << 32) - 1])
    elif kind == "no_tensor":
        r.ClearField("tensor")
    elif kind == "long_field":
        setattr(r, rng.choice(["request_id", "model", "version", "split"]), "z" * rng.randint(129, 20_000))
    elif kind == "png_garbage":
        t.data = rng.randbytes(rng.randrange(0, 900))
    elif kind == "png_flip":
        t.data = _flip(t.data, rng, rng.randint(1, 6))
    elif kind == "png_truncate":
        t.data = t.data[: rng.randrange(len(t.data))]
    elif kind == "png_bomb":
        t.data = _png_header(
            rng.choice([28, 60_000, 1 << 30]), rng.choice([60_000, 1 << 30])
        ) + rng.randbytes(64)
    elif kind == "png_wrong_size":
        t.data = _png_header(rng.randint(1, 27), 28) + rng.randbytes(32)
    data = r.SerializeToString()
    if kind == "raw_garbage":
        return rng.randbytes(rng.randrange(1, 400))
    if kind == "cut_message":  # the tensor is the last field: every strict prefix damages or drops it
        r.top_k = 0
        data = r.SerializeToString()
        return data[: rng.randrange(1, len(data))]
    if kind == "bad_utf8":
        return data + b"\x12\x03\xff\xfe\xfd"  # field 2 (model) as invalid UTF-8
    return data


def test_ten_thousand_malformed_requests(start_process, test_bundle, samples, cloud_helpers):
    server = start_process(["--bundle", str(test_bundle)])
    server.wait_ready()
    process = psutil.Process(server.proc.pid)
    channel = grpc.insecure_channel(server.target)
    infer = channel.unary_unary("/splitserve.v1.SplitInference/Infer")
    stream = channel.stream_stream("/splitserve.v1.SplitInference/InferStream")
    valid = samples.latent("stem", 0, 1)[0]
    latent, png = valid.request, samples.offload(1)[0].request
    seen: dict[str, int] = {"sent": 0, "answered": 0}
    rss: list[int] = []

    @settings(
        max_examples=BATCHES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(seed=st.integers(0, 2**32 - 1), kinds=st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=6))
    def batch(seed: int, kinds: list[str]) -> None:
        rng = random.Random(seed)
        plan = [rng.choice(kinds) for _ in range(PER_BATCH)]
        messages = [_mutate(kind, latent, png, rng) for kind in plan]
        unary = PER_BATCH - STREAM_ITEMS
        for start in range(0, unary, WAVE):
            calls = [
                (plan[i], infer.future(messages[i], timeout=30))
                for i in range(start, min(start + WAVE, unary))
            ]
            for kind, call in calls:
                error = call.exception()
                if error is None:
                    assert kind in ANSWERABLE, f"{kind} was answered as if valid"
                    seen["answered"] += 1
                else:
                    assert error.code() in CLIENT_ERRORS, f"{kind}: {error.code()} {error.details()}"
        replies = [pb.InferResponse.FromString(b) for b in stream(iter(messages[unary:]), timeout=60)]
        assert len(replies) == STREAM_ITEMS
        for reply in replies:
            kind = reply.request_id.split("-")[0] if reply.request_id else "?"
            if reply.HasField("error"):
                assert reply.error.code in {c.value[0] for c in CLIENT_ERRORS}, (kind, reply.error)
            else:
                assert kind in ANSWERABLE, f"{kind} stream item was answered as if valid"
                seen["answered"] += 1
        seen["sent"] += PER_BATCH
        rss.append(process.memory_info().rss)

    batch()

    assert seen["sent"] >= 10_000
    assert server.proc.poll() is None, "the endpoint died"
    warm, last = rss[len(rss) // 5], rss[-1]
    assert last - warm < 64 * 2**20, f"memory grew from {warm / 2**20:.0f} MiB to {last / 2**20:.0f} MiB"
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/healthz", timeout=5) as r:
        assert r.status == 200
    good = pb.InferResponse.FromString(infer(latent.SerializeToString(), timeout=10))
    cloud_helpers.assert_answers(good, valid)
