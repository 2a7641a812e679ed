"""Backbone families; importing this package registers them all."""

from . import fmnist

__all__ = ["fmnist"]
