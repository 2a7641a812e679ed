"""One way for every splitserve command to report an error: ``error: <message>`` on stderr, exit 2.

Used by the top-level CLI and by the edge and cloud groups (which also run on their own, e.g.
``python -m splitserve.cloud``). Needs click, which both the ``[edge]`` and ``[cloud]`` extras bring.
"""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from .errors import SplitServeError

__all__ = ["ErrorLineGroup", "fail"]


def fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class ErrorLineGroup(click.Group):
    """A click group that turns a :class:`SplitServeError` into one line and exit code 2."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SplitServeError as exc:
            fail(str(exc))
