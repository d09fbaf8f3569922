"""Models that leave minunet: an ONNX graph (:mod:`.onnx_graph`) and a bioimage.io package (:mod:`.bioimageio`)."""
