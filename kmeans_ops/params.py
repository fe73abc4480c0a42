"""Run parameters, validated once at the edge (CLI, DAG params) with messages naming the parameter.

Everything downstream trusts a :class:`Params`; nothing re-checks.
"""

from __future__ import annotations

import math
import numbers
import os
from dataclasses import asdict, dataclass

#: Largest distance two colours can be apart in 8-bit RGB: 255 * sqrt(3).
MAX_COLOUR_DISTANCE = 255.0 * math.sqrt(3.0)

#: Upper bound on ``delta``. The seed used delta = 1e8, so every run "converged" after one step.
#: A tolerance above an eighth of the channel range says "stop before you started", so it is refused.
MAX_DELTA = 32.0

DEFAULT_K = 16
DEFAULT_DELTA = 1.0
DEFAULT_MAX_ITER = 30
INIT_METHODS = ("kmeans++", "random")


class ParamError(ValueError):
    """A parameter is out of range; the message names it."""


@dataclass(frozen=True)
class Params:
    k: int = DEFAULT_K
    init: str = "kmeans++"  # "kmeans++", "random", or the path of a clusters file (seed format)
    seed: int = 0
    max_iter: int = DEFAULT_MAX_ITER
    delta: float = DEFAULT_DELTA

    def to_json(self) -> dict:
        return asdict(self)


def integer(name: str, value, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, str, float)):
        raise ParamError(f"{name} must be an integer, got {value!r}")
    try:
        as_float = float(value)
    except ValueError:
        raise ParamError(f"{name} must be an integer, got {value!r}") from None
    if not math.isfinite(as_float) or as_float != int(as_float):
        raise ParamError(f"{name} must be an integer, got {value!r}")
    number = int(as_float)
    if number < minimum or (maximum is not None and number > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ParamError(f"{name} must be {bound}, got {number}")
    return number


def validate(k=DEFAULT_K, init="kmeans++", seed=0, max_iter=DEFAULT_MAX_ITER, delta=DEFAULT_DELTA) -> Params:
    """Check every run parameter and return them as a :class:`Params`.

    - ``k``: integer >= 1 (an image with fewer distinct colours than ``k`` is clustered with as many
      clusters as it has colours; see README).
    - ``max_iter``: integer between 1 and 1000.
    - ``delta``: a centroid shift in colour units, 0 <= delta <= 32; 0 means "until no centroid moves".
    - ``seed``: integer >= 0.
    - ``init``: "kmeans++", "random", or the path of an existing clusters file.
    """
    k = integer("k", k, 1, 65536)
    max_iter = integer("max_iter", max_iter, 1, 1000)
    seed = integer("seed", seed, 0, 2**32 - 1)
    try:
        delta = float(delta)
    except (TypeError, ValueError):
        raise ParamError(f"delta must be a number, got {delta!r}") from None
    if not math.isfinite(delta) or delta < 0 or delta > MAX_DELTA:
        raise ParamError(
            f"delta must be between 0 and {MAX_DELTA:g} colour units (largest centroid shift allowed "
            f"at convergence), got {delta!r}: a larger tolerance would stop before clustering"
        )
    if not isinstance(init, str) or not init or (init not in INIT_METHODS and not os.path.isfile(init)):
        raise ParamError(f"init must be 'kmeans++', 'random' or an existing clusters file, got {init!r}")
    return Params(k=k, init=init, seed=seed, max_iter=max_iter, delta=delta)
