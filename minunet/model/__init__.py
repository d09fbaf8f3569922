"""The model: the U-Net, its tile geometry, its memory needs and its checkpoints."""
