"""Optimisers: SGD with momentum (the paper's 0.99) and Adam, updating parameters in place.

The update arithmetic is a backend kernel (``sgd_step``/``adam_step``), so parameters never leave
their device. ``state()``/``load_state()`` expose every buffer for exact-resume checkpoints.
"""


class Optimizer:
    """What every optimiser shares: its parameters, a step counter and named per-parameter buffers."""

    buffers = ()                        # names of the attributes holding one array per parameter

    def __init__(self, params):
        self.params = list(params)
        for name in self.buffers:
            setattr(self, name, [p.backend.xp.zeros_like(p.data) for p in self.params])
        self.steps = 0

    def zero_grad(self):
        """Forget the gradients of the last backward pass."""
        for p in self.params:
            p.grad = None

    def state(self):
        """Buffers and counters, as {name: array or number}, for checkpoints (``velocity/0``, ``m/3``...)."""
        state = {"steps": self.steps}
        for name in self.buffers:
            state.update({f"{name}/{i}": b for i, b in enumerate(getattr(self, name))})
        return state

    def load_state(self, state):
        """Restore what :meth:`state` returned (arrays as NumPy or backend arrays)."""
        self.steps = int(state["steps"])
        for name in self.buffers:
            for i, (p, b) in enumerate(zip(self.params, getattr(self, name))):
                b[...] = p.backend.asarray(state[f"{name}/{i}"])


class SGD(Optimizer):
    """SGD with heavy-ball momentum: v = momentum v - lr (g + wd p); p += v."""

    buffers = ("velocity",)

    def __init__(self, params, lr=0.01, momentum=0.99, weight_decay=0.0):
        super().__init__(params)
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def step(self):
        """Apply one update from the parameters' current gradients (missing ones are skipped)."""
        for p, v in zip(self.params, self.velocity):
            if p.grad is not None:
                p.backend.sgd_step(p.data, p.grad, v, self.lr, self.momentum, self.weight_decay)
        self.steps += 1


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with bias correction and optional L2 weight decay."""

    buffers = ("m", "v")

    def __init__(self, params, lr=3e-4, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay

    def step(self):
        """Apply one update from the parameters' current gradients (missing ones are skipped)."""
        self.steps += 1
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is not None:
                p.backend.adam_step(p.data, p.grad, m, v, self.lr, self.betas[0], self.betas[1], self.eps,
                                    self.steps, self.weight_decay)
