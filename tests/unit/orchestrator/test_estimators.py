"""Estimators: robust to outliers, converge, react to steps within a few samples."""

from __future__ import annotations

import numpy as np
import pytest

from splitserve.orchestrator._estimators import (
    DeviceEstimator,
    LinkEstimator,
    RttEstimator,
    ServerEstimator,
    ThroughputEstimator,
    weighted_median,
)


def feed(est: ThroughputEstimator, bps: float, n: int, nbytes: float = 1000.0) -> None:
    for _ in range(n):
        est.add(nbytes, 8000.0 * nbytes / bps)


class TestThroughputEstimator:
    def test_converges_with_margin(self) -> None:
        est = ThroughputEstimator(window=5, margin=0.9)
        feed(est, 2e6, 5)
        assert est.raw_bps() == pytest.approx(2e6)
        assert est.estimate_bps() == pytest.approx(1.8e6)

    def test_noisy_samples_converge_to_the_median(self) -> None:
        rng = np.random.default_rng(0)
        est = ThroughputEstimator(window=5, margin=1.0)
        errors = []
        for _ in range(200):
            est.add(1000.0, 8000.0 * 1000.0 / (1e6 * rng.lognormal(0.0, 0.2)))
            errors.append(abs(est.estimate_bps() / 1e6 - 1.0))
        assert np.median(errors[20:]) < 0.15

    @pytest.mark.parametrize("outlier_bps", [1e3, 1e9])
    def test_one_outlier_is_ignored(self, outlier_bps: float) -> None:
        est = ThroughputEstimator(window=5, margin=1.0)
        feed(est, 1e6, 4)
        feed(est, outlier_bps, 1)
        assert est.raw_bps() == pytest.approx(1e6)
        feed(est, 1e6, 1)
        assert est.raw_bps() == pytest.approx(1e6)

    def test_clear_drop_followed_after_two_samples(self) -> None:
        est = ThroughputEstimator(window=5, margin=1.0)
        feed(est, 1e6, 5)
        feed(est, 50e3, 2)
        assert est.raw_bps() == pytest.approx(50e3)

    def test_jitter_does_not_trip_the_shift_rule(self) -> None:
        est = ThroughputEstimator(window=5, margin=1.0)
        feed(est, 1e6, 5)
        feed(est, 0.8e6, 2)
        assert est.raw_bps() == pytest.approx(1e6)

    def test_clear_rise_followed_after_two_samples(self) -> None:
        est = ThroughputEstimator(window=5, margin=1.0)
        feed(est, 50e3, 5)
        feed(est, 1e6, 1)
        assert est.raw_bps() == pytest.approx(50e3)
        feed(est, 1e6, 1)
        assert est.raw_bps() == pytest.approx(1e6)

    def test_modest_rise_needs_the_median(self) -> None:
        est = ThroughputEstimator(window=5, margin=1.0)
        feed(est, 1e6, 5)
        feed(est, 1.3e6, 2)
        assert est.raw_bps() == pytest.approx(1e6)
        feed(est, 1.3e6, 1)
        assert est.raw_bps() == pytest.approx(1.3e6)

    def test_forecast_follows_a_falling_trend_and_discounts_errors(self) -> None:
        est = ThroughputEstimator(window=5, margin=1.0)
        for bps in (4e6, 3e6, 2e6, 1.5e6, 1e6):
            feed(est, bps, 1)
        forecast = est.forecast_bps(4)
        assert forecast[0] == pytest.approx(est.estimate_bps())
        assert np.all(np.diff(forecast) < 0)

    def test_weighted_median_weights(self) -> None:
        assert weighted_median([1.0, 2.0, 3.0], [1.0, 1.0, 5.0]) == 3.0
        assert weighted_median([3.0, 1.0, 2.0], [1.0, 1.0, 1.0]) == 2.0


