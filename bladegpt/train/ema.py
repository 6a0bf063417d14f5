"""An exponential moving average of the weights (Polyak averaging), evaluated and kept in place of the
weights that train.

Polyak & Juditsky, "Acceleration of stochastic approximation by averaging" (1992); as the EMA of weights that
timm's ModelEma and many LM recipes evaluate. The average smooths the noise of the last steps, much as a decay
of the lr to zero does, without committing the run to where it ends.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

PREFIX = "ema."  # the average's tensors in a run's state.safetensors


class WeightAverage:
    """avg <- d * avg + (1 - d) * w after each step, for every trainable tensor of `model`, kept in fp32.

    d = min(decay, n / (n + 1)) at the n-th update (n from 0): a plain mean of the weights seen until the
    average's horizon of about 1 / (1 - decay) steps is reached, so that it never leans on the initial
    weights (Adam's bias correction does the same for its moments). Costs one fp32 copy of the trainable
    weights, and one more while `applied()` holds the average in the model."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self.params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        self.average = {n: p.detach().float().clone() for n, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        weight = 1 - min(self.decay, self.updates / (self.updates + 1))
        names = list(self.params)
        weights = [self.params[n].detach().float() for n in names]
        if self.updates == 0:  # the weights themselves: what the average held before (the weights of a model
            torch._foreach_copy_([self.average[n] for n in names], weights)  # not loaded yet) never counts
        else:
            torch._foreach_lerp_([self.average[n] for n in names], weights, weight)
        self.updates += 1

    @contextmanager
    def applied(self):
        """The average in the model's tensors (in place: a compiled model sees the same tensors), the
        trained weights back on leaving."""
        with torch.no_grad():
            kept = {n: p.detach().clone() for n, p in self.params.items()}
            for n, p in self.params.items():
                p.copy_(self.average[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(kept[n])

    def state(self) -> dict[str, torch.Tensor]:
        """The tensors an exact resume needs, named for state.safetensors; the update count rides along."""
        return {**{PREFIX + n: t for n, t in self.average.items()},
                PREFIX + "updates": torch.tensor(self.updates, dtype=torch.int64)}

    def load(self, tensors: dict[str, torch.Tensor]) -> bool:
        """Restore from state(); False (and nothing changed) if the tensors hold no average of these weights."""
        names = [PREFIX + n for n in self.average]
        if PREFIX + "updates" not in tensors or not all(n in tensors for n in names):
            return False
        for n in self.average:
            self.average[n].copy_(tensors[PREFIX + n])
        self.updates = int(tensors[PREFIX + "updates"])
        return True
