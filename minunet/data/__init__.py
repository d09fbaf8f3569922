"""Data: the HDF5 data format, conversion, training tiles with augmentation, image input."""
