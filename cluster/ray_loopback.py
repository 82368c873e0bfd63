"""``ray start`` that keeps a node on loopback: ``python cluster/ray_loopback.py start ...``.

Ray swaps ``--node-ip-address 127.0.0.1`` and an ``--address 127.0.0.1:PORT`` for this
machine's routable address, and a node whose address is not 127.0.0.1 binds its GCS, raylet,
object manager, agents and workers on every interface. Ray keeps loopback only in its
single-node mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, the variable the sweep driver's
``use_loopback()`` sets), which also makes ``ray start --address`` refuse to join a head.

So this shim, used by ``cluster/local.sh`` for every node:

- sets the variable in the environment, which the node's own processes (raylet, agents,
  workers, drivers of jobs submitted to it) inherit: they resolve loopback to loopback;
- in this process only, keeps loopback hosts as given and lifts the refusal to join, then
  hands over to Ray's own CLI.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    """Run Ray's CLI (``ray start ...``) with loopback addresses kept as loopback."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # before Ray is imported: children
    # Ray's private services API, isolated (and checked on every upgrade) in mdfr.
    from ray.scripts.scripts import main as ray_main

    from mdfr.sweep.ray_private import keep_loopback_addresses

    # Multi-node is what we want; with addresses no longer swapped, it stays on loopback.
    keep_loopback_addresses()
    sys.argv[0] = "ray"
    ray_main()


if __name__ == "__main__":
    main()
