"""The platform the kernels are built for: the default backend's, or the one `target_platform` names for a block of
code (to lower a step for TPUs from a CPU host, e.g. ahead of time or to check that it lowers)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping

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
