"""Backbone families; importing this package registers them all."""

from . import efficientnet, fmnist, torchvision_nets

__all__ = ["efficientnet", "fmnist", "torchvision_nets"]