class TestRttEstimator:
    def test_fastest_of_the_last_pings(self) -> None:
        rtt = RttEstimator(window_s=1.5, max_samples=2)
        assert rtt.reference() is None
        for t, v in enumerate([20.0, 22.0, 200.0, 21.0]):
            rtt.add(float(t) * 0.5, v, 64)
        assert rtt.reference() == (21.0, 64)  # a single slow ping is ignored
        rtt.add(2.0, 30.0, 64)
        rtt.add(2.5, 31.0, 64)
        assert rtt.reference() == (30.0, 64)  # two slower pings move it
        rtt.add(100.0, 80.0, 70)
        assert rtt.reference() == (80.0, 70)

    def test_a_contended_ping_can_lower_the_reference_but_not_raise_it(self) -> None:
        """A ping queued behind a request in flight bounds the round trip from above only."""
        rtt = RttEstimator(window_s=1.5, max_samples=2)
        rtt.add(0.0, 20.0, 64)
        for t in (0.5, 1.0, 1.5):
            rtt.add(t, 64.0, 64, contended=True)
        assert rtt.reference() == (20.0, 64)
        rtt.add(2.0, 18.0, 64, contended=True)
        assert rtt.reference() == (18.0, 64)
        rtt.add(2.5, 30.0, 64)
        rtt.add(3.0, 31.0, 64)
        assert rtt.reference() == (30.0, 64)  # pings on an idle link still move it up
        rtt.add(14.0, 50.0, 64, contended=True)
        assert rtt.reference() == (50.0, 64)  # and a stale reference gives way to a contended ping


class TestLinkEstimator:
    def make(self) -> LinkEstimator:
        return LinkEstimator(
            ThroughputEstimator(margin=1.0), RttEstimator(), prior_rtt_ms=50.0, prior_bps=1e6
        )

    def test_transfers_are_measured_against_the_ping(self) -> None:
        link = self.make()
        link.observe(0.0, 100, 20.0 + 8000.0 * 100 / 250e3, ping=True)
        for t in range(1, 6):
            link.observe(float(t) * 0.1, 500, 20.0 + 8000.0 * 500 / 250e3)
        assert link.bps() == pytest.approx(250e3)
        assert link.base_rtt_ms() == pytest.approx(20.0)
        assert link.network_ms(np.array([1000.0]))[0] == pytest.approx(20.0 + 32.0)

    def test_no_feedback_from_a_stale_estimate(self) -> None:
        link = self.make()
        link.observe(0.0, 80, 20.0 + 8000.0 * 80 / 24e3, ping=True)  # ping on a 24 kbit/s link
        link.observe(0.1, 180, 20.0 + 8000.0 * 180 / 24e3)
        link.observe(0.2, 180, 20.0 + 8000.0 * 180 / 24e3)
        assert link.bps() == pytest.approx(24e3)
        link.observe(1.0, 80, 20.0 + 8000.0 * 80 / 512e3, ping=True)  # the link speeds up
        for t in range(3):
            link.observe(1.1 + t * 0.1, 180, 20.0 + 8000.0 * 180 / 512e3)
        assert link.bps() > 200e3 and link.base_rtt_ms() >= 0.0

    def test_failure_marks_down_until_success(self) -> None:
        link = self.make()
        link.observe(0.0, 0, 20.0, ping=True)
        link.observe_failure(1.0)
        assert not link.up and np.isinf(link.network_ms(np.array([100.0]))[0])
        link.observe(2.0, 200, 30.0)
        assert link.up

    def test_only_the_newest_transfer_sets_up_or_down(self) -> None:
        link = self.make()
        link.observe(0.0, 0, 20.0, ping=True)
        link.observe_failure(1.25, 600, 250.0)  # sent at 1.0 into an outage
        link.observe(1.3, 300, 500.0)  # sent at 0.8, before it: says nothing about now
        assert not link.up
        link.observe(1.5, 300, 100.0)  # sent at 1.4, after the failed one: the link is back
        assert link.up
        link.observe_failure(1.7, 600, 600.0)  # sent at 1.1, stuck behind a burst: older news
        assert link.up
        link.observe_failure(2.0, sent_s=1.6)  # a probe sent after the newest success failed
        assert not link.up

    def test_a_timeout_bounds_a_stale_high_estimate(self) -> None:
        link = self.make()
        link.observe(0.0, 0, 20.0, ping=True)
        for t in range(5):
            link.observe(0.1 * (t + 1), 600, 20.0 + 8000.0 * 600 / 2e6)  # 2 Mbit/s
        link.observe_failure(1.0, 600, 220.0)  # the link dropped: 600 B not through in 200 ms
        assert link.bps() > 1e6  # one low sample alone does not move the median
        link.observe(1.2, 100, 20.0 + 8000.0 * 100 / 24e3)  # a probe at 24 kbit/s
        assert link.bps() == pytest.approx(8000.0 * 600 / 200.0)  # the bound: offload looks slow now

    def test_a_timeout_consistent_with_the_estimate_adds_no_sample(self) -> None:
        link = self.make()
        link.observe(0.0, 0, 20.0, ping=True)
        link.observe(0.1, 600, 20.0 + 8000.0 * 600 / 24e3)
        link.observe_failure(1.0, 600, 100.0)  # 600 B in 80 ms would need 60 kbit/s: no news
        link.observe_failure(2.0, 600)  # no time waited given
        assert len(link.throughput) == 1 and link.bps() == pytest.approx(24e3)


