"""The package's public surface: ``__all__`` lists exactly the public names, and they import."""

from __future__ import annotations

import splitserve.edge as edge
import splitserve.edge._transports as transports


def test_all_lists_exactly_the_public_names() -> None:
    for pkg in (edge, transports):
        public = {n for n in vars(pkg) if not n.startswith("_")} - {"annotations"}
        modules = {n for n, v in vars(pkg).items() if type(v).__name__ == "module"}
        assert set(pkg.__all__) == public - modules, pkg.__name__


def test_every_exported_name_resolves() -> None:
    for name in edge.__all__:
        assert getattr(edge, name) is not None


def test_the_errors_a_client_raises_import_from_the_edge_package() -> None:
    from splitserve.core import errors

    for name in ("SplitServeError", "ConfigError", "RequestError", "TransportError", "UnavailableError",
                 "DeadlineExceededError", "AuthenticationError"):
        assert getattr(edge, name) is getattr(errors, name)
