"""Optional bundle signatures: who wrote a bundle, not only whether its files are intact.

The manifest lists the sha256 of every file, so an Ed25519 signature over ``manifest.json`` covers the
whole bundle. ``splitserve export --sign KEY`` (or :func:`sign_bundle`) writes ``manifest.sig``::

    {"format": "splitserve.signature", "algorithm": "ed25519", "public_key": <base64>, "signature": <base64>}

and an endpoint configured with trusted public keys serves only bundles signed by one of them
(``Bundle.open(path, trusted_keys=...)``). Hashes alone catch corruption; a signature also catches a
bundle that was changed and re-hashed by someone without the key. Uses the ``cryptography`` package
(in the ``[cloud]`` and ``[train]`` extras).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .errors import BundleError, ConfigError

__all__ = ["SIGNATURE_FILE", "generate_key", "load_trusted_keys", "sign_bundle", "verify_signature"]

SIGNATURE_FILE = "manifest.sig"
_FORMAT = "splitserve.signature"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ModuleNotFoundError as exc:
        raise ConfigError("bundle signatures need the cryptography package: pip install 'splitserve[cloud]'") from exc
    return serialization, ed25519


def generate_key(path: str | Path) -> Path:
    """Write a new Ed25519 private key to ``path`` (PEM, mode 0600) and its public key to ``path.pub``."""
    serialization, ed25519 = _crypto()
    path = Path(path)
    if path.exists():
        raise ConfigError(f"{path} exists: not overwriting a key")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub_path = path.with_name(path.name + ".pub")
    pub_path.write_bytes(pub)
    return pub_path


def sign_bundle(bundle_dir: str | Path, private_key: str | Path) -> Path:
    """Sign ``bundle_dir/manifest.json`` with the PEM Ed25519 key at ``private_key``; writes ``manifest.sig``."""
    serialization, ed25519 = _crypto()
    try:
        key = serialization.load_pem_private_key(Path(private_key).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"cannot read the signing key {private_key}: {exc}") from exc
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise ConfigError(f"{private_key} is not an Ed25519 private key")
    manifest = Path(bundle_dir) / "manifest.json"
    raw_pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    sig = {
        "format": _FORMAT, "algorithm": "ed25519", "public_key": base64.b64encode(raw_pub).decode(),
        "signature": base64.b64encode(key.sign(manifest.read_bytes())).decode(),
    }
    out = Path(bundle_dir) / SIGNATURE_FILE
    out.write_text(json.dumps(sig, indent=1))
    return out


def load_trusted_keys(paths: Iterable[str | Path]) -> tuple[bytes, ...]:
    """The raw Ed25519 public keys in the PEM files ``paths`` (several keys per file allowed)."""
    serialization, ed25519 = _crypto()
    keys = []
    for path in paths:
        text = Path(path).read_text()
        blocks = [b + "-----END PUBLIC KEY-----\n" for b in text.split("-----END PUBLIC KEY-----") if "BEGIN" in b]
        if not blocks:
            raise ConfigError(f"{path} holds no PEM public key")
        for block in blocks:
            try:
                key = serialization.load_pem_public_key(block.strip().encode() + b"\n")
            except ValueError as exc:
                raise ConfigError(f"{path}: not a PEM public key: {exc}") from exc
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise ConfigError(f"{path}: only Ed25519 public keys are trusted")
            keys.append(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    return tuple(keys)


def verify_signature(root: Path, trusted: tuple[bytes, ...]) -> None:
    """Check that ``root/manifest.json`` is signed by one of the ``trusted`` raw public keys.

    Raises:
        BundleError: no signature, a malformed one, an untrusted key or a signature that does not verify.
    """
    from cryptography.exceptions import InvalidSignature

    _, ed25519 = _crypto()
    sig_path = root / SIGNATURE_FILE
    if sig_path.is_symlink() or not sig_path.is_file():
        raise BundleError(f"bundle {root} is not signed ({SIGNATURE_FILE} missing) and only signed bundles are served")
    try:
        sig = json.loads(sig_path.read_text())
        public, signature = base64.b64decode(sig["public_key"]), base64.b64decode(sig["signature"])
        ok_format = sig.get("format") == _FORMAT and sig.get("algorithm") == "ed25519"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise BundleError(f"bundle {root}: malformed {SIGNATURE_FILE}: {exc}") from exc
    if not ok_format:
        raise BundleError(f"bundle {root}: {SIGNATURE_FILE} is not an ed25519 splitserve signature")
    if public not in trusted:
        raise BundleError(f"bundle {root} is signed by a key that is not trusted")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(public).verify(signature, (root / "manifest.json").read_bytes())
    except (InvalidSignature, ValueError) as exc:
        raise BundleError(f"bundle {root}: the signature does not match its manifest (changed after signing)") from exc
