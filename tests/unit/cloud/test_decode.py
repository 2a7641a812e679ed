"""Decoding placements agree, and every payload defect is a DecodeError with a clear message."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from PIL import Image

from splitserve.cloud._decode import Decoder, ImageLayout, TablesRef
from splitserve.cloud._metrics import Metrics
from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.core.errors import DecodeError


@pytest.fixture(scope="module")
def latent(tiny_bundle):
    bundle = Bundle.open(tiny_bundle)
    info = bundle.manifest.split("stem")
    rel = info.level(0).tables
    tables = bundle.tables("stem", 0)
    y = np.random.default_rng(0).normal(0, 3, info.latent_shape).astype(np.float32)
    data, q = codec.encode(y, tables)
    yield TablesRef(str(bundle.path(rel)), bundle.manifest.files[rel]), data, info.latent_shape, q, tables
    bundle.close()


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["inline", "thread", "process", "auto"])
def test_every_placement_decodes_the_same(latent, mode):
    ref, data, shape, q, tables = latent

    async def main():
        decoder = Decoder(mode, 2, Metrics(), inline_max_symbols=100 if mode == "auto" else 2048)
        try:
            await decoder.prepare([(ref, tables, int(np.prod(shape)))])
            return await decoder.latent(ref, data, shape, codec.symbols_crc32(q))
        finally:
            decoder.close()

    y_hat = asyncio.run(main())
    expected, _ = codec.decode(data, shape, tables)
    assert y_hat.dtype == np.float32 and np.array_equal(y_hat, expected)


def test_auto_decodes_small_latents_inline_and_starts_no_pool(latent):
    ref, data, shape, q, tables = latent

    async def main():
        decoder = Decoder("auto", 2, Metrics())
        await decoder.prepare([(ref, tables, int(np.prod(shape)))], max_pixels=28 * 28)
        assert decoder._executor is None
        await decoder.latent(ref, data, shape, codec.symbols_crc32(q))
        decoder.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d, c: (d[:-3], c), "bitstream"),
        (lambda d, c: (d + b"\x01", c), "bitstream"),
        (lambda d, c: (d, c ^ 0x10), "CRC32 mismatch"),
        (lambda d, c: (bytes(len(d)), c), "bitstream"),
    ],
)
def test_stream_defects_are_decode_errors(latent, mutate, message):
    ref, data, shape, q, _ = latent
    bad, crc = mutate(data, codec.symbols_crc32(q))

    async def main():
        await Decoder("inline", 1, Metrics()).latent(ref, bad, shape, crc)

    with pytest.raises(DecodeError, match=message):
        asyncio.run(main())


def test_a_worker_error_crosses_the_process_boundary_as_decode_error(latent):
    ref, data, shape, q, tables = latent

    async def main():
        decoder = Decoder("process", 1, Metrics())
        try:
            await decoder.prepare([(ref, tables, int(np.prod(shape)))])
            await decoder.latent(ref, data, shape, codec.symbols_crc32(q) ^ 1)
        finally:
            decoder.close()

    with pytest.raises(DecodeError, match="CRC32 mismatch"):
        asyncio.run(main())


@pytest.mark.parametrize(
    ("shape", "layout"),
    [
        ((28, 28), (28, 28, 1, False)),
        ((1, 28, 28), (28, 28, 1, True)),
        ((3, 32, 48), (32, 48, 3, True)),
        ((32, 48, 3), (32, 48, 3, False)),
    ],
)
def test_image_layouts(shape, layout):
    got = ImageLayout.from_shape(shape)
    assert (got.height, got.width, got.channels, got.channels_first) == layout


def test_image_layout_refuses_non_images():
    with pytest.raises(DecodeError, match="not an image layout"):
        ImageLayout.from_shape((16, 7, 7))


def test_png_decodes_to_the_model_layout_and_defects_are_decode_errors():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)
    gray = rng.integers(0, 255, (28, 28), dtype=np.uint8)
    decoder = Decoder("inline", 1, Metrics())

    async def decode(data, shape):
        return await decoder.image(data, ImageLayout.from_shape(shape))

    assert np.array_equal(asyncio.run(decode(_png(rgb), (3, 32, 48))), rgb.transpose(2, 0, 1))
    assert np.array_equal(asyncio.run(decode(_png(rgb), (32, 48, 3))), rgb)
    assert np.array_equal(asyncio.run(decode(_png(gray), (1, 28, 28)))[0], gray)
    for data, shape, message in [
        (b"\xff\xd8\xff\xe0 jpeg", (1, 28, 28), "not a PNG"),
        (_png(gray)[:60], (1, 28, 28), "PNG does not decode"),
        (_png(gray), (1, 32, 32), "PNG is 28x28, the model takes 32x32"),
        (_png(rgb), (1, 32, 48), "mode is 'RGB'"),
    ]:
        with pytest.raises(DecodeError, match=message):
            asyncio.run(decode(data, shape))


def _with_chunks(png: bytes, chunks: list[tuple[bytes, bytes]]) -> bytes:
    """``png`` with ``chunks`` (type, data) inserted after IHDR, each with its CRC."""
    import zlib

    ihdr_end = 8 + 12 + int.from_bytes(png[8:12], "big")
    extra = b"".join(len(d).to_bytes(4, "big") + t + d + zlib.crc32(t + d).to_bytes(4, "big") for t, d in chunks)
    return png[:ihdr_end] + extra + png[ihdr_end:]


def test_pathological_pngs_are_refused_before_decompression():
    import time
    import zlib

    gray = np.zeros((28, 28), dtype=np.uint8)
    decoder = Decoder("inline", 1, Metrics())
    layout = ImageLayout.from_shape((1, 28, 28))
    padded = _with_chunks(_png(gray), [(b"teXt", b"")] * 100_000)  # an unknown ancillary chunk, many times
    bomb = _with_chunks(_png(gray), [(b"zTXt", b"k\x00\x00" + zlib.compress(b"\x00" * (32 << 20)))])
    for data, message in ((padded, "more than 256 chunks"), (bomb, "'zTXt' is refused")):
        t0 = time.perf_counter()
        with pytest.raises(DecodeError, match=message):
            asyncio.run(decoder.image(data, layout))
        assert time.perf_counter() - t0 < 0.2
    ok = _with_chunks(_png(gray), [(b"pHYs", b"\x00" * 9)])  # a small ancillary chunk is fine
    assert asyncio.run(decoder.image(ok, layout)).shape == (1, 28, 28)


def test_lossy_offload_images_decode_and_only_baseline_stills_of_the_right_size_pass():
    from splitserve.core.offload import encode_image

    rng = np.random.default_rng(4)
    x = rng.integers(0, 255, (3, 32, 48), dtype=np.uint8)
    decoder = Decoder("inline", 1, Metrics())
    layout = ImageLayout.from_shape((3, 32, 48))

    def decode(data: bytes, codec_name: str, shape=(3, 32, 48)):  # noqa: ANN001
        return asyncio.run(decoder.image(data, ImageLayout.from_shape(shape), codec_name))

    for name in ("jpeg", "webp"):
        out = decode(encode_image(x, name, 90), name)
        assert out.shape == (3, 32, 48) and out.dtype == np.uint8
        assert np.abs(out.astype(int) - x).mean() < 60  # lossy, but the same picture
    progressive = io.BytesIO()
    Image.fromarray(x.transpose(1, 2, 0)).save(progressive, format="JPEG", quality=90, progressive=True)
    animated = io.BytesIO()
    frames = [Image.fromarray(x.transpose(1, 2, 0)), Image.fromarray(255 - x.transpose(1, 2, 0))]
    frames[0].save(animated, format="WEBP", save_all=True, append_images=frames[1:], quality=90)
    jpeg = encode_image(x, "jpeg", 90)
    for data, name, message in [
        (encode_image(x, "webp", 90), "jpeg", "not a JPEG"),  # the level names the codec
        (jpeg, "webp", "not a WEBP"),
        (_png(x.transpose(1, 2, 0)), "jpeg", "not a JPEG"),
        (jpeg[:40], "jpeg", "JPEG does not decode"),
        (progressive.getvalue(), "jpeg", "progressive JPEG is refused"),
        (animated.getvalue(), "webp", "2 frames is refused"),
        (jpeg + b"\x00" * (2 * 32 * 48 * 3 + 4096), "jpeg", "larger than any encoding"),
        (jpeg, "gif", "not a GIF"),
    ]:
        with pytest.raises(DecodeError, match=message):
            decode(data, name)
    with pytest.raises(DecodeError, match="JPEG is 48x32, the model takes 32x32"):
        decode(jpeg, "jpeg", (3, 32, 32))
    assert layout.channels == 3
