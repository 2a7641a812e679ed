"""``python -m splitserve.cloud serve ...``."""

from __future__ import annotations

from .cli import cloud

if __name__ == "__main__":  # guarded: spawned decode workers import this module as __mp_main__
    cloud(prog_name="python -m splitserve.cloud")
