"""The device runtime: input conversion, preloaded sessions, precision choice, payloads."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.core.errors import RequestError
from splitserve.core.wire import top_k
from splitserve.edge import EdgeRuntime
from splitserve.edge._runtime import _fastest, to_input
from splitserve.orchestrator import DeviceLatency

SHAPE = (1, 28, 28)


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 1, 28, 28), (28, 28), (28, 28, 1)])
def test_arrays_of_the_model_size(shape: tuple[int, ...]) -> None:
    a = np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)
    x = to_input(np.ascontiguousarray(a.reshape(shape)), SHAPE)
    assert x.shape == SHAPE and x.flags.c_contiguous
    np.testing.assert_array_equal(x[0], a)


def test_rgb_channels_last_are_transposed() -> None:
    a = np.random.default_rng(0).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(to_input(a, (3, 4, 5)), a.transpose(2, 0, 1))


def test_images_are_converted_and_resized() -> None:
    im = Image.new("RGB", (56, 56), (200, 10, 10))
    x = to_input(im, SHAPE)
    assert x.shape == SHAPE and x.dtype == np.uint8
    assert int(x[0, 0, 0]) == int(np.asarray(im.convert("L"))[0, 0])


def test_preprocess_resizes_the_short_side_then_crops_the_centre() -> None:
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, 18:22] = 255  # a bright bar in the middle
    x = to_input(Image.fromarray(a), (3, 10, 10), {"resize": 10, "crop": 10})
    assert x.shape == (3, 10, 10)
    assert x[:, :, 4:6].mean() > 200 and x[:, :, :3].max() == 0


def test_photos_of_any_size_and_encoded_bytes_get_the_bundles_preprocessing() -> None:
    photo = np.zeros((300, 400, 3), np.uint8)
    photo[:, 190:210] = 255  # a bright bar in the middle
    pre = {"resize": 24, "crop": 20}
    x = to_input(photo, (3, 20, 20), pre)
    assert x.shape == (3, 20, 20) and x[:, :, 9:11].mean() > 150 and x[:, :, :5].max() == 0
    np.testing.assert_array_equal(x, to_input(Image.fromarray(photo), (3, 20, 20), pre))
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="PNG")
    np.testing.assert_array_equal(to_input(buf.getvalue(), (3, 20, 20), pre), x)
    with pytest.raises(RequestError, match="cannot read image the given bytes"):
        to_input(b"\xff\xd8 not a jpeg", (3, 20, 20), pre)
    with pytest.raises(RequestError, match="not int"):
        to_input(7, (3, 20, 20), pre)


def test_files(tmp_path: Path) -> None:
    a = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    np.testing.assert_array_equal(to_input(tmp_path / "a.png", SHAPE)[0], a)
    np.testing.assert_array_equal(to_input(str(tmp_path / "a.png"), SHAPE)[0], a)
    (tmp_path / "b.png").write_bytes(b"not a png")
    with pytest.raises(RequestError, match="cannot read image"):
        to_input(tmp_path / "b.png", SHAPE)


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (np.zeros(SHAPE, np.float32), "uint8"),
        (np.zeros((2, 28, 28), np.uint8), "does not fit"),
        (b"bytes", "cannot read image the given bytes"),
        (3.5, "numpy array"),
    ],
)
def test_bad_inputs(value: object, match: str) -> None:
    with pytest.raises(RequestError, match=match):
        to_input(value, SHAPE)  # type: ignore[arg-type]


def test_top_k_is_a_sorted_softmax() -> None:
    classes, scores = top_k(np.array([1.0, 3.0, 2.0, 3.0], np.float32), 3)
    assert classes == (1, 3, 2)
    assert scores[0] == scores[1] > scores[2] and sum(top_k(np.zeros(4), 4)[1]) == pytest.approx(1.0)


def test_preloaded_heads_tables_and_payloads(bundle: Bundle, images: np.ndarray) -> None:
    rt = EdgeRuntime(bundle, ["layer1", "stem", "layer1"])
    assert list(rt.heads) == ["layer1", "stem"]
    assert set(rt.tables) == {(s.name, lv.level) for s in bundle.manifest.splits for lv in s.levels}
    assert rt.precisions == {"layer1": "int8", "stem": "int8", "local": "int8"}
    x = images[0]
    y = rt.head("stem", x)
    assert y.shape == bundle.manifest.split("stem").latent_shape and y.dtype == np.float32
    data, crc = rt.encode("stem", 1, y)
    _, q = codec.decode(data, y.shape, bundle.tables("stem", 1))
    assert crc == codec.symbols_crc32(q)
    assert rt.local(x).shape == (len(bundle.manifest.classes),)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(rt.png(x))))[None], x)
    d = rt.measure(repeats=3)
    assert set(d.head_ms) == {"layer1", "stem"} and min(d.head_ms.values()) > 0
    assert d.local_ms > 0 and d.offload_ms > 0


def test_precision_choice(bundle: Bundle, images: np.ndarray) -> None:
    fp32 = EdgeRuntime(bundle, ["stem"], precision="fp32")
    assert fp32.precisions == {"stem": "fp32", "local": "fp32"}
    auto = EdgeRuntime(bundle, ["stem"], precision="auto")
    assert set(auto.precisions.values()) <= {"int8", "fp32"}
    assert auto.local(images[0]).shape == fp32.local(images[0]).shape


def test_auto_keeps_the_faster_model() -> None:
    class Sleeper:
        def __init__(self, seconds: float) -> None:
            self.seconds, self.calls = seconds, 0

        def __call__(self, x: np.ndarray) -> np.ndarray:
            self.calls += 1
            time.sleep(self.seconds)
            return x

    slow, fast = Sleeper(0.002), Sleeper(0.0)
    assert _fastest([slow, fast], np.zeros(SHAPE, np.uint8)) is fast  # type: ignore[list-item]
    assert slow.calls == fast.calls > 20


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 5, 7)])
def test_png_payload_is_lossless_and_readable_by_pillow(shape: tuple[int, int, int]) -> None:
    from splitserve.edge._runtime import png_bytes

    x = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(x))))
    np.testing.assert_array_equal(decoded, x[0] if shape[0] == 1 else x.transpose(1, 2, 0))
    with pytest.raises(RequestError, match="1- or 3-channel"):
        png_bytes(np.zeros((2, 4, 4), np.uint8))


def test_slowdown_pads_every_kind_of_device_work(
    bundle: Bundle, images: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    import splitserve.edge._runtime as runtime_module

    slept: list[float] = []
    monkeypatch.setattr(runtime_module.time, "sleep", slept.append)
    x = images[0]
    fast, slow = EdgeRuntime(bundle, ["stem"], precision="fp32"), EdgeRuntime(bundle, ["stem"], precision="fp32", slowdown=4.0)
    y = fast.head("stem", x)
    fast.encode("stem", 1, y), fast.local(x), fast.png(x)
    assert slept == []  # slowdown 1: nothing padded
    t0 = time.perf_counter()
    assert np.array_equal(slow.head("stem", x), y)  # the same answers, only later
    slow.encode("stem", 1, y), slow.local(x), slow.png(x)
    elapsed = time.perf_counter() - t0
    assert len(slept) == 4 and all(s > 0 for s in slept)  # head, coding, local model, PNG
    assert sum(slept) <= 3.0 * elapsed  # each pad is 3x (slowdown - 1) the work it follows


def test_an_emulated_device_pads_each_kind_of_work_to_its_time(bundle: Bundle, images: np.ndarray) -> None:
    rt = EdgeRuntime(bundle, ["stem"], precision="fp32", slowdown=4.0)
    rt.emulate(DeviceLatency(head_ms={"stem": 30.0}, local_ms=40.0, offload_ms=20.0))  # absolute: slowdown unused
    x = images[0]

    def took_ms(fn, *args) -> float:  # noqa: ANN001
        t0 = time.perf_counter()
        fn(*args)
        return (time.perf_counter() - t0) * 1e3

    y = rt.head("stem", x)
    assert 30.0 <= took_ms(rt.head, "stem", x) < 30.0 + 25.0
    assert 40.0 <= took_ms(rt.local, x) < 40.0 + 25.0
    assert 20.0 <= took_ms(rt.png, x) < 20.0 + 25.0
    assert took_ms(rt.encode, "stem", 1, y) < 10.0  # a head's time includes its coding
    rt.emulate(None)
    assert took_ms(rt.local, x) < 40.0
