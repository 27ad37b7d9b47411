"""Koupleless Module Controller: bases become virtual Nodes, module pods become modules."""

__version__ = "0.1.0"
