"""One way to look inside a model while its real forward runs: route the encoder's calls through wrappers.

The audit's probes (the queries each pass reads with, gradients into the pixels) and the profiler (time per
part) both watch ``encoder.encode`` / ``encoder.attend`` during ``FoveatedVLM.forward`` itself, never a copy
of it. ``wrap_encoder`` swaps the bound methods for the duration of a ``with`` block and puts back exactly
what was there, so wrappers nest.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

WRAPPABLE = ("encode", "attend")   # the encoder contract's two calls
_ABSENT = object()


@contextlib.contextmanager
def wrap_encoder(encoder: Any, **wrappers: Callable[..., Any]) -> Iterator[None]:
    """Inside the block, ``encoder.encode(...)`` calls ``wrappers["encode"](original, ...)`` (and likewise for
    ``attend``): a wrapper sees the arguments, calls ``original`` itself and may change what it returns."""
    unknown = sorted(set(wrappers) - set(WRAPPABLE))
    if unknown:
        raise ValueError(f"wrap_encoder can wrap {', '.join(WRAPPABLE)}, not {', '.join(unknown)}")
    saved = {name: vars(encoder).get(name, _ABSENT) for name in wrappers}   # an instance attribute from an outer wrap
    for name, wrapper in wrappers.items():
        setattr(encoder, name, functools.partial(wrapper, getattr(encoder, name)))
    try:
        yield
    finally:
        for name, previous in saved.items():
            if previous is _ABSENT:
                delattr(encoder, name)        # the class's method shows through again
            else:
                setattr(encoder, name, previous)
