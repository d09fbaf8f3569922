"""minunet: the U-Net of Ronneberger, Fischer and Brox (MICCAI 2015) on a from-scratch engine.

The stages, from the top: ``minunet.cli`` (commands) -> ``minunet.training`` ->
``minunet.inference`` / ``minunet.evaluation`` -> ``minunet.model`` / ``minunet.data`` ->
``minunet.engine`` (autograd and ops) -> ``minunet.kernels`` (reference, cpu, cuda backends).
See docs/architecture.md.
"""
__version__ = "0.1.0"
