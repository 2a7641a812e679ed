"""The main job (`splitserve demo`) end to end on the small test bundle: endpoint process, edge client, table."""

from __future__ import annotations

from pathlib import Path

import pytest

from splitserve.cli.demo import run_demo
from splitserve.core.bundle import Bundle


def test_demo_serves_every_option_and_prints_the_table(
    test_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = run_demo("fmnist_resnet-test", n_images=40)
    manifest = Bundle.open(test_bundle).manifest
    options = [f"{s.name}@{lv.level}" for s in manifest.splits for lv in sorted(s.levels, key=lambda lv: lv.bytes_per_sample)]
    assert [r["option"] for r in rows] == ["local", "offload (png)", *options, "orchestrator (min_latency)"]
    by = {r["option"]: r for r in rows}
    assert by["local"]["payload_bytes"] == 0 and by["local"]["where"] == "local 40"
    assert by["offload (png)"]["where"] == "offload 40" and by["offload (png)"]["payload_bytes"] > 100
    for option in options:
        r = by[option]
        assert r["where"] == "split 40", r  # served by the endpoint, no fallback
        assert 0 < r["payload_bytes"] < r["wire_bytes"] < by["offload (png)"]["wire_bytes"]
    for r in rows:
        assert 0.3 <= r["accuracy"] <= 1.0 and 0 < r["p50_ms"] <= r["p95_ms"]
    out = capsys.readouterr().out
    assert "splitserve demo: 40 Fashion-MNIST test images" in out
    assert all(r["option"] in out for r in rows)


def test_photo_demo_measures_every_option_on_an_emulated_device(
    test_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from splitserve.cli.demo import run_photo_demo
    from splitserve.core.natural_images import PHOTO_FILES, package_file

    photos = [package_file(dist, rel) for dist, rel in PHOTO_FILES[:6]]
    out = run_photo_demo(bundle=test_bundle, photos=photos, device="pixel4-cpu", accuracy_floor=0.0, shape=False,
                         every_level=True)
    rows = {r["option"]: r for r in out["rows"]}
    manifest = Bundle.open(test_bundle).manifest
    splits = [f"{s.name}@{lv.level}" for s in manifest.splits for lv in sorted(s.levels, key=lambda lv: lv.bytes_per_sample)]
    assert list(rows) == ["local (fp32, the reference; this CPU)", "local", "offload (png)", *splits, "orchestrator (min_latency, accuracy >= 0%)"]
    assert rows["local (fp32, the reference; this CPU)"]["accuracy"] == 1.0  # the reference agrees with itself
    assert rows["offload (png)"]["accuracy"] == 1.0 and rows["offload (png)"]["where"] == "offload 6"  # lossless PNG
    assert all(rows[s]["where"] == "split 6" for s in splits)
    assert [p["photo"] for p in out["per_photo"]] == [p.name for p in photos]
    assert "loopback, not shaped" in out["link"] and "pixel4-cpu" in out["device"]
    text = capsys.readouterr().out
    assert "the orchestrator's choice per photo" in text and photos[0].name[:20] in text


def test_the_photo_demo_shows_three_levels_per_split_unless_asked_for_all(test_bundle: Path) -> None:
    from splitserve.cli.demo import _option_names

    manifest = Bundle.open(test_bundle).manifest
    every = _option_names(manifest)
    fewer = _option_names(manifest, every_level=False)
    for s in manifest.splits:
        shown = [o for o in fewer if o.startswith(f"{s.name}@")]
        cheapest = min(s.levels, key=lambda lv: lv.bytes_per_sample).level
        best = max(s.levels, key=lambda lv: lv.accuracy).level
        assert {f"{s.name}@{cheapest}", f"{s.name}@0", f"{s.name}@{best}"} == set(shown)
    assert set(fewer) <= set(every) and fewer[:2] == every[:2] == ["local", "offload (png)"]
