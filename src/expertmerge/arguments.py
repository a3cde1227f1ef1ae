"""The CLI's argument types: each turns one command-line word into a value or refuses it with one line saying
what is allowed (argparse prefixes the flag: "argument --rtol: must be a number in [1e-10, 1], got 1e-300").

Every number has a finite, meaningful range (expertmerge.limits); NaN and +-inf are never in one.
"""
from __future__ import annotations

import argparse
import json
import math

from . import limits


def bounded_float(low: float, high: float, *, low_open: bool = False, high_open: bool = False):
    """A type for a finite number in [low, high]; `low_open`/`high_open` leave out that end."""
    interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def number(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text!r}") from None
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        if not (math.isfinite(value) and above and below):
            raise argparse.ArgumentTypeError(f"must be a number in {interval}, got {text}")
        return value

    return number


def bounded_int(low: int, high: int):
    """A type for an integer in [low, high]."""
    lowest = {0: "an integer >= 0", 1: "a positive integer"}.get(low, f"an integer >= {low}")

    def integer(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {lowest} and <= {high}, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {lowest} and <= {high}, got {text}")
        return value

    return integer


def in_range(bounds: tuple[float, float]):
    """A type for a number within one of limits' ranges (both ends included)."""
    return bounded_float(*bounds)


fraction = bounded_float(0.0, 1.0, low_open=True, high_open=True)  # a data split's share
unit = bounded_float(0.0, 1.0)                                      # a switch level eta
decay = bounded_float(0.0, 1.0, high_open=True)                     # EMA decay
seed = bounded_int(0, limits.MAX_SEED)
threads = bounded_int(1, limits.MAX_THREADS)
batch = bounded_int(1, limits.MAX_BATCH)
steps = bounded_int(1, limits.MAX_STEPS)
shards = bounded_int(1, limits.MAX_SHARDS)
shard = bounded_int(0, limits.MAX_SHARDS - 1)
images = bounded_int(1, limits.MAX_SAMPLES)


def seed_range(text: str) -> range:
    """'start:stop' -> range(start, stop), at most MAX_SAMPLES seeds."""
    try:
        start, stop = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"seeds must look like START:STOP, got {text!r}") from None
    if not 0 <= start < stop <= limits.MAX_SEED + 1:
        raise argparse.ArgumentTypeError(f"seeds START:STOP need 0 <= START < STOP <= {limits.MAX_SEED + 1}, got {text!r}")
    if stop - start > limits.MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"seeds START:STOP may span at most {limits.MAX_SAMPLES} seeds, got {text!r}")
    return range(start, stop)


def key_value(text: str) -> tuple[str, str]:
    """'key=value' -> (key, value)."""
    key, sep, value = text.partition("=")
    if not (sep and key and value):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def budget_pair(text: str) -> tuple[str, float]:
    """'DATASET=DELTA' with DELTA a number in limits.FID_BUDGET -> (dataset, delta)."""
    key, value = key_value(text)
    try:
        return key, in_range(limits.FID_BUDGET)(value)
    except argparse.ArgumentTypeError as error:
        raise argparse.ArgumentTypeError(f"DELTA of {key} {error}") from None


def _no_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def json_object(text: str) -> dict:
    """A JSON object; NaN and Infinity (which Python's json would take) are refused."""
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except ValueError as error:  # JSONDecodeError is one
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value
