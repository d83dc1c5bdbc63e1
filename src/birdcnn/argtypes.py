"""argparse types for numbers with a range: an impossible value (a negative learning rate, zero
epochs) is refused while the arguments are parsed, naming the option, before anything runs."""
from __future__ import annotations

import argparse
import math
from typing import Callable


def _bound(v: float) -> str:
    """A bound as people write it: whole numbers in full (4294967295, not 4.29497e+09)."""
    return str(v) if isinstance(v, int) else f"{v:g}"


def ranged(kind: type[int] | type[float], low: float | None = None, high: float | None = None, *,
           above: bool = False, below: bool = False, wanted: str | None = None) -> Callable[[str], int | float]:
    """An argparse `type`: a finite `kind` from `low` to `high` (None: no bound); with `above`
    (`below`) the bound itself is refused too: ranged(float, 0, above=True) is "above 0".
    `wanted` words the range in the error instead ("must be WANTED, not ...")."""
    word = "a whole number" if kind is int else "a number"
    if wanted is None and low is not None and high is not None:  # an interval: [0, 1) holds 0 but not 1
        wanted = f"{word} in {'(' if above else '['}{_bound(low)}, {_bound(high)}{')' if below else ']'}"
    elif wanted is None and low is not None:
        wanted = f"{word} above {_bound(low)}" if above else f"{word} {_bound(low)} or more"
    elif wanted is None:
        wanted = (word if high is None else f"{word} below {_bound(high)}" if below
                  else f"{word} at most {_bound(high)}")

    def parse(text: str) -> int | float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {wanted}, not {text!r}") from None
        if (not math.isfinite(v) or (low is not None and (v <= low if above else v < low))
                or (high is not None and (v >= high if below else v > high))):
            raise argparse.ArgumentTypeError(f"must be {wanted}, not {text}")
        return v

    parse.__name__ = wanted  # what argparse would show for an error it words itself
    return parse


positive_int = ranged(int, 0, above=True)
positive_float = ranged(float, 0, above=True)
non_negative_int = ranged(int, 0)
non_negative_float = ranged(float, 0)

# A random seed: what torch, numpy and every generator the commands seed accept alike.
SEED_MAX = 2**32 - 1
seed_int = ranged(int, 0, SEED_MAX, wanted=f"an integer from 0 to 2**32-1 ({SEED_MAX})")
