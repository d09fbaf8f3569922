"""The same U-Net in PyTorch, holding a minunet model's weights: the yardstick of tests and benchmarks.

PyTorch is never a dependency of minunet; this module is imported only by tests (skipped without
torch) and benchmarks. ``TorchUNet.from_minunet(model)`` copies the weights, so forward outputs and
gradients can be compared tensor by tensor; ``dropout_mask`` lets both use the same dropout mask.
"""
import numpy as np
import torch
import torch.nn.functional as tF


class TorchUNet(torch.nn.Module):
    """torch.nn twin of minunet.model.unet.UNet (same layer order, same parameter names)."""

    def __init__(self, depth=5, width=64, in_channels=1, classes=2, up_kernel=2, deep_supervision=False):
        super().__init__()
        channels = [width * 2 ** level for level in range(depth)]
        self.depth, self.deep_supervision = depth, deep_supervision
        self.encoder = torch.nn.ModuleList()
        previous = in_channels
        for c in channels:
            self.encoder.append(_double_conv(previous, c))
            previous = c
        self.up, self.decoder, self.aux_heads = torch.nn.ModuleList(), torch.nn.ModuleList(), torch.nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            c = channels[level]
            self.up.append(torch.nn.ConvTranspose2d(channels[level + 1], c, up_kernel, stride=2))
            self.decoder.append(_double_conv(2 * c, c))
            if deep_supervision and level > 0:
                self.aux_heads.append(torch.nn.Conv2d(c, classes, 1))
        self.head = torch.nn.Conv2d(channels[0], classes, 1)

    @classmethod
    def from_minunet(cls, model, dtype=torch.float32):
        """A twin of a minunet UNet with a copy of its weights."""
        twin = cls(model.depth, model.width, model.in_channels, model.classes, model.up_kernel,
                   model.deep_supervision).to(dtype)
        with torch.no_grad():
            for (_, ours), theirs in zip(model.named_parameters(), twin.ordered_parameters()):
                theirs.copy_(torch.from_numpy(np.ascontiguousarray(ours.numpy())).to(dtype))
        return twin

    def ordered_parameters(self):
        """Parameters in minunet's order: encoder, up-convolutions, decoder, auxiliary heads, head."""
        params = []
        for group in (self.encoder, self.up, self.decoder, self.aux_heads):
            for block in group:
                params += list(block.parameters())
        return params + list(self.head.parameters())

    def forward(self, x, dropout_mask=None, dropout_p=0.5):
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x)
            if level < self.depth - 1:
                skips.append(x)
                x = tF.max_pool2d(x, 2)
        if dropout_mask is not None:
            x = x * dropout_mask / (1 - dropout_p)
        aux = []
        heads = iter(self.aux_heads)
        for i, (up, block) in enumerate(zip(self.up, self.decoder)):
            u = up(x)
            skip = skips[-1 - i]
            dh, dw = (skip.shape[2] - u.shape[2]) // 2, (skip.shape[3] - u.shape[3]) // 2
            x = block(torch.cat([skip[:, :, dh:dh + u.shape[2], dw:dw + u.shape[3]], u], dim=1))
            if self.deep_supervision and i < len(self.decoder) - 1:
                aux.append(next(heads)(x))
        logits = self.head(x)
        return (logits, aux) if self.deep_supervision else logits


def _double_conv(cin, cout):
    return torch.nn.Sequential(torch.nn.Conv2d(cin, cout, 3), torch.nn.ReLU(inplace=True),
                               torch.nn.Conv2d(cout, cout, 3), torch.nn.ReLU(inplace=True))


def weighted_cross_entropy(logits, labels, weights, ignore=255, reduction="mean"):
    """-sum w log p_label over non-ignored pixels (divided by their count for "mean")."""
    logp = tF.log_softmax(logits, dim=1)
    valid = labels != ignore
    lab = torch.where(valid, labels, torch.zeros_like(labels)).long()
    picked = logp.gather(1, lab[:, None])[:, 0]
    loss = -(weights * picked * valid).sum()
    return loss / valid.sum().clamp(min=1) if reduction == "mean" else loss
