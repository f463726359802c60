"""The platform the kernels are built for: the default backend's, or the one `target_platform` names for a block of
code (to lower a step for TPUs from a CPU host, e.g. ahead of time or to check that it lowers)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax

_TARGET = threading.local()


@contextlib.contextmanager
def target_platform(platform: str) -> Iterator[None]:
    """Within the block, "auto" implementations resolve for `platform` ("cpu", "gpu" or "tpu") and the platform's
    kernels are accepted whatever JAX runs on. Lower with `lowering_platforms=(platform,)` to match."""
    previous = getattr(_TARGET, "platform", None)
    _TARGET.platform = platform
    try:
        yield
    finally:
        _TARGET.platform = previous


def current_platform() -> str:
    """The platform `target_platform` set, else JAX's default backend."""
    return getattr(_TARGET, "platform", None) or jax.default_backend()


def impl_problem(impl: str, platforms: Mapping[str, str | None]) -> str | None:
    """Why an op's `impl` cannot run here, or None where it can: `platforms` maps each of the op's impl names to the
    platform it needs (None: any); "auto" always runs."""
    if impl == "auto":
        return None
    if impl not in platforms:
        return f"unknown impl {impl!r}; expected one of {['auto', *platforms]}"
    platform = platforms[impl]
    if platform is not None and current_platform() != platform:
        return f"impl={impl!r} needs a {platform.upper()} but JAX runs on {current_platform()}; use impl='auto'"
    return None


@dataclasses.dataclass(frozen=True)
class Backend:
    """One implementation of an op, an entry of the op's BACKENDS table: ``run``, called with the arguments the op's
    entry point checked; the platform it needs (None: any); ``supports``, called with a description of the call
    (each op says which), whether the implementation takes it."""

    run: Callable[..., Any]
    platform: str | None = None
    supports: Callable[..., bool] = lambda *call: True


def resolve(backends: Mapping[str, Backend], impl: str, portable: str, *call: Any) -> str:
    """The backend that runs `impl` for `call` (what the backends' ``supports`` take): "auto" is the first backend of
    the current platform, else `portable`; a backend that does not support the call gives way to `portable`."""
    if impl == "auto":
        impl = next((name for name, b in backends.items() if b.platform == current_platform()), portable)
    return impl if backends[impl].supports(*call) else portable
