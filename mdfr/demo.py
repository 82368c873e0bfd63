"""``make demo``: the main job end to end on the embedded default.

Synthetic camera dataset -> small learned codec (trained once, cached) -> prepared patch
dataset -> ``sweeps/demo.yaml`` (Table II at CPU scale) on a local Ray instance with MLflow in
``results/mlflow.db`` -> report under ``results/demo/``. Each step is cached, so a second run
only repeats what changed.
"""

from __future__ import annotations

import sys


def main() -> int:
    # Until the pipeline pieces land, say so instead of pretending.
    print("mdfr demo: the end-to-end pipeline is not built yet; nothing was run.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
