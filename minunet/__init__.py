"""minunet: the U-Net of Ronneberger, Fischer and Brox (MICCAI 2015) on a from-scratch engine.

The layers, from the top: ``minunet.cli`` (commands) -> ``minunet.data`` / ``minunet.train`` /
``minunet.tiling`` -> ``minunet.unet`` (the model) -> ``minunet.functional`` (ops) ->
``minunet.autograd`` (the engine) -> ``minunet.kernels`` (reference, cpu, cuda backends).
See docs/architecture.md.
"""
__version__ = "0.1.0"
