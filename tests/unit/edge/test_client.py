"""The synchronous edge client against an in-memory endpoint (MockTransport + the bundle's own tails)."""

from __future__ import annotations

import dataclasses
import io
import itertools
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from splitserve.core import codec
from splitserve.core.bundle import Bundle
from splitserve.core.errors import (
    ClientClosedError,
    ConfigError,
    RequestError,
    UnavailableError,
)
from splitserve.edge import EdgeClient, EdgeConfig, FixedPolicy, MockTransport, Result
from splitserve.orchestrator import (
    DeviceLatency,
    Observation,
    Orchestrator,
    ProbeResult,
    SplitDecision,
    options_from_manifest,
)
from splitserve.protos.v1 import inference_pb2 as pb

from .conftest import TailHandler

# int8 pinned: bitstreams and local results are checked against the bundle's int8 files.
FAST = EdgeConfig(timeout_s=5.0, precision="int8")


def _head_stream(bundle: Bundle, split: str, level: int, image: np.ndarray) -> bytes:
    """The bitstream the wire should carry: the bundle's int8 head and the core codec, run directly."""
    info = bundle.manifest.split(split)
    sess = ort.InferenceSession(str(bundle.path(info.head_int8)), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"image": image[None]})[0][0]
    return codec.encode(y, bundle.tables(split, level))[0]


