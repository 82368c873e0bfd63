"""Connecting to Ray: an existing cluster (``--address``/``RAY_ADDRESS``) or a local instance
on loopback. The sweep driver and the sweep benchmark reach Ray only through here.

Ray reads two settings from the environment when it is imported: single-node mode (keeps
``127.0.0.1`` as a node's address) and ``RAY_AUTH_MODE`` (send the auth token). mdfr imports
Ray only after setting them, so the public route works; where Ray was imported earlier (tests,
notebooks), :mod:`mdfr.sweep.ray_private` applies them to the imported Ray.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from mdfr.errors import MdfrError
from mdfr.sweep import ray_private


def use_loopback() -> None:
    """Make this process, and the Ray services it starts, use and bind 127.0.0.1 only.

    Ray replaces ``--node-ip-address 127.0.0.1`` with the host's routable address unless it
    runs in single-node mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), which Ray reads once,
    at import.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    if "ray" in sys.modules:
        ray_private.set_cluster_mode(False)


def use_token_auth() -> None:
    """Send the local Ray auth token (``~/.ray/auth_token``) when connecting to a cluster.

    Ray 2.60 clusters require a token, but a client only sends one when ``RAY_AUTH_MODE`` is
    ``token``, which Ray reads at import (jobs submitted to the cluster inherit it). An explicit
    ``RAY_AUTH_MODE`` from the user always wins.
    """
    if os.environ.get("RAY_AUTH_MODE"):
        return
    if "ray" in sys.modules:
        ray_private.enable_token_auth_if_token_available()
    elif (Path.home() / ".ray" / "auth_token").is_file():
        os.environ["RAY_AUTH_MODE"] = "token"


def is_local(address: str | None) -> bool:
    """Whether a sweep with this ``--address`` starts its own Ray instance."""
    return not (address or os.environ.get("RAY_ADDRESS"))


@contextlib.contextmanager
def ray_session(
    address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> Iterator[None]:
    """Connect to ``address`` (or ``RAY_ADDRESS``), else start Ray locally on loopback.

    ``num_cpus`` and ``num_gpus`` are the resources a locally started instance declares
    (default: what Ray detects). Declared GPUs need not exist: Ray schedules logical GPUs and
    sets each trial's ``CUDA_VISIBLE_DEVICES`` all the same, which is how a GPU machine is
    simulated without CUDA (``mdfr bench scale``, the fractional-packing test).

    A session that was already initialised (tests, notebooks) is used and left running.
    """
    target = address or os.environ.get("RAY_ADDRESS")
    host = (target or "").removeprefix("ray://").rsplit(":", 1)[0]
    if not _ray_initialized():
        if not target or host in ("127.0.0.1", "localhost"):
            use_loopback()  # a local instance, or a one-node cluster on this machine's loopback
        if target:
            use_token_auth()
    # Lazy: Ray is imported only once the settings above are in the environment.
    import ray

    if ray.is_initialized():
        yield
        return
    # uv's runtime-env hook would re-create environments for workers; we ship the venv.
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    common = {"logging_level": logging.WARNING, "log_to_driver": True}
    try:
        if target:
            ray.init(address=address, **common)
        else:
            ray.init(
                address="local",
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                include_dashboard=False,
                **ray_private.LOCAL_INIT_KWARGS,
                **common,
            )
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise MdfrError(f"cannot start or reach Ray (address {address or 'local'}): {e}") from None
    try:
        yield
    finally:
        ray.shutdown()


def _ray_initialized() -> bool:
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()
