"""Kopf handlers: thin decorators that call the domain code.

`kopf run -m module_controller.handlers --all-namespaces --standalone` runs the operator
as `module-controller run` does.
"""

from module_controller.handlers import lifecycle, peer
from module_controller.handlers import rollouts as rollouts  # after lifecycle: needs its runtime

__all__ = ["lifecycle", "peer"]
