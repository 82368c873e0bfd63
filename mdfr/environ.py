"""Environment variables set for the length of a block, then put back as they were.

Ray, Tune and MLflow read several settings only from ``os.environ``; mdfr sets them around the
code that needs them so that nothing else in the process (a bare Tuner after a sweep, the
sweep's own MLflow calls after a quick probe) runs with them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator


@contextlib.contextmanager
def scoped_env(values: dict[str, str], *, user_wins: bool = False) -> Iterator[None]:
    """``values`` in ``os.environ`` while the block runs; afterwards each key is as before.

    Args:
        values: the variables to set.
        user_wins: a key already set keeps its value (mdfr's value is only a default).
    """
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if not (user_wins and k in os.environ)})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
