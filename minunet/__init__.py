"""minunet: the U-Net of Ronneberger, Fischer and Brox (MICCAI 2015) on a from-scratch engine.

The layers, from the top: ``minunet.cli`` (commands) -> ``minunet.data.dataset`` / ``minunet.training.trainer`` /
``minunet.inference.tiling`` -> ``minunet.model.unet`` (the model) -> ``minunet.engine.functional`` (ops) ->
``minunet.engine.autograd`` (the engine) -> ``minunet.kernels`` (reference, cpu, cuda backends).
See docs/architecture.md.
"""
__version__ = "0.1.0"
