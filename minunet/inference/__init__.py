"""Inference: overlap-tile prediction, block-wise volumes, output formats and files."""