class TestServerEstimator:
    def test_queue_and_slowdown(self) -> None:
        srv = ServerEstimator({"a": 2.0, "b": 4.0}, alpha=1.0, queue_alpha=1.0, queue_half_life_s=2.0)
        srv.observe(0.0, "a", queue_ms=40.0, compute_ms=4.0)
        assert srv.compute_ms("b", 0.0) == pytest.approx(8.0)
        assert srv.queue_ms(0.0) == pytest.approx(40.0)
        assert srv.queue_ms(2.0) == pytest.approx(20.0)

    def test_a_slow_spell_fades_without_replies(self) -> None:
        srv = ServerEstimator({"a": 1.0}, alpha=0.5, queue_alpha=1.0, queue_half_life_s=2.0)
        srv.observe(0.0, "a", queue_ms=0.0, compute_ms=20.0)  # a cold endpoint's first reply
        assert srv.slowdown(0.0) == pytest.approx(20.0)
        assert srv.slowdown(2.0) == pytest.approx(10.5)  # half the excess over 1 per half-life
        assert srv.slowdown(20.0) == pytest.approx(1.0, abs=0.02)
        srv.observe(2.0, "a", queue_ms=0.0, compute_ms=1.0)  # blended with the decayed value
        assert srv.slowdown(2.0) == pytest.approx(0.5 * 10.5 + 0.5 * 1.0)


    def test_a_reported_queue_holds_while_reports_come(self) -> None:
        srv = ServerEstimator({"a": 1.0}, alpha=1.0, queue_alpha=0.5, queue_half_life_s=2.0, queue_hold_s=1.0)
        for t in (0.0, 0.5, 1.0, 1.5):  # a ping every 0.5 s, each reporting 120 ms
            srv.report_queue(t, 120.0)
            assert srv.queue_ms(t + 0.49) == pytest.approx(120.0)  # kept as reported: no decay, no blend
        assert srv.queue_ms(1.5 + 1.0 + 2.0) == pytest.approx(60.0)  # reports stop: the hold, then decay
        srv.observe(2.0, "a", queue_ms=0.0, compute_ms=1.0)  # a reply inside the hold blends in
        assert srv.queue_ms(2.5) == pytest.approx(60.0)  # and the hold still runs to 2.5 s
        srv.report_queue(3.0, 0.0)
        assert srv.queue_ms(3.0) == 0.0  # a report replaces the estimate: the endpoint's view of now


class TestDeviceEstimator:
    def test_load_factor_and_refresh(self) -> None:
        dev = DeviceEstimator({"local": 60.0, "s@0": 10.0}, alpha=1.0)
        dev.observe("s@0", 20.0)
        assert dev.expected_ms("local") == pytest.approx(120.0)
        dev.refresh({"local": 50.0, "s@0": 12.0})
        assert dev.expected_ms("local") == pytest.approx(50.0)
