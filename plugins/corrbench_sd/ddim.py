"""DHF's deterministic DDIM schedule (η = 0) for inversion and generation.

DHF does not call a diffusers scheduler's ``step``: it runs its own loop over ᾱ values in which the
first inversion step feeds the *clean* latent to the UNet at timestep −1 (ᾱ(−1) = 1), see
docs/methods.md#ddim-inversion and pitfalls P4/P5 (docs/protocol.md#p4-unet-timestep-minus-one,
docs/protocol.md#p5-no-unet-call-at-980). This module reproduces that loop's numbers. β, ᾱ and the
timesteps come from diffusers' ``DDIMScheduler`` built with the paper's configuration.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from functools import lru_cache

from corrbench.errors import UsageError

from .configs import PAPER_DDIM_CONFIG


@dataclass(frozen=True)
class Step:
    """One UNet call: run at ``t`` on a latent at noise level ᾱ(t), move it to level ᾱ(t_next)."""

    index: int  # DHF's saved-feature index k of this step
    t: int  # UNet timestep (−1 for the clean pass)
    t_next: int
    alpha: float  # ᾱ(t)
    alpha_next: float  # ᾱ(t_next)


@lru_cache(maxsize=8)
def _train_schedule(num_steps: int) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(ᾱ for the 1000 training timesteps, the descending inference timesteps) from diffusers."""
    from diffusers import DDIMScheduler

    with warnings.catch_warnings():  # diffusers nags about steps_offset=0, which is DHF's choice
        warnings.simplefilter("ignore")
        scheduler = DDIMScheduler(**PAPER_DDIM_CONFIG)
        scheduler.set_timesteps(num_steps)
    return (tuple(float(a) for a in scheduler.alphas_cumprod.tolist()),
            tuple(int(t) for t in scheduler.timesteps.tolist()))


class DDIMSchedule:
    """The ``num_steps`` inversion and generation steps (paper: 50)."""

    def __init__(self, num_steps: int = 50):
        num_steps = int(num_steps)
        if num_steps < 1 or num_steps > PAPER_DDIM_CONFIG["num_train_timesteps"]:
            raise UsageError(f"sd.num_steps must be between 1 and 1000, got {num_steps}")
        self.num_steps = num_steps
        alphas, desc = _train_schedule(num_steps)
        self._alphas = alphas
        self.timesteps = desc  # generation order: 980, 960, ..., 0
        self.ascending = tuple(reversed(desc))  # 0, 20, ..., 980

    def alpha(self, t: int) -> float:
        return 1.0 if t < 0 else self._alphas[t]

    def _step(self, index: int, t: int, t_next: int) -> Step:
        return Step(index, t, t_next, self.alpha(t), self.alpha(t_next))

    def inversion_steps(self) -> list[Step]:
        """Step i runs at t = −1, 0, 20, … and stores index k = N − 1 − i (clean pass = k = N − 1)."""
        ts = (-1,) + self.ascending[:-1]
        return [self._step(self.num_steps - 1 - i, t, t_next) for i, (t, t_next) in enumerate(zip(ts, self.ascending))]

    def generation_steps(self) -> list[Step]:
        """Step i runs at t = 980 − 20 i, moves to the next (−1 = clean at the end) and stores index k = i."""
        nxt = self.timesteps[1:] + (-1,)
        return [self._step(i, t, t_next) for i, (t, t_next) in enumerate(zip(self.timesteps, nxt))]

    def inversion_timestep(self, index: int) -> int:
        """The UNet timestep at which inversion computes the features of index ``index``."""
        return self.inversion_steps()[self.num_steps - 1 - index].t

    def index_of_inversion_timestep(self, t: int) -> int:
        """The saved-feature index whose inversion UNet call runs at timestep ``t``."""
        for step in self.inversion_steps():
            if step.t == t:
                return step.index
        valid = [s.t for s in self.inversion_steps()]
        raise UsageError(f"timestep {t} is not a UNet timestep of the {self.num_steps}-step DDIM inversion; "
                         f"valid: {valid[:4] + ['...'] + valid[-2:] if len(valid) > 6 else valid}")

    def check_indices(self, save_indices) -> tuple[int, ...]:
        out = tuple(int(k) for k in save_indices)
        bad = [k for k in out if not 0 <= k < self.num_steps]
        if bad:
            raise UsageError(f"saved step indices {bad} are outside 0..{self.num_steps - 1} (num_steps={self.num_steps})")
        if len(set(out)) != len(out):
            raise UsageError(f"saved step indices {list(out)} contain duplicates")
        return out


def ddim_update(x, eps, step: Step):
    """DHF's η = 0 update: x0 = (x − √(1−ᾱ)·ε)/√ᾱ, then x' = √ᾱ'·x0 + √(1−ᾱ')·ε."""
    x0 = (x - eps * math.sqrt(1.0 - step.alpha)) / math.sqrt(step.alpha)
    return x0 * math.sqrt(step.alpha_next) + eps * math.sqrt(1.0 - step.alpha_next)
