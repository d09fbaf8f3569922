"""How much memory the network needs, and how much a device has: the tile-size rules' inputs."""
from minunet.files.space import available_memory


def activation_bytes(geo, width, in_channels=1, classes=2, up_kernel=2, batch=1, itemsize=4):
    """Bytes of all activations of one forward pass through a network of this Geometry.

    The sum over layers of channels x size^2 x itemsize x batch: input, both convolutions of each
    level, each pooling, each up-convolution, each concatenation and the class scores. Without a
    graph the engine frees most of these early, so this overestimates the peak.
    """
    depth = len(geo.encoder_sizes)
    total = in_channels * geo.input_size ** 2
    for level, s in enumerate(geo.encoder_sizes):
        c = width * 2 ** level
        total += c * ((s + 2) ** 2 + s ** 2)
        if level < depth - 1:
            total += c * (s // 2) ** 2
    for i, s in enumerate(geo.decoder_sizes):
        level = depth - 2 - i
        c = width * 2 ** level
        up = s + 4
        total += c * up ** 2 + 2 * c * up ** 2 + c * ((s + 2) ** 2 + s ** 2)
    total += 2 * classes * geo.output_size ** 2          # scores and probabilities
    return total * itemsize * batch


def memory_budget(device):
    """Bytes available for activations: half the memory this process can still allocate on the host
    (:func:`minunet.files.space.available_memory`), or 70% of the free GPU memory."""
    if device == "cuda":
        try:
            import cupy  # optional: the cuda extra
            free, _ = cupy.cuda.runtime.memGetInfo()
            return int(0.7 * free)
        except Exception:                        # no CuPy or no GPU: fall back to 4 GiB
            return 4 << 30
    return int(0.5 * available_memory())
