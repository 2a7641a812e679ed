"""``splitserve demo``: the main job, end to end on one machine.

Default (``--workload photos``): the EfficientNet-Lite0 bundle exported from the weights committed in
``models/weights`` (no training; exported once, then cached), the held-out photos of the corpus (only
their sources are fetched, tens of MB, cached), the real cloud endpoint as its own process (embedded
ONNX Runtime tail, the default where no Triton is configured) and the edge client, on a device class
taken from a published measurement of the same network (``--device``): this CPU runs Lite0 in about
5 ms, where no split pays, so on-device work is padded to the cited device's speed
(``EdgeConfig.device_slowdown``). Run as root with iproute2, the endpoint sits behind a kernel-shaped
link (netns + tbf and a delay relay, as the benchmarks use) at ``--link-mbit`` and ``--rtt-ms``;
otherwise the link is loopback and the output says so. Prints one row per option (bytes, agreement with
the unsplit fp32 model, latency, where it ran) and the orchestrator's choice for every photo.

``--workload fmnist`` is the Fashion-MNIST demo (its bundle is trained on first use).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

__all__ = ["run_demo", "run_photo_demo"]


def _option_names(manifest: Any, every_level: bool = True) -> list[str]:
    """The options of ``manifest`` as the demo's rows name them: local, the offload levels (with their
    codec), then the split levels (all of them, or per split its fewest bytes, level 0 and its most
    accurate); the first word is the policy."""
    offload = [f"offload{'@' + str(o.level) if o.level else ''} ({o.label})" for o in manifest.offload.levels]
    splits = []
    for s in manifest.splits:
        shown = {lv.level for lv in s.levels} if every_level else {
            min(s.levels, key=lambda lv: lv.bytes_per_sample).level, s.levels[0].level,
            max(s.levels, key=lambda lv: lv.accuracy).level,
        }
        splits += [f"{s.name}@{lv.level}" for lv in sorted(s.levels, key=lambda lv: lv.bytes_per_sample) if lv.level in shown]
    return ["local", *offload, *splits]


def _endpoint(bundle: Path, **options: Any) -> Any:
    """The demo's endpoint (a :class:`~splitserve.benchmarks.stack.Endpoint`, not started): embedded tail,
    its own process group, output on this terminal, metrics on 127.0.0.1 (``/readyz`` tells when it serves)."""
    from splitserve.benchmarks.stack import Endpoint

    return Endpoint(bundle, metrics_port=0, grace_s=None, readiness="metrics", startup_timeout_s=120.0,
                    output="inherit", new_session=True, **options)


@contextlib.contextmanager
def _loopback_endpoint(bundle: Path) -> Iterator[str]:
    with _endpoint(bundle) as endpoint:
        yield endpoint.target


def _median(results: list[Any], field: str) -> float | None:
    values = [getattr(r.timings, field) for r in results if getattr(r.timings, field) is not None]
    return float(np.median(values)) if values else None


def _row(results: list[Any], reference: np.ndarray) -> dict[str, Any]:
    top1 = np.array([r.top1 for r in results])
    total = np.array([r.timings.total_ms for r in results])
    return {
        "device_ms": sum(_median(results, f) or 0.0 for f in ("preprocess_ms", "head_ms", "encode_ms", "local_ms")),
        "server_ms": _median(results, "server_total_ms"),
        "rtt_ms": _median(results, "rtt_ms"),
        "accuracy": float((top1 == reference).mean()),
        "payload_bytes": float(np.mean([r.payload_bytes for r in results])),
        "wire_bytes": float(np.mean([r.bytes_sent for r in results])),
        "p50_ms": float(np.percentile(total, 50)),
        "p95_ms": float(np.percentile(total, 95)),
        "where": ", ".join(f"{k} {v}" for k, v in Counter(r.computed for r in results).most_common()),
        "chosen": ", ".join(f"{k} {v}" for k, v in Counter(r.chosen for r in results).most_common(3)),
    }


# --- Fashion-MNIST --------------------------------------------------------------------------------------


def run_demo(recipe: str = "fmnist_resnet-quick", n_images: int = 2000) -> list[dict[str, Any]]:
    """The Fashion-MNIST demo: every option over ``n_images`` test images; prints the table, returns the rows."""
    from splitserve.core.bundle import Bundle
    from splitserve.core.datasets import load_fashion_mnist
    from splitserve.edge import EdgeClient
    from splitserve.models.zoo import build_bundle

    print(f"[1/3] bundle for recipe {recipe!r} (trained and exported on the first run, then cached)")
    bundle_path = build_bundle(recipe)
    manifest = Bundle.open(bundle_path).manifest
    images, labels = load_fashion_mnist("test")
    images, labels = images[:n_images], labels[:n_images]
    print("[2/3] cloud endpoint on loopback (embedded ONNX Runtime tail)")
    rows = []
    with _loopback_endpoint(bundle_path) as address:
        options = _option_names(manifest)
        print(f"[3/3] edge client: {len(images)} Fashion-MNIST test images per option")
        for option in [*options, "min_latency"]:
            with EdgeClient(bundle_path, address, policy=option.split(" ")[0]) as client:
                results = list(tqdm(client.stream(images), total=len(images), desc=option, unit="img", leave=False))
            rows.append({"option": "orchestrator (min_latency)" if option == "min_latency" else option,
                         **_row(results, labels)})
    print(f"\nsplitserve demo: {len(images)} Fashion-MNIST test images, unsplit model accuracy "
          f"{manifest.unsplit_accuracy:.2%} (manifest, on its eval set)")
    _print_rows(rows, "accuracy")
    print("\npayload = bitstream (split) or the image (offload: PNG, JPEG or WebP); wire = the request's TCP bytes, gRPC and HTTP/2 framing included.")
    return rows


# --- photos ---------------------------------------------------------------------------------------------


def run_photo_demo(
    *,
    bundle: Path | None = None,
    photos: Sequence[Path] | None = None,
    device: str = "raspberry-pi-4",
    link_mbit: float = 20.0,
    rtt_ms: float = 2.0,
    accuracy_floor: float = 0.75,
    shape: bool = True,
    every_level: bool = False,
) -> dict[str, Any]:
    """The photo demo (see the module docstring); ``bundle`` and ``photos`` default to the natural bundle
    and the held-out photos; ``every_level`` gives every split level its own row (else the fewest bytes,
    level 0 and the most accurate; the orchestrator chooses among all of them either way). Prints the
    tables; returns ``{"rows", "per_photo", "device", "link"}``."""
    from splitserve.orchestrator import device_class

    dev = device_class(device)
    if photos is None:
        print("[1/4] held-out photos (their sources are fetched on the first run, then cached)")
        photos = _heldout_photos()
    if bundle is None:
        print("[2/4] EfficientNet-Lite0 split bundle from the committed weights (exported on the first run, then cached)")
        from splitserve.models.natural import build_natural_bundle

        bundle = build_natural_bundle()
    here_ms = _local_ms(bundle, dev.compare_with)
    slowdown = dev.slowdown(here_ms)
    plan = {"bundle": str(bundle), "photos": [str(p) for p in photos], "slowdown": slowdown,
            "accuracy_floor": accuracy_floor, "every_level": every_level}
    from splitserve.benchmarks.netlab import unavailable_reason

    why_not = unavailable_reason() if shape else "--loopback was asked for"
    step4 = f"[4/4] edge client on the emulated device: {len(photos)} photos per option, then the orchestrator"
    if why_not is None:
        link = f"shaped by the kernel: {link_mbit:g} Mbit/s uplink (tbf), {rtt_ms:g} ms round trip (delay relay)"
        print(f"[3/4] cloud endpoint in its own network namespace, link {link}")
        print(step4)
        out = _run_shaped(plan, link_mbit * 1e6, rtt_ms)
    else:
        link = f"loopback, not shaped ({why_not})"
        print(f"[3/4] cloud endpoint on loopback (embedded ONNX Runtime tail); {link}")
        with _loopback_endpoint(bundle) as address:
            print(step4)
            out = _client_phase({**plan, "address": address})
    device_text = (f"{dev.name} ({dev.description}): {dev.network} {dev.published_ms:g} ms published "
                   f"({dev.precision}), this CPU {here_ms:.1f} ms ({dev.compare_with}, 1 thread) -> on-device "
                   f"work padded x{slowdown:.2f}. Source: {dev.source}")
    _print_photo_tables(out, len(photos), device_text, link)
    return {**out, "device": device_text, "link": link}


def _heldout_photos() -> list[Path]:
    from splitserve.core.photo_corpus import build_corpus

    corpus = build_corpus(split="heldout", report=lambda line: print(f"      {line}"))
    return [p.path(corpus.root) for p in corpus.split("heldout")]


def _local_ms(bundle: Path, precision: str, repeats: int = 20) -> float:
    """This CPU's median time for the bundle's whole model at ``precision``, as the edge client measures it."""
    from splitserve.core.bundle import Bundle
    from splitserve.edge import EdgeRuntime

    b = Bundle.open(bundle)
    try:
        return EdgeRuntime(b, [], precision=precision).measure(repeats).local_ms
    finally:
        b.close()


def _client_phase(plan: dict[str, Any]) -> dict[str, Any]:
    """Every option, then the orchestrator, over the photos: rows and the orchestrator's choice per photo.

    The reference answer for each photo is the unsplit model in fp32 (the ``local`` policy at
    ``precision="fp32"``, run at this CPU's pace): agreement is top-1 equal to it.
    """
    from splitserve.core.bundle import Bundle
    from splitserve.edge import EdgeClient, EdgeConfig

    photos = [Path(p).read_bytes() for p in plan["photos"]]
    bundle, address = Path(plan["bundle"]), plan["address"]
    manifest = Bundle.open(bundle).manifest
    config = EdgeConfig(device_slowdown=plan["slowdown"], timeout_s=5.0, accuracy_floor=plan["accuracy_floor"])

    def run(policy: str, precision: str = "auto", slowdown: float = plan["slowdown"]) -> list[Any]:
        settings = config.with_overrides(precision=precision, device_slowdown=slowdown)
        with EdgeClient(bundle, address, policy=policy, config=settings) as client:
            return [client.infer(p) for p in tqdm(photos, desc=policy, unit="photo", leave=False)]

    reference_results = run("local", "fp32", 1.0)  # only its answers matter: not slowed to the device's pace
    reference = np.array([r.top1 for r in reference_results])
    rows = [{"option": "local (fp32, the reference; this CPU)", **_row(reference_results, reference)}]
    for option in _option_names(manifest, plan["every_level"]):
        rows.append({"option": option, **_row(run(option.split(" ")[0]), reference)})
    chosen = run("min_latency")
    rows.append({"option": f"orchestrator (min_latency, accuracy >= {plan['accuracy_floor']:.0%})", **_row(chosen, reference)})
    per_photo = [
        {"photo": Path(path).name, "chosen": r.chosen, "computed": r.computed, "ms": r.timings.total_ms,
         "bytes": r.bytes_sent, "label": r.labels[0] if r.labels else str(r.top1), "agrees": bool(r.top1 == ref)}
        for path, r, ref in zip(plan["photos"], chosen, reference)
    ]
    return {"rows": rows, "per_photo": per_photo}


def _run_shaped(plan: dict[str, Any], rate_bps: float, rtt_ms: float) -> dict[str, Any]:
    """The endpoint in the lab's cloud namespace behind tbf + delay relay; the client phase in the edge one."""
    from splitserve.benchmarks.netlab import DelayRelay, Filler, Netlab

    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        lab = stack.enter_context(Netlab(rate_bps=rate_bps, tag="ssvdemo"))
        endpoint = stack.enter_context(_endpoint(
            Path(plan["bundle"]), address="127.0.0.1:50051", launcher=lab.exec_prefix("cloud"),
            place=lambda: lab.inside("cloud"),
        ))
        relay = stack.enter_context(DelayRelay(lab, ("127.0.0.1", endpoint.port), one_way_ms=rtt_ms / 2))
        stack.enter_context(Filler(lab))
        spec, result = Path(tmp) / "plan.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({**plan, "address": f"{relay.address[0]}:{relay.address[1]}", "out": str(result)}))
        client = lab.popen("edge", [sys.executable, "-m", "splitserve.cli.demo", str(spec)])
        if client.wait() != 0:
            raise RuntimeError(f"the demo's client process exited with code {client.returncode}")
        return json.loads(result.read_text())


def _print_rows(rows: list[dict[str, Any]], score: str, breakdown: bool = False) -> None:
    width = max(28, *(len(r["option"]) for r in rows))
    head = f"{'option':{width}s} {'payload B':>9s} {'wire B':>7s} {score:>9s} {'p50 ms':>7s} {'p95 ms':>7s}"
    if breakdown:
        head += f" {'device':>7s} {'rtt':>6s} {'server':>6s}"
    print(head + "  where")
    print("-" * (len(head) + 14))
    for r in rows:
        line = (f"{r['option']:{width}s} {r['payload_bytes']:9.1f} {r['wire_bytes']:7.1f} {r['accuracy']:9.2%} "
                f"{r['p50_ms']:7.2f} {r['p95_ms']:7.2f}")
        if breakdown:
            line += f" {r['device_ms']:7.1f} " + " ".join(
                f"{r[k]:6.1f}" if r[k] is not None else f"{'-':>6s}" for k in ("rtt_ms", "server_ms"))
        print(f"{line}  {r['where']}")


def _print_photo_tables(out: dict[str, Any], n: int, device: str, link: str) -> None:
    print(f"\nsplitserve demo: {n} held-out photos through EfficientNet-Lite0, split at its bottleneck or not")
    print(f"device: {device}")
    print(f"link: {link}\n")
    _print_rows(out["rows"], "agreement", breakdown=True)
    print("\nagreement = top-1 equal to the unsplit model in fp32; payload = bitstream (split) or the image (offload: PNG, JPEG or WebP);"
          "\nwire = the request's TCP bytes, framing included; latency = the edge client's, on the emulated device;"
          "\ndevice / rtt / server = medians of the device's work (decoding the photo included), the round trip"
          "\n(link and endpoint) and the endpoint's own time (decode + tail on this machine's CPU).")
    print("\nthe orchestrator's choice per photo:")
    print(f"{'photo':34s} {'chosen':16s} {'computed':8s} {'ms':>7s} {'wire B':>7s}  top-1 (agrees)")
    for p in out["per_photo"]:
        print(f"{p['photo'][:34]:34s} {p['chosen']:16s} {p['computed']:8s} {p['ms']:7.1f} {p['bytes']:7d}  "
              f"{p['label'][:30]} ({'yes' if p['agrees'] else 'no'})")


def _client_main(spec_path: str) -> None:
    """The client phase in a child process (inside the lab's edge namespace); writes its JSON result."""
    plan = json.loads(Path(spec_path).read_text())
    Path(plan["out"]).write_text(json.dumps(_client_phase(plan)))


if __name__ == "__main__":  # pragma: no cover - the shaped demo's client process
    _client_main(sys.argv[1])
