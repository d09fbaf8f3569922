"""The engine: tensors and autograd, the ops (one Function per kernel), layers, optimisers, devices."""
