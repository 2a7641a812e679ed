"""The wire codec: round trips, escapes, chunking, corruption, rate, and bit-exactness across processes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from splitserve.core import codec
from splitserve.core.codec import EntropyTables
from splitserve.core.errors import CodecError, CodecVersionError, DecodeError


def make_tables(channels: int, bins: int = 11, step: float = 1.0, seed: int = 0) -> EntropyTables:
    """Discretized Gaussians of different widths per channel, plus an escape bin of frequency 1."""
    rng = np.random.default_rng(seed)
    rows = []
    for _c in range(channels):
        width = 0.3 + 3 * rng.random()
        p = np.exp(-0.5 * ((np.arange(bins) - bins // 2) / width) ** 2)
        f = np.maximum(1, np.floor(p / p.sum() * ((1 << 16) - bins - 1))).astype(int).tolist() + [1]
        f[bins // 2] += (1 << 16) - sum(f)
        rows.append(tuple(f))
    return EntropyTables(
        step=step,
        medians=tuple(rng.normal(0, 0.2, channels).tolist()),
        offsets=tuple([-(bins // 2)] * channels),
        freqs=tuple(rows),
    )


class TestEntropyTables:
    def test_json_round_trip(self, tmp_path):
        t = make_tables(4)
        t.save(tmp_path / "t.json")
        assert EntropyTables.load(tmp_path / "t.json") == t

    def test_rejects_bad_frequencies(self):
        t = make_tables(2)
        with pytest.raises(CodecError, match="sum to 65536"):
            EntropyTables(step=1.0, medians=(0.0,), offsets=(0,), freqs=((1, 2, 3),))
        with pytest.raises(CodecError, match="invalid step"):
            EntropyTables(step=0.0, medians=t.medians, offsets=t.offsets, freqs=t.freqs)

    def test_rejects_unknown_version(self):
        d = make_tables(2).to_dict()
        d["codec_version"] = 99
        with pytest.raises(CodecVersionError, match="not supported"):
            EntropyTables.from_dict(d)


class TestRoundTrip:
    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(
        channels=st.integers(1, 6),
        h=st.integers(1, 9),
        w=st.integers(1, 9),
        scale=st.floats(0.1, 8.0),
        seed=st.integers(0, 2**16),
    )
    def test_decode_inverts_encode(self, channels, h, w, scale, seed):
        tables = make_tables(channels, seed=seed)
        y = np.random.default_rng(seed).normal(0, scale, (channels, h, w)).astype(np.float32)
        data, q = codec.encode(y, tables)
        y_hat, q2 = codec.decode(data, (channels, h, w), tables)
        np.testing.assert_array_equal(q, q2)
        np.testing.assert_array_equal(y_hat, codec.dequantize(q, tables))
        # Dequantization error is at most half a step wherever no clipping happened.
        assert np.all(np.abs(y_hat - y) <= tables.step / 2 + 1e-4)

    def test_escape_values_survive(self):
        tables = make_tables(2)
        q = np.zeros((2, 3, 3), dtype=np.int32)
        q[0, 0, 0], q[1, 2, 2], q[1, 1, 1] = 500, -32768, 32767
        data = codec.encode_symbols(q, tables)
        np.testing.assert_array_equal(codec.decode_symbols(data, q.shape, tables), q)

    def test_long_latents_are_chunked(self):
        tables = make_tables(3)
        shape = (3, 40, 40)  # 4800 symbols: two chunks
        q = np.random.default_rng(1).integers(-3, 4, shape).astype(np.int32)
        data = codec.encode_symbols(q, tables)
        np.testing.assert_array_equal(codec.decode_symbols(data, shape, tables), q)


class TestCorruption:
    def setup_method(self):
        self.tables = make_tables(4)
        y = np.random.default_rng(3).normal(0, 3, (4, 6, 6)).astype(np.float32)
        self.data, self.q = codec.encode(y, self.tables)

    @pytest.mark.parametrize("cut", [1, 2, 5])
    def test_truncated_stream_is_an_error(self, cut):
        with pytest.raises(DecodeError):
            codec.decode_symbols(self.data[:-cut], (4, 6, 6), self.tables)

    def test_trailing_bytes_are_an_error(self):
        with pytest.raises(DecodeError):
            codec.decode_symbols(self.data + b"\x01", (4, 6, 6), self.tables)

    def test_wrong_shape_is_an_error(self):
        with pytest.raises(DecodeError):
            codec.decode_symbols(self.data, (3, 6, 6), self.tables)
        with pytest.raises(DecodeError):
            codec.decode_symbols(self.data, (4, 6, 7), self.tables)

    def test_crc_catches_a_flipped_bit(self):
        """A flipped bit can decode to other valid symbols; the CRC sent beside the stream catches it."""
        caught = 0
        for i in range(len(self.data) - 1):
            bad = bytearray(self.data)
            bad[i] ^= 0x04
            try:
                q = codec.decode_symbols(bytes(bad), (4, 6, 6), self.tables)
            except DecodeError:
                caught += 1
                continue
            caught += codec.symbols_crc32(q) != codec.symbols_crc32(self.q)
        assert caught == len(self.data) - 1

    def test_empty_stream_is_an_error(self):
        with pytest.raises(DecodeError):
            codec.decode_symbols(b"", (4, 6, 6), self.tables)


    def test_overlong_chunk_is_refused_before_decoding(self):
        """A stream longer than any coding of that many symbols is refused up front, so a huge payload
        cannot make the decoder work on a multi-megabyte state."""
        with pytest.raises(DecodeError, match="too long"):
            codec.decode_symbols(self.data + b"\x01" * 10_000, (4, 6, 6), self.tables)


def _symbols_with_escapes(tables: EntropyTables, shape: tuple[int, int, int], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = rng.integers(-4, 5, shape).astype(np.int32)
    q.reshape(-1)[rng.random(q.size) < 0.02] = rng.integers(-32768, 32768)
    return q


@pytest.mark.skipif(not codec.NATIVE, reason="splitserve.core._rans was not built (no C compiler)")
class TestNativeLoops:
    """The C inner loops write and read exactly the bytes of the Python loops."""

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(channels=st.integers(1, 5), h=st.integers(1, 30), w=st.integers(1, 30), seed=st.integers(0, 2**16),
           chunk=st.sampled_from([16, 64, 4096]))
    def test_same_bytes_and_symbols_as_python(self, channels, h, w, seed, chunk):
        import dataclasses

        tables = dataclasses.replace(make_tables(channels, bins=3 + seed % 20, seed=seed), chunk_symbols=chunk)
        q = _symbols_with_escapes(tables, (channels, h, w), seed)
        freqs, cdfs, escaped = codec._lookup(q, tables)
        raw = q.reshape(-1).astype(np.int64) + 32768
        data = codec._encode_stream_c(freqs, cdfs, escaped, raw, 16, chunk)
        assert data == codec._encode_stream_py(freqs, cdfs, escaped, raw, 16, chunk)
        out_c, out_py = np.empty(q.size, np.int32), np.empty(q.size, np.int32)
        assert codec._decode_stream_c(data, out_c, h * w, tables) == 0
        assert codec._decode_stream_py(data, out_py, h * w, tables) == 0
        np.testing.assert_array_equal(out_c, q.reshape(-1))
        np.testing.assert_array_equal(out_py, q.reshape(-1))

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(data=st.binary(min_size=0, max_size=64), seed=st.integers(0, 2**16), chunk=st.sampled_from([16, 4096]))
    def test_same_verdict_on_arbitrary_bytes(self, data, seed, chunk):
        import dataclasses

        tables = dataclasses.replace(make_tables(3, seed=seed), chunk_symbols=chunk)
        out_c, out_py = np.zeros(3 * 16, np.int32), np.zeros(3 * 16, np.int32)
        status = codec._decode_stream_c(data, out_c, 16, tables)
        assert status == codec._decode_stream_py(data, out_py, 16, tables)
        if status in (0, 4, 5):  # every chunk was decoded: the same symbols
            np.testing.assert_array_equal(out_c, out_py)


def test_python_loops_round_trip(monkeypatch):
    """Where the C module is not built the codec runs its Python loops: chunked, escaped streams too."""
    monkeypatch.setattr(codec, "_encode_stream", codec._encode_stream_py)
    monkeypatch.setattr(codec, "_decode_stream", codec._decode_stream_py)
    tables = make_tables(3)
    q = _symbols_with_escapes(tables, (3, 40, 40), seed=5)  # 4800 symbols: two chunks
    data = codec.encode_symbols(q, tables)
    np.testing.assert_array_equal(codec.decode_symbols(data, q.shape, tables), q)
    with pytest.raises(DecodeError, match="did not return"):
        codec.decode_symbols(data[:-1] + bytes([data[-1] ^ 0x10 or 1]), q.shape, tables)


def test_bytes_match_predicted_rate():
    """The stream is the information content plus its start-up and rounding bytes: within 2% over a batch."""
    tables = make_tables(12, seed=7)
    rng = np.random.default_rng(7)
    real = predicted = 0.0
    for _ in range(200):
        q = codec.quantize(rng.normal(0, 1.5, (12, 7, 7)).astype(np.float32), tables)
        real += len(codec.encode_symbols(q, tables))
        predicted += codec.predicted_bits(q, tables) / 8
    assert abs(real / predicted - 1) < 0.02, (real, predicted)


def test_start_up_cost_is_bounded_and_trailing_modes_are_free():
    """From ``x = 1`` the state costs at most 16 bits before coding is exact (+ < 1 byte of rounding);
    with the mode at ``cdf = 0`` the modes coded first (the end of the latent) cost nothing at all."""
    tables = make_tables(12, seed=3)
    med = np.asarray(tables.medians, np.float32)[:, None, None]
    rng = np.random.default_rng(3)
    for density in (0.01, 0.1, 0.5):
        for _ in range(50):
            y = np.where(rng.random((12, 7, 7)) < density, rng.normal(0, 2, (12, 7, 7)), 0.0)
            q = codec.quantize(y.astype(np.float32) + med, tables)
            assert len(codec.encode_symbols(q, tables)) < codec.predicted_bits(q, tables) / 8 + 3
    assert len(codec.encode_symbols(np.zeros((12, 7, 7), np.int32), tables)) == 1  # all modes: the bare state


def test_bit_exact_across_processes(tmp_path):
    """Another interpreter encodes from the same JSON tables; this one decodes the same symbols."""
    tables = make_tables(5, seed=11)
    tables.save(tmp_path / "tables.json")
    y = np.random.default_rng(11).normal(0, 2, (5, 7, 7)).astype(np.float32)
    np.save(tmp_path / "y.npy", y)
    script = (
        "import sys, numpy as np; from splitserve.core import codec; "
        "t = codec.EntropyTables.load(sys.argv[1] + '/tables.json'); "
        "data, q = codec.encode(np.load(sys.argv[1] + '/y.npy'), t); "
        "open(sys.argv[1] + '/stream.bin', 'wb').write(data); print(codec.symbols_crc32(q))"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True, capture_output=True, text=True)
    data = (tmp_path / "stream.bin").read_bytes()
    loaded = EntropyTables.from_dict(json.loads((tmp_path / "tables.json").read_text()))
    y_hat, q = codec.decode(data, (5, 7, 7), loaded)
    assert codec.symbols_crc32(q) == int(out.stdout)
    np.testing.assert_array_equal(y_hat, codec.dequantize(codec.quantize(y, tables), tables))


class TestChunkLength:
    """Long latents code in short chunks (a property of the tables): time stays linear, bytes grow little."""

    def test_the_exporter_picks_short_chunks_only_for_long_latents(self):
        assert codec.chunk_symbols_for(588) == codec.chunk_symbols_for(4096) == codec.CHUNK_SYMBOLS
        assert codec.chunk_symbols_for(56 * 14 * 14) == codec.LONG_LATENT_CHUNK

    @pytest.mark.parametrize("native", [True, False])
    def test_short_chunks_round_trip_and_survive_json(self, tmp_path, monkeypatch, native):
        import dataclasses

        if not native:
            monkeypatch.setattr(codec, "_encode_stream", codec._encode_stream_py)
            monkeypatch.setattr(codec, "_decode_stream", codec._decode_stream_py)
        tables = dataclasses.replace(make_tables(3), chunk_symbols=256)
        tables.save(tmp_path / "t.json")
        loaded = EntropyTables.load(tmp_path / "t.json")
        assert loaded.chunk_symbols == 256 and json.loads((tmp_path / "t.json").read_text())["format_version"] == 2
        q = _symbols_with_escapes(loaded, (3, 40, 40), seed=3)  # 4800 symbols: 19 chunks
        data = codec.encode_symbols(q, loaded)
        np.testing.assert_array_equal(codec.decode_symbols(data, q.shape, loaded), q)
        long = codec.encode_symbols(q, make_tables(3))
        assert len(long) < len(data) < len(long) + 3.5 * 19  # per chunk: a 2-byte length, start-up, rounding
        with pytest.raises(DecodeError):
            codec.decode_symbols(data, q.shape, make_tables(3))  # read with the wrong chunk length

    def test_old_tables_keep_their_format(self):
        d = make_tables(2).to_dict()
        assert d["format_version"] == 1 and "chunk_symbols" not in d
        with pytest.raises(CodecError, match="chunk_symbols"):
            EntropyTables(step=1.0, medians=(0.0,), offsets=(0,), freqs=((65535, 1),), chunk_symbols=3)


def test_a_missing_c_extension_is_said_once_at_import_with_its_cost():
    code = (
        "import logging, sys\n"
        "logging.basicConfig()\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'splitserve.core._rans':\n"
        "            raise ImportError('blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import splitserve.core.codec as c\n"
        "print(c.NATIVE)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == "False"
    assert "is not built" in res.stderr and "4-15x slower" in res.stderr


class TestStreamVersion:
    """Codec version 3 (long latents): a 32-bit state renormalized a byte at a time, one stream."""

    @staticmethod
    def tables(channels: int = 3, seed: int = 0, bins: int = 11) -> EntropyTables:
        import dataclasses

        return dataclasses.replace(make_tables(channels, bins=bins, seed=seed), codec_version=codec.STREAM_VERSION)

    def test_the_exporter_streams_only_long_latents(self):
        assert codec.codec_version_for(588) == codec.codec_version_for(4096) == codec.CODEC_VERSION
        assert codec.codec_version_for(57 * 14 * 14) == codec.STREAM_VERSION

    @pytest.mark.parametrize("native", [True, False])
    def test_round_trip_with_escapes_and_json(self, tmp_path, monkeypatch, native):
        if not native:
            monkeypatch.setattr(codec, "_encode_stream32", codec._encode_stream32_py)
            monkeypatch.setattr(codec, "_decode_stream32", codec._decode_stream32_py)
        elif not codec.NATIVE:
            pytest.skip("splitserve.core._rans was not built")
        self.tables().save(tmp_path / "t.json")
        tables = EntropyTables.load(tmp_path / "t.json")
        assert tables.codec_version == codec.STREAM_VERSION
        q = _symbols_with_escapes(tables, (3, 50, 50), seed=11)  # 7500 symbols, ~150 escapes
        data = codec.encode_symbols(q, tables)
        np.testing.assert_array_equal(codec.decode_symbols(data, q.shape, tables), q)

    def test_a_few_bytes_over_the_information_content(self):
        """The 23 bits of the state it starts from plus the flush: under 5 bytes per stream, however long
        (version 2 pays about 3 bytes per 256-symbol chunk on long latents)."""
        tables = self.tables(12, seed=7)
        rng = np.random.default_rng(7)
        for shape in ((12, 7, 7), (12, 40, 40)):
            q = codec.quantize(rng.normal(0, 1.5, shape).astype(np.float32), tables)
            excess = len(codec.encode_symbols(q, tables)) - codec.predicted_bits(q, tables) / 8
            assert 0 < excess < 5, (shape, excess)

    @pytest.mark.parametrize("native", [True, False])
    def test_truncated_corrupt_and_trailing_streams_are_errors(self, monkeypatch, native):
        if not native:
            monkeypatch.setattr(codec, "_decode_stream32", codec._decode_stream32_py)
        elif not codec.NATIVE:
            pytest.skip("splitserve.core._rans was not built")
        tables = self.tables()
        q = _symbols_with_escapes(tables, (3, 20, 20), seed=2)
        data = codec.encode_symbols(q, tables)
        for cut in (0, 3, 4, len(data) // 2, len(data) - 1):
            with pytest.raises(DecodeError, match="truncated"):
                codec.decode_symbols(data[:cut], q.shape, tables)
        with pytest.raises(DecodeError, match="trailing"):
            codec.decode_symbols(data + b"\x00", q.shape, tables)
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x10
        try:  # a flipped bit is caught by the final state, or else by the symbols' CRC the wire carries
            decoded = codec.decode_symbols(bytes(flipped), q.shape, tables)
        except DecodeError:
            return
        assert codec.symbols_crc32(decoded) != codec.symbols_crc32(q)

    @pytest.mark.skipif(not codec.NATIVE, reason="splitserve.core._rans was not built (no C compiler)")
    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(channels=st.integers(1, 5), h=st.integers(1, 30), w=st.integers(1, 30), seed=st.integers(0, 2**16))
    def test_c_and_python_write_the_same_bytes(self, channels, h, w, seed):
        tables = self.tables(channels, seed=seed, bins=3 + seed % 20)
        q = _symbols_with_escapes(tables, (channels, h, w), seed)
        freqs, cdfs, escaped = codec._lookup(q, tables)
        raw = q.reshape(-1).astype(np.int64) + 32768
        data = codec._encode_stream32_c(freqs, cdfs, escaped, raw, 16)
        assert data == codec._encode_stream32_py(freqs, cdfs, escaped, raw, 16)
        out_c, out_py = np.empty(q.size, np.int32), np.empty(q.size, np.int32)
        assert codec._decode_stream32_c(data, out_c, h * w, tables) == 0
        assert codec._decode_stream32_py(data, out_py, h * w, tables) == 0
        np.testing.assert_array_equal(out_c, q.reshape(-1))
        np.testing.assert_array_equal(out_py, q.reshape(-1))

    @pytest.mark.skipif(not codec.NATIVE, reason="splitserve.core._rans was not built (no C compiler)")
    @settings(max_examples=80, deadline=None, derandomize=True)
    @given(data=st.binary(min_size=0, max_size=64), seed=st.integers(0, 2**16))
    def test_c_and_python_agree_on_arbitrary_bytes(self, data, seed):
        tables = self.tables(3, seed=seed)
        out_c, out_py = np.zeros(3 * 16, np.int32), np.zeros(3 * 16, np.int32)
        status = codec._decode_stream32_c(data, out_c, 16, tables)
        assert status == codec._decode_stream32_py(data, out_py, 16, tables)
        if status in (0, 4, 5):
            np.testing.assert_array_equal(out_c, out_py)

    def test_older_builds_refuse_the_tables_and_the_precision_is_bounded(self):
        d = self.tables().to_dict()
        assert d["codec_version"] == codec.STREAM_VERSION
        with pytest.raises(CodecVersionError):
            EntropyTables.from_dict({**d, "codec_version": 4})
        with pytest.raises(CodecError, match="precision_bits"):
            EntropyTables(
                step=1.0, medians=(0.0,), offsets=(0,), freqs=(((1 << 17) - 1, 1),), precision_bits=17,
                codec_version=codec.STREAM_VERSION,
            )
