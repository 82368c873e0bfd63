"""Every use of Ray's private modules, in one file, for what Ray has no public API for.

Everything else in mdfr uses Ray through its public API (``ray.init``, ``ray.remote``,
``ray.tune``). The public way to set the two settings below is an environment variable that
Ray reads once, when it is imported; these functions cover the case where Ray was imported
before (tests, notebooks, ``ray start`` itself). ``tests/test_private_apis.py`` imports every
name listed in :data:`PRIVATE_NAMES` and fails loudly, naming it, when a Ray upgrade moves one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

# ray.init's underscore keyword for the address a locally started node advertises and binds:
# 127.0.0.1, so a sweep on a laptop opens nothing to the network.
LOCAL_INIT_KWARGS: dict[str, Any] = {"_node_ip_address": "127.0.0.1"}

# (module, attribute) of every private Ray name used below.
PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("ray._private.ray_constants", "ENABLE_RAY_CLUSTER"),
    (
        "ray._private.authentication.authentication_token_setup",
        "maybe_enable_token_auth_if_token_available",
    ),
    ("ray._private.services", "resolve_ip_for_localhost"),
    ("ray._private.services", "get_localhost_ip"),
    ("ray._private.services", "is_localhost"),
)


def _private(module: str, name: str) -> Any:
    return getattr(importlib.import_module(module), name)


def set_cluster_mode(enabled: bool) -> None:
    """Ray's multi-node mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``) in an imported Ray.

    Off, Ray keeps ``--node-ip-address 127.0.0.1`` as given instead of swapping in the host's
    routable address (single-node mode); Ray reads the variable into this constant at import.
    """
    constants = importlib.import_module("ray._private.ray_constants")
    constants.ENABLE_RAY_CLUSTER = enabled


def enable_token_auth_if_token_available() -> None:
    """Send the local auth token (``~/.ray/auth_token``) from an imported Ray.

    Ray reads ``RAY_AUTH_MODE`` at import; this is Ray's own helper that also refreshes its
    cached config, as ``ray start`` does.
    """
    fn: Callable[..., None] = _private(*PRIVATE_NAMES[1])
    fn(warn_if_disabled=False)


def keep_loopback_addresses() -> None:
    """In this process, let ``ray start`` keep loopback hosts as given and join a head.

    Ray swaps ``--node-ip-address 127.0.0.1`` and an ``--address 127.0.0.1:PORT`` for this
    machine's routable address; with addresses no longer swapped, multi-node mode stays on
    loopback (``cluster/ray_loopback.py``).
    """
    services = importlib.import_module("ray._private.services")
    resolve = services.resolve_ip_for_localhost

    def keep_loopback(host: str) -> str:
        return services.get_localhost_ip() if services.is_localhost(host) else resolve(host)

    services.resolve_ip_for_localhost = keep_loopback
    set_cluster_mode(True)
