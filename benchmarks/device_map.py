"""Which option is fastest on which link, per device class (``splitserve bench device-map``).

The bundle's options are measured on this machine (:func:`measure_profile`: the real edge client's
start-up times for each head with its entropy coding, the whole model and the PNG encoding; the real
endpoint's time per remote option, embedded ONNX Runtime on loopback; bytes and accuracy from the
manifest; framing measured). Each cited device class (:data:`splitserve.orchestrator.DEVICE_CLASSES`)
scales the device times by its published latency of the network over this machine's
(:meth:`~splitserve.orchestrator.DeviceClass.slowdown`); this machine itself is the class ``this-cpu``.
Then for every uplink rate (0.25-50 Mbit/s) and round trip (1-100 ms) the expected latency of each
option that meets the accuracy floor is

    local:   device_ms
    remote:  device_ms + (payload + framing) * 8 / rate + rtt + server_ms

(the orchestrator's own cost model, without queueing), and the map records the best option and its
margin over the best option of another kind. Writes ``device_map.json``, ``device_map.png`` and the
measured profile, ``device_map_profile.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from splitserve.orchestrator import DEVICE_CLASSES, Profile

__all__ = ["RATES_MBIT", "RTTS_MS", "link_map", "run"]

RATES_MBIT = tuple(float(v) for v in np.round(np.geomspace(0.25, 50.0, 24), 3))
RTTS_MS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)


def link_map(profile: Profile, accuracy_floor: float) -> dict[str, Any]:
    """Best option per (rtt, rate) for one profile: ids, expected ms, and the margin per kind."""
    entries = [e for e in profile.entries if e.option.accuracy >= accuracy_floor - 1e-9]
    kind = {e.option.id: e.option.kind for e in entries}
    best, best_ms, margin = [], [], []
    for rtt in RTTS_MS:
        row_best, row_ms, row_margin = [], [], []
        for rate in RATES_MBIT:
            cost = {}
            for e in entries:
                ms = e.device_ms
                if e.option.remote:
                    ms += (e.option.payload_bytes + profile.framing_bytes) * 8 / (rate * 1e3) + rtt + e.server_ms
                cost[e.option.id] = ms
            winner = min(cost, key=cost.__getitem__)
            others = [ms for oid, ms in cost.items() if kind[oid] != kind[winner]]
            row_best.append(winner)
            row_ms.append(round(cost[winner], 2))
            row_margin.append(round(min(others) / cost[winner], 3) if others else None)
        best.append(row_best)
        best_ms.append(row_ms)
        margin.append(row_margin)
    return {"best": best, "best_ms": best_ms, "speedup_over_other_kinds": margin,
            "eligible": [e.option.id for e in entries], "kinds": kind}


def _split_band(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per round trip, the rates at which a split option is best (the band the issue asks about)."""
    bands = []
    for rtt, row, margin in zip(RTTS_MS, result["best"], result["speedup_over_other_kinds"]):
        rates = [r for r, oid in zip(RATES_MBIT, row) if result["kinds"][oid] == "split"]
        gains = [m for oid, m in zip(row, margin) if result["kinds"][oid] == "split" and m is not None]
        bands.append({"rtt_ms": rtt, "split_best_from_mbit": min(rates) if rates else None,
                      "split_best_to_mbit": max(rates) if rates else None,
                      "best_speedup": max(gains) if gains else None})
    return bands


def run(
    bundle: Path, out: Path, *, accuracy_floor: float = 0.75, requests: int = 60,
    images: list[Any] | None = None, log: Callable[[str], None] = print, profile: Profile | None = None,
) -> dict[str, Any]:
    """Measure ``bundle`` (or take its measured ``profile``), map each device class, write
    ``out/device_map.json`` and ``.png``."""
    from .adaptation import measure_profile

    out.mkdir(parents=True, exist_ok=True)
    if profile is None:
        profile = measure_profile(bundle, requests=requests, images=images, log=log)
    profile.save(out / "device_map_profile.json")  # for `bench adaptation --profile ... --device CLASS`
    here = profile.entry("local").device_ms
    classes: dict[str, dict[str, Any]] = {"this-cpu": {"slowdown": 1.0, "source": "measured here"}}
    for d in DEVICE_CLASSES.values():
        # The client measured its fastest local model; a device class's figure is for the same network.
        classes[d.name] = {"slowdown": d.slowdown(here), "source": d.source, "published_ms": d.published_ms,
                           "precision": d.precision, "description": d.description}
    for name, info in classes.items():
        info["map"] = link_map(profile.with_device_factor(info["slowdown"]), accuracy_floor)
        info["split_band"] = _split_band(info["map"])
        log(f"  {name}: x{info['slowdown']:.2f}; split best at " + ", ".join(
            f"{b['rtt_ms']:g} ms: {b['split_best_from_mbit']}-{b['split_best_to_mbit']} Mbit/s"
            for b in info["split_band"] if b["split_best_from_mbit"] is not None) or "no link")
    result = {
        "command": f"splitserve bench device-map --bundle {bundle} --accuracy-floor {accuracy_floor:g}",
        "time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "bundle": str(bundle), "accuracy_floor": accuracy_floor,
        "rates_mbit": RATES_MBIT, "rtts_ms": RTTS_MS,
        "profile": {"name": profile.name, "description": profile.description, "framing_bytes": profile.framing_bytes,
                    "entries": [{"option": e.option.id, "accuracy": e.option.accuracy,
                                 "payload_bytes": e.option.payload_bytes, "device_ms": e.device_ms,
                                 "server_ms": e.server_ms} for e in profile.entries]},
        "device_classes": classes,
    }
    (out / "device_map.json").write_text(json.dumps(result, indent=1))
    _plot(result, out / "device_map.png")
    return result


def _plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    classes = result["device_classes"]
    ids = sorted({oid for c in classes.values() for row in c["map"]["best"] for oid in row},
                 key=lambda o: (o != "local", o != "offload", o))
    colours = ListedColormap(plt.get_cmap("tab10").colors[: len(ids)])
    fig, axes = plt.subplots(1, len(classes), figsize=(5.2 * len(classes), 4.6), sharey=True)
    for ax, (name, c) in zip(np.atleast_1d(axes), classes.items()):
        grid = np.array([[ids.index(oid) for oid in row] for row in c["map"]["best"]])
        ax.pcolormesh(np.arange(len(result["rates_mbit"]) + 1), np.arange(len(result["rtts_ms"]) + 1), grid,
                      cmap=colours, vmin=-0.5, vmax=len(ids) - 0.5)
        step = max(1, len(result["rates_mbit"]) // 6)
        ax.set_xticks(np.arange(0, len(result["rates_mbit"]), step) + 0.5,
                      [f"{r:g}" for r in result["rates_mbit"][::step]])
        ax.set_yticks(np.arange(len(result["rtts_ms"])) + 0.5, [f"{r:g}" for r in result["rtts_ms"]])
        ax.set_xlabel("uplink (Mbit/s)")
        ax.set_title(f"{name} (device x{c['slowdown']:.1f})", fontsize=10)
    np.atleast_1d(axes)[0].set_ylabel("round trip (ms)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(len(ids))]
    fig.legend(handles, ids, loc="lower center", ncol=len(ids), fontsize=8)
    fig.suptitle(f"fastest option (accuracy >= {result['accuracy_floor']:.0%}) per link and device class; "
                 f"device times scaled from this CPU by published figures", fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)

