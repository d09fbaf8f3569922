"""Training: the loop, its settings, validation and the run directory."""