def _local_top1(bundle: Bundle, images: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(
        str(bundle.path(bundle.manifest.local.int8)), providers=["CPUExecutionProvider"]
    )
    return sess.run(None, {"image": images})[0].argmax(1)


class ScriptedPolicy:
    """Cycles through given options and records everything it is told (an :class:`EdgePolicy`)."""

    def __init__(
        self,
        bundle: Bundle,
        ids: list[str],
        probe_bytes: list[int | None] | None = None,
        also: tuple[str, ...] = (),
    ) -> None:
        by_id = {o.id: o for o in options_from_manifest(bundle.manifest)}
        self.options = tuple(by_id[i] for i in dict.fromkeys([*ids, *also]))
        self._cycle = itertools.cycle([by_id[i] for i in ids])
        self._probes = iter(probe_bytes or [])
        self.observations: list[Observation] = []
        self.probes: list[ProbeResult] = []
        self.deadlines: list[float | None] = []
        self.remote_budgets: list[float | None] = []
        self.expected_ms = float("nan")  # no expectation: the client waits the whole remote budget
        self.probe_option: str | None = None

    def decide(
        self, *, deadline_ms: float | None = None, remote_budget_ms: float | None = None
    ) -> SplitDecision:
        self.deadlines.append(deadline_ms)
        self.remote_budgets.append(remote_budget_ms)
        o = next(self._cycle)
        return SplitDecision(
            o.kind,
            o.split,
            o.level,
            self.expected_ms,
            o.accuracy,
            "scripted",
            o.id,
            next(self._probes, None),
            self.probe_option,
        )

    def observe(self, obs: Observation) -> None:
        self.observations.append(obs)

    def observe_probe(self, result: ProbeResult) -> None:
        self.probes.append(result)


def _wait_for(predicate, timeout_s: float = 5.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


class TestInfer:
    def test_split_request_and_result(self, bundle: Bundle, images: np.ndarray, tail: TailHandler) -> None:
        transport = MockTransport(tail)
        with EdgeClient(
            bundle, transport=transport, policy=FixedPolicy(split="layer1", level=1), config=FAST
        ) as c:
            r = c.infer(images[0])
        (req,) = transport.requests
        m = bundle.manifest
        assert (req.model, req.version, req.split, req.level, req.top_k) == (
            m.name,
            m.version,
            "layer1",
            1,
            5,
        )
        assert req.tensor.codec == codec.CODEC_NAME and req.tensor.codec_version == codec.CODEC_VERSION
        assert tuple(req.tensor.shape) == m.split("layer1").latent_shape
        assert req.tensor.data == _head_stream(bundle, "layer1", 1, images[0])
        assert 0 < req.deadline_ms <= 5000
        assert r.computed == "split" and r.remote and (r.split, r.level) == ("layer1", 1)
        assert r.chosen == "layer1@1" and r.fallback_reason is None
        assert r.classes == tuple(int(c) for c in np.argsort(-tail.logits(req), kind="stable")[:5])
        assert r.labels == tuple(m.classes[c] for c in r.classes) and r.label == m.classes[r.top1]
        assert r.payload_bytes == len(req.tensor.data)
        assert r.bytes_sent == req.ByteSize() + 5
        assert abs(sum(r.scores) - 1.0) < 0.2 and list(r.scores) == sorted(r.scores, reverse=True)
        t = r.timings
        assert t.head_ms > 0 and t.encode_ms > 0 and t.rtt_ms is not None and t.rtt_ms > 0 and t.local_ms == 0
        assert (t.server_decode_ms, t.server_tail_ms, t.server_total_ms) == (0.3, 0.5, 1.0)
        assert t.total_ms >= t.head_ms + t.encode_ms + t.rtt_ms
        assert (r.model, r.version, r.request_id) == (m.name, m.version, req.request_id)

    def test_offload_sends_the_image_as_png(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        transport = MockTransport(tail)
        with EdgeClient(bundle, transport=transport, policy="offload", config=FAST) as c:
            r = c.infer(images[3])
        (req,) = transport.requests
        assert req.split == "input" and req.tensor.codec == "png"
        decoded = np.asarray(Image.open(io.BytesIO(req.tensor.data)))
        np.testing.assert_array_equal(decoded, images[3][0])
        assert r.computed == "offload" and r.split == "input" and r.level is None and r.timings.head_ms == 0

    def test_local_needs_no_endpoint_and_matches_manifest_accuracy(
        self, bundle: Bundle, fmnist: tuple[np.ndarray, np.ndarray]
    ) -> None:
        images, labels = fmnist
        n = int(bundle.manifest.extra.eval_size)
        # int8 pinned: the manifest's local accuracy is the int8 model's ("auto" may time fp32 faster)
        with EdgeClient(bundle, policy="local", config=FAST) as c:
            assert c.transport is None
            results = [c.infer(im) for im in images[:n]]
        assert all(r.computed == "local" and r.bytes_sent == 0 and r.fallback_reason is None for r in results)
        top1 = np.array([r.top1 for r in results])
        np.testing.assert_array_equal(top1, _local_top1(bundle, images[:n]))
        accuracy = float((top1 == labels[:n]).mean())
        assert abs(accuracy - bundle.manifest.local.accuracy) <= 0.002

    @pytest.mark.parametrize("kind", ["array_hw", "array_hwc", "pil", "file"])
    def test_inputs_of_every_kind(
        self, bundle: Bundle, images: np.ndarray, tmp_path: Path, kind: str
    ) -> None:
        im = images[7][0]
        given = {
            "array_hw": im,
            "array_hwc": im[:, :, None],
            "pil": Image.fromarray(im),
            "file": tmp_path / "x.png",
        }[kind]
        Image.fromarray(im).save(tmp_path / "x.png")
        with EdgeClient(bundle, policy="local") as c:
            assert c.infer(given).classes == c.infer(images[7]).classes

    def test_bad_input_is_an_error_not_a_result(self, bundle: Bundle, tail: TailHandler) -> None:
        policy = ScriptedPolicy(bundle, ["stem@0"])
        with EdgeClient(bundle, transport=MockTransport(tail), policy=policy) as c:
            with pytest.raises(RequestError, match="uint8"):
                c.infer(np.zeros((1, 28, 28), np.float32))
            with pytest.raises(RequestError, match="does not fit"):
                list(c.stream([np.zeros((1, 32, 32), np.uint8)]))
        assert policy.deadlines == []  # checked before the policy decides: no decision is left pending

    def test_no_model_is_loaded_after_start(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ids = ["stem@0", "layer1@1", "local", "stem@1", "offload", "layer1@0"]
        policy = ScriptedPolicy(bundle, ids)
        with EdgeClient(bundle, transport=MockTransport(tail), policy=policy, config=FAST) as c:
            assert set(c.runtime.heads) == {"stem", "layer1"}
            created: list[object] = []
            real = ort.InferenceSession
            monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: created.append(a) or real(*a, **k))
            results = [c.infer(images[i]) for i in range(2 * len(ids))]
        assert [r.chosen for r in results] == ids * 2
        assert [
            a for a in created if "/edge/" in str(a[0])
        ] == []  # the in-memory endpoint loads tails lazily

    def test_only_the_policys_heads_are_loaded(self, bundle: Bundle, tail: TailHandler) -> None:
        with EdgeClient(bundle, transport=MockTransport(tail), policy="stem@1") as c:
            assert set(c.runtime.heads) == {"stem"} and set(c.device_latency.head_ms) == {"stem"}

    def test_policy_hears_every_request(self, bundle: Bundle, images: np.ndarray, tail: TailHandler) -> None:
        policy = ScriptedPolicy(bundle, ["layer1@0", "local"])
        with EdgeClient(bundle, transport=MockTransport(tail), policy=policy, config=FAST) as c:
            remote, local = c.infer(images[0]), c.infer(images[1], timeout_s=0.25)
        assert policy.deadlines == [5000.0, 250.0]
        o_remote, o_local = policy.observations
        assert o_remote.option_id == "layer1@0" and not o_remote.failed
        assert o_remote.payload_bytes == remote.payload_bytes and o_remote.wire_bytes == remote.bytes_sent
        assert o_remote.device_ms == pytest.approx(remote.timings.device_ms)
        assert o_remote.rtt_ms == pytest.approx(remote.timings.rtt_ms)
        assert o_remote.server is not None and o_remote.server.tail_ms == 0.5
        assert o_local.option_id == "local" and o_local.device_ms == pytest.approx(local.timings.device_ms)

    def test_orchestrator_by_name_is_built_from_device_measurements(
        self, bundle: Bundle, tail: TailHandler
    ) -> None:
        with EdgeClient(bundle, transport=MockTransport(tail), policy="min_latency") as c:
            assert isinstance(c.policy, Orchestrator)
            assert set(c.device_latency.head_ms) == {s.name for s in bundle.manifest.splits}
            assert all(v > 0 for v in c.device_latency.head_ms.values()) and c.device_latency.local_ms > 0
            assert c.policy.estimates().expected_ms["local"] == pytest.approx(c.device_latency.local_ms)

    def test_a_given_orchestrator_gets_the_measured_latencies(
        self, bundle: Bundle, tail: TailHandler
    ) -> None:
        rough = DeviceLatency(
            {s.name: 100.0 for s in bundle.manifest.splits}, local_ms=100.0, offload_ms=100.0
        )
        orch = Orchestrator.from_manifest(bundle.manifest, rough)
        with EdgeClient(bundle, transport=MockTransport(tail), policy=orch) as c:
            assert c.policy is orch
            assert orch.estimates().expected_ms["local"] == pytest.approx(c.device_latency.local_ms)


class TestFallback:
    def test_unavailable_endpoint_answers_locally(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        tail.fail = lambda request: UnavailableError("connection refused")
        policy = ScriptedPolicy(bundle, ["stem@0"])
        with EdgeClient(bundle, transport=MockTransport(tail), policy=policy, config=FAST) as c:
            r = c.infer(images[0])
        assert r.computed == "local" and not r.remote and r.chosen == "stem@0"
        assert r.fallback_reason is not None and "UnavailableError" in r.fallback_reason
        assert r.bytes_sent > 0 and r.timings.local_ms > 0 and r.timings.head_ms > 0
        assert r.top1 == _local_top1(bundle, images[:1])[0]
        assert [o.failed for o in policy.observations if o.option_id == "stem@0"] == [True]

    def test_missed_deadline_answers_locally(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        tail.delay = lambda request: 0.2
        with EdgeClient(bundle, transport=MockTransport(tail), policy="stem@0") as c:
            r = c.infer(images[0], timeout_s=0.05)
        assert r.computed == "local" and "DeadlineExceededError" in (r.fallback_reason or "")

    @pytest.mark.parametrize("factor", [3.0, 0.0])
    def test_a_reply_far_later_than_expected_is_given_up(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler, factor: float
    ) -> None:
        class TimedTransport(MockTransport):
            timeouts: list[float] = []

            def infer(self, request: pb.InferRequest, *, timeout_s: float) -> pb.InferResponse:
                self.timeouts.append(timeout_s)
                return super().infer(request, timeout_s=timeout_s)

        tail.delay = lambda request: 0.1  # a link far slower than the policy expects
        policy = ScriptedPolicy(bundle, ["stem@0"])
        policy.expected_ms = 20.0
        transport = TimedTransport(tail)
        config = dataclasses.replace(FAST, give_up_factor=factor)
        with EdgeClient(bundle, transport=transport, policy=policy, config=config) as c:
            r = c.infer(images[0], timeout_s=0.5)
        (timeout_s,) = transport.timeouts
        if factor:  # 3 x 20 ms from the start of the request, device work before sending included
            assert timeout_s <= 0.06 and r.computed == "local"
            assert "DeadlineExceededError" in (r.fallback_reason or "") and policy.observations[0].failed
        else:  # the whole remote budget: 0.5 s less the local run's reserve
            assert timeout_s > 0.3 and r.computed == "split"

    def test_a_reply_only_a_little_late_is_not_given_up_before_the_minimum(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        tail.delay = lambda request: 0.05  # 10x the 5 ms expected, like a scheduling pause on a busy device
        policy = ScriptedPolicy(bundle, ["stem@0"])
        policy.expected_ms = 5.0
        config = dataclasses.replace(FAST, give_up_min_s=0.4)  # the default 50 ms, with room for a slow CI box
        with EdgeClient(bundle, transport=MockTransport(tail), policy=policy, config=config) as c:
            r = c.infer(images[0], timeout_s=1.0)
        assert r.computed == "split" and r.fallback_reason is None  # 3 x 5 ms would have given up

    def test_a_deadline_too_short_for_a_round_trip_stays_local(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        transport = MockTransport(tail)
        with EdgeClient(bundle, transport=transport, policy="layer1@0") as c:
            r = c.infer(images[0], timeout_s=1e-4)
        assert r.computed == "local" and transport.requests == [] and r.bytes_sent == 0

    def test_without_fallback_the_error_is_raised(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        tail.fail = lambda request: UnavailableError("down")
        config = EdgeConfig(fallback=False)
        with (
            EdgeClient(bundle, transport=MockTransport(tail), policy="stem@0", config=config) as c,
            pytest.raises(UnavailableError, match="down") as info,
        ):
            c.infer(images[0])
        assert info.value.request_id is not None

    def test_circuit_breaker_stops_calls_then_recovers(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        down = True
        tail.fail = lambda request: UnavailableError("down") if down else None
        transport = MockTransport(tail)
        config = EdgeConfig(breaker_failures=3, breaker_reset_s=0.2)
        with EdgeClient(bundle, transport=transport, policy="stem@0", config=config) as c:
            results = [c.infer(images[i]) for i in range(10)]
            assert all(r.computed == "local" for r in results)
            assert len(transport.requests) == 3 and c.breaker.state == "open"
            assert "circuit breaker open" in (results[-1].fallback_reason or "")
            assert results[-1].bytes_sent == 0
            down = False
            time.sleep(0.25)
            assert c.breaker.state == "half-open"
            assert c.infer(images[0]).computed == "split"
            assert c.breaker.state == "closed"
            assert c.infer(images[1]).computed == "split"

    def test_a_request_with_no_time_left_is_not_sent_nor_a_link_failure(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        transport = MockTransport(tail)
        policy = ScriptedPolicy(bundle, ["stem@0"])
        with EdgeClient(bundle, transport=transport, policy=policy, config=FAST) as c:
            reserve_ms = c._local_reserve_s * 1e3
            r = c.infer(images[0], timeout_s=c._local_reserve_s)  # the whole budget is the reserve
            ok = c.infer(images[1], timeout_s=5.0)
        assert r.computed == "local" and "no time left" in (r.fallback_reason or "")
        assert ok.computed == "split" and len(transport.requests) == 1
        unsent, sent = policy.observations  # no local option here: its fallback is not observed
        assert unsent.failed and not unsent.sent and sent.sent and not sent.failed
        assert policy.remote_budgets[0] is not None and policy.remote_budgets[0] <= 0.0
        assert policy.remote_budgets[1] == pytest.approx(5000.0 - reserve_ms, abs=50.0)

    def test_probes_run_in_the_background(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        transport = MockTransport(tail)
        policy = ScriptedPolicy(bundle, ["local"], probe_bytes=[0, None, 300], also=("stem@1", "layer1@0"))
        with EdgeClient(bundle, transport=transport, policy=policy, config=FAST) as c:
            c.infer(images[0])
            assert _wait_for(lambda: len(policy.probes) == 1)
            c.infer(images[1])
            c.infer(images[2])
            assert _wait_for(lambda: len(policy.probes) == 2)
        ping, sized = policy.probes
        assert transport.pings == 1 and ping.wire_bytes == 0 and not ping.failed
        (probe_request,) = transport.requests
        assert "probe" in probe_request.request_id and sized.wire_bytes == probe_request.ByteSize() + 5
        smallest = min((o for o in policy.options if o.remote), key=lambda o: o.payload_bytes)
        assert (probe_request.split, probe_request.level) == (smallest.split, smallest.level)
        assert not sized.failed and sized.rtt_ms >= 0

    def test_probes_carry_the_load_the_endpoint_reports(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        def loaded(request):  # noqa: ANN001, ANN202
            if isinstance(request, pb.ListModelsRequest):
                return pb.Load(queue_dms=1234, tail_dms=50)
            reply = tail(request)
            reply.timings.queue_delay_ms = 42.0
            return reply

        policy = ScriptedPolicy(bundle, ["local"], probe_bytes=[0, None, 300], also=("stem@1",))
        with EdgeClient(bundle, transport=MockTransport(loaded), policy=policy, config=FAST) as c:
            c.infer(images[0])
            assert _wait_for(lambda: len(policy.probes) == 1)
            c.infer(images[1])
            c.infer(images[2])
            assert _wait_for(lambda: len(policy.probes) == 2)
        ping, sized = policy.probes
        assert ping.queue_ms == pytest.approx(123.4) and sized.queue_ms == pytest.approx(42.0)

    def test_a_probe_is_the_option_the_policy_names(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        transport = MockTransport(tail)
        policy = ScriptedPolicy(bundle, ["local"], probe_bytes=[700], also=("stem@1", "offload"))
        policy.probe_option = "offload"
        with EdgeClient(bundle, transport=transport, policy=policy, config=FAST) as c:
            c.infer(images[0])
            assert _wait_for(lambda: len(policy.probes) == 1)
        (probe_request,) = transport.requests
        assert probe_request.split == "input" and probe_request.tensor.codec == "png"


class TestStream:
    def test_results_in_input_order_with_several_in_flight(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        tail.delay = lambda request: 0.005
        transport = MockTransport(tail)
        with EdgeClient(bundle, transport=transport, policy="layer1@0", config=FAST) as c:
            results = list(c.stream(images[:30], max_inflight=4))
            expected = [c.infer(im).classes for im in images[:30]]
        assert [r.classes for r in results] == expected
        assert all(r.computed == "split" for r in results)
        assert [r.request_id for r in results] == [q.request_id for q in transport.requests[:30]]
        assert 2 <= transport.max_inflight <= 4

    def test_endpoint_lost_mid_stream_every_input_gets_a_result(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        tail.fail = lambda request: UnavailableError("endpoint gone") if tail.served >= 10 else None
        n = 40
        with EdgeClient(bundle, transport=MockTransport(tail), policy="layer1@0", config=FAST) as c:
            results = list(c.stream(images[:n], max_inflight=4))
        assert len(results) == n and len({r.request_id for r in results}) == n
        where = [r.computed for r in results]
        assert where[:10] == ["split"] * 10 and where[10:] == ["local"] * (n - 10)
        np.testing.assert_array_equal([r.top1 for r in results[10:]], _local_top1(bundle, images[10:n]))

    def test_an_item_error_answers_only_that_item_locally(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        bad = {"3", "7"}
        tail.fail = lambda request: (
            RequestError("bad item") if request.request_id.split("-")[-1] in bad else None
        )
        with EdgeClient(bundle, transport=MockTransport(tail), policy="stem@1", config=FAST) as c:
            results = list(c.stream(images[:10]))
        assert [r.computed for r in results] == ["local" if str(i) in bad else "split" for i in range(10)]
        assert "RequestError: bad item" in (results[3].fallback_reason or "")

    def test_a_hung_endpoint_falls_back_within_the_deadline(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        tail.delay = lambda request: 1.0 if tail.served >= 2 else 0.0
        config = EdgeConfig(timeout_s=0.2, breaker_failures=2, breaker_reset_s=30)
        t0 = time.perf_counter()
        with EdgeClient(bundle, transport=MockTransport(tail), policy="stem@0", config=config) as c:
            results = list(c.stream(images[:12], max_inflight=4))
        wall_s = time.perf_counter() - t0
        assert [r.computed for r in results[:2]] == ["split", "split"]
        assert all(r.computed == "local" for r in results[2:])
        assert all(r.timings.total_ms < 200 + 300 for r in results)  # the deadline, plus slack for a busy CI
        assert wall_s < 3.0  # waiting out the hung endpoint would take 10 s

    def test_local_and_remote_mixed_in_order(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        ids = ["local", "stem@0", "offload", "layer1@1"]
        with EdgeClient(
            bundle, transport=MockTransport(tail), policy=ScriptedPolicy(bundle, ids), config=FAST
        ) as c:
            results = list(c.stream(images[:8]))
        assert [r.chosen for r in results] == ids * 2
        assert [r.computed for r in results] == ["local", "split", "offload", "split"] * 2

    def test_stopping_early_closes_the_stream(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        before = threading.active_count()
        with EdgeClient(bundle, transport=MockTransport(tail), policy="stem@0", config=FAST) as c:
            for _ in c.stream(images[:50]):
                break
            assert isinstance(c.infer(images[0]), Result)
        assert _wait_for(lambda: threading.active_count() <= before)

    def test_endless_input_is_read_lazily(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        with EdgeClient(bundle, transport=MockTransport(tail), policy="stem@0", config=FAST) as c:
            frames = itertools.cycle(images[:3])
            got = list(itertools.islice(c.stream(frames, max_inflight=2), 7))
        assert len(got) == 7


class TestLifecycle:
    def test_close_is_final_and_idempotent(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        transport = MockTransport(tail)
        c = EdgeClient(bundle, transport=transport, policy="stem@0")
        c.close()
        c.close()
        assert transport.closed
        with pytest.raises(ClientClosedError):
            c.infer(images[0])
        with pytest.raises(ClientClosedError):
            list(c.stream(images[:2]))
        with pytest.raises(ClientClosedError):
            c.__enter__()

    def test_a_path_bundle_is_opened_and_closed_by_the_client(
        self, bundle_path: Path, images: np.ndarray
    ) -> None:
        with EdgeClient(bundle_path, policy="local") as c:
            assert c.infer(images[0]).computed == "local"
            assert c.bundle.root == bundle_path

    def test_a_remote_policy_needs_an_endpoint(self, bundle: Bundle) -> None:
        with pytest.raises(ConfigError, match="no endpoint"):
            EdgeClient(bundle, policy="stem@0")

    def test_ping(self, bundle: Bundle, tail: TailHandler) -> None:
        transport = MockTransport(tail)
        with EdgeClient(bundle, transport=transport, policy="stem@0") as c:
            assert c.ping() >= 0 and transport.pings == 1
        with EdgeClient(bundle, policy="local") as c, pytest.raises(ConfigError):
            c.ping()

    def test_unknown_options_are_refused(self, bundle: Bundle) -> None:
        with pytest.raises(ConfigError, match="options"):
            EdgeClient(bundle, policy=FixedPolicy(split="layer9", level=0))
        with pytest.raises(ConfigError, match="does not offer"):
            EdgeClient(bundle, policy="stem@7")

    def test_repr_names_the_model(self, bundle: Bundle) -> None:
        with EdgeClient(bundle, policy="local") as c:
            assert bundle.manifest.name in repr(c)


class RecordingPolicy(ScriptedPolicy):
    """A :class:`ScriptedPolicy` that also takes device measurements, as the orchestrator does."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.device: list[DeviceLatency] = []

    def update_device(self, device: DeviceLatency) -> None:
        self.device.append(device)


class TestDeviceMeasurement:
    def test_device_times_are_measured_again_and_handed_to_the_policy(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        policy = RecordingPolicy(bundle, ["local"], also=("stem@0",))
        config = EdgeConfig(precision="int8", remeasure_s=0.05)
        with EdgeClient(bundle, transport=MockTransport(tail), policy=policy, config=config) as c:
            assert len(policy.device) == 1 and policy.device[0] is c.device_latency  # start-up
            assert _wait_for(lambda: (c.infer(images[0]), len(policy.device) >= 3)[1])
            latest = policy.device[-1]
            assert set(latest.head_ms) == {"stem"} and latest.local_ms > 0
            assert latest.offload_ms == 0 and not latest.offload_level_ms  # the policy offers no offload: not timed
        assert c.device_latency is latest
        n = len(policy.device)
        time.sleep(0.1)
        assert len(policy.device) == n  # nothing runs after close

    def test_the_orchestrator_and_the_fallback_reserve_follow_a_new_measurement(
        self, bundle: Bundle, images: np.ndarray, tail: TailHandler
    ) -> None:
        config = EdgeConfig(precision="int8", remeasure_s=0.05)
        with EdgeClient(bundle, transport=MockTransport(tail), policy="min_latency", config=config) as c:
            slow = DeviceLatency(
                head_ms=dict.fromkeys(c.runtime.heads, 400.0), local_ms=900.0, offload_ms=2.0
            )
            c.runtime.measure = lambda repeats=10: slow  # type: ignore[method-assign]  # a slower device
            assert _wait_for(lambda: (c.infer(images[0], timeout_s=10.0), c.device_latency is slow)[1])
            expected = c.policy.estimates().expected_ms  # type: ignore[attr-defined]
            assert expected["local"] == pytest.approx(900.0)
            assert c._local_reserve_s == pytest.approx((1.5 * 900.0 + 0.5) / 1e3)

    def test_the_orchestrator_rates_options_by_the_precision_the_device_runs(
        self, bundle: Bundle, tail: TailHandler
    ) -> None:
        config = EdgeConfig(precision="fp32", remeasure_s=0)
        with EdgeClient(bundle, transport=MockTransport(tail), policy="min_latency", config=config) as c:
            rated = {o.id: o.accuracy for o in c.policy.options}  # type: ignore[attr-defined]
        m = bundle.manifest
        assert rated == {
            **{f"{s.name}@{lv.level}": lv.accuracy_fp32 for s in m.splits for lv in s.levels},
            "local": m.local.accuracy_fp32,
            "offload": m.offload.level(0).accuracy,
        }

    def test_zero_measures_at_start_only(self, bundle: Bundle, images: np.ndarray) -> None:
        policy = RecordingPolicy(bundle, ["local"])
        with EdgeClient(bundle, policy=policy, config=EdgeConfig(remeasure_s=0)) as c:
            for _ in range(5):
                c.infer(images[0])
                time.sleep(0.01)
        assert len(policy.device) == 1

    def test_a_failing_measurement_keeps_the_last_one(self, bundle: Bundle, images: np.ndarray) -> None:
        policy = RecordingPolicy(bundle, ["local"])
        with EdgeClient(bundle, policy=policy, config=EdgeConfig(remeasure_s=0.01)) as c:
            first = c.device_latency
            calls = []

            def broken(repeats: int = 10) -> DeviceLatency:
                calls.append(repeats)
                raise RuntimeError("sensor unplugged")

            c.runtime.measure = broken  # type: ignore[method-assign]
            assert _wait_for(lambda: (c.infer(images[0]), len(calls) >= 2)[1])
            assert c.infer(images[0]).computed == "local"
        assert c.device_latency is first and len(policy.device) == 1


def test_grpc_transport_is_the_default(bundle: Bundle) -> None:
    from splitserve.edge import GrpcTransport

    with EdgeClient(bundle, "127.0.0.1:1", policy="stem@0") as c:
        assert isinstance(c.transport, GrpcTransport) and c.transport.endpoint == "127.0.0.1:1"
        r = c.infer(np.zeros((1, 28, 28), np.uint8), timeout_s=2.0)
    assert r.computed == "local" and "UnavailableError" in (r.fallback_reason or "")
