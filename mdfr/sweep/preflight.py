"""Checks on a multi-node Ray cluster before a sweep writes anything: shared paths, tracking.

Trials run on whichever node has room and read and write their paths there: Tune storage
(checkpoints, the pretraining cache), the prepared dataset, a given CMI checkpoint. On more
than one node each such path must be the same directory everywhere, and MLflow must be a
server that every node can reach. :func:`check_cluster` verifies both on the live cluster
and raises a :class:`~mdfr.errors.UsageError` (exit 2) naming the path and the nodes.

Why a live probe and not a rule on the path: "a local path on a multi-node cluster" cannot be
told apart from a shared one by its name. ``/mnt/mdfr`` may be a local disk, and
``results/ray`` is shared by every node of a single-machine cluster (``cluster/local.sh``)
or by nodes that all mount the same NFS home. So the driver writes a probe file with a
random token into each directory and a zero-CPU task pinned to every alive node reads it
back. Nodes that join later (an autoscaler adding GPU workers) are not checked.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdfr.errors import MdfrError, UsageError

PROBE_TIMEOUT_S = 60.0
PROBE_PREFIX = ".mdfr-probe-"
SHARED_FS = (
    "use a directory on a filesystem that all nodes mount at the same path "
    "(NFS, EFS, Lustre; see cluster/README.md)"
)


@dataclass(frozen=True)
class SharedPath:
    """A path every node must see as the driver does.

    Attributes:
        what: how the user set it, in messages (``storage``, ``prepare.out``, ``data.dataset``).
        path: the path as messages name it; a directory is created if need be and probed
            by writing a file into it.
        use: what trials do with it (``read and write``, ``read``).
        example: how to point it at a shared filesystem (``--storage /mnt/mdfr/ray``).
        file: instead of a probe, an existing file that stands for ``path`` (a dataset's
            ``manifest.json``), compared by content when small, else by size.
    """

    what: str
    path: Path
    use: str
    example: str
    file: Path | None = None


def alive_nodes() -> list[dict[str, Any]]:
    """The cluster's alive nodes as ``ray.nodes()`` reports them."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def check_cluster(
    shared: list[SharedPath], tracking_uri: str, *, timeout_s: float = PROBE_TIMEOUT_S
) -> int:
    """On more than one alive node: a tracking server, and every ``shared`` path seen by all.

    Call it with Ray connected and before the sweep writes anything: it creates the
    directories in ``shared`` (trials would anyway) and removes its probe files.

    Args:
        shared: the paths trials use, most important first (the first failure is named
            first).
        tracking_uri: the resolved MLflow tracking URI.
        timeout_s: how long a node has to answer.

    Returns:
        The number of alive nodes.

    Raises:
        UsageError: a local tracking store on several nodes, or a path some node cannot see.
        MdfrError: a node that does not answer within ``timeout_s``, or a directory that
            cannot be created.
    """
    import ray

    nodes = alive_nodes()
    if len(nodes) <= 1:
        return len(nodes)
    address = ray.get_runtime_context().gcs_address
    if tracking_uri.startswith(("sqlite:", "file:")):
        raise UsageError(
            f"tracking_uri {tracking_uri} is a file on the driver's machine, but the Ray "
            f"cluster at {address} has {len(nodes)} nodes and trials log to MLflow from each "
            "of them (and SQLite on a network filesystem loses writes): run a tracking "
            "server (`mlflow server`, see cluster/README.md) and pass "
            "--tracking-uri http://HOST:5000"
        )
    with _probes(shared) as expected:
        seen = _read_on_every_node(nodes, expected, address, timeout_s)
    failures = []
    for i, item in enumerate(shared):
        blind = [(n, seen[n["NodeID"]][i]) for n in nodes if seen[n["NodeID"]][i]]
        if blind:
            failures.append((item, blind))
    if failures:
        (item, blind), rest = failures[0], failures[1:]
        also = "".join(
            f"; the same holds for {o.what} {o.path} ({len(b)} of {len(nodes)} nodes cannot "
            f"see it; e.g. {o.example})"
            for o, b in rest
        )
        raise UsageError(_not_shared(item, blind, len(nodes), address) + also)
    return len(nodes)


# --------------------------------------------------------------------------- internals


Check = tuple[str, str, str]  # (file, "content" | "size" | "sha256", expected value)


@contextlib.contextmanager
def _probes(shared: list[SharedPath]) -> Iterator[list[Check]]:
    """One check per shared path: a fresh probe file in a directory, or an existing file."""
    checks: list[Check] = []
    written: list[Path] = []
    try:
        for item in shared:
            if item.file is not None:
                checks.append(_file_check(item.file))
                continue
            try:
                item.path.mkdir(parents=True, exist_ok=True)
                token = secrets.token_hex(16)
                probe = item.path / f"{PROBE_PREFIX}{token}"
                probe.write_text(token)
            except OSError as e:
                raise MdfrError(f"{item.what} {item.path}: cannot write there ({e})") from None
            written.append(probe)
            checks.append((str(probe), "content", token))
        yield checks
    finally:
        for probe in written:
            with contextlib.suppress(OSError):
                probe.unlink()


def _file_check(path: Path) -> Check:
    # A dataset manifest is small and names the dataset's content; a checkpoint may be
    # large, and its size is enough to tell a copy from a different file.
    size = path.stat().st_size
    if size <= 1 << 20:
        return (str(path), "sha256", hashlib.sha256(path.read_bytes()).hexdigest())
    return (str(path), "size", str(size))


def look(checks: list[Check]) -> list[str]:
    """On a node: for each check, "" when the file is there as expected, else what is wrong.

    Runs as a Ray task; stdlib only, so it needs nothing from the node but Python.
    """
    out = []
    for path, kind, want in checks:
        try:
            p = Path(path)
            if kind == "content":
                got = p.read_text()
            elif kind == "sha256":
                got = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                got = str(p.stat().st_size)
        except FileNotFoundError:
            out.append("not there")
            continue
        except OSError as e:
            out.append(f"unreadable: {e.strerror or e}")
            continue
        out.append("" if got == want else "a different file")
    return out


def _read_on_every_node(
    nodes: list[dict[str, Any]], checks: list[Check], address: str, timeout_s: float
) -> dict[str, list[str]]:
    """Run :func:`look` on every node (one pinned zero-CPU task each): node id -> results."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    # num_cpus=0: a node whose CPUs are all busy with trials, or a head that offers none,
    # still answers. max_retries=0: a node that dies meanwhile is reported, not waited for.
    task = ray.remote(num_cpus=0, max_retries=0)(look)
    refs = {
        task.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False),
            name="mdfr-preflight",
        ).remote(checks): n
        for n in nodes
    }
    ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=timeout_s)
    for ref in pending:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=True)
    if pending:
        silent = [refs[r] for r in pending]
        raise MdfrError(
            f"{len(silent)} of {len(nodes)} nodes of the Ray cluster at {address} did not "
            f"answer the shared-storage check within {timeout_s:.0f} s ({_names(silent)}); "
            "check that they are healthy (`ray status`) and retry"
        )
    out: dict[str, list[str]] = {}
    for ref in ready:
        node = refs[ref]
        try:
            out[node["NodeID"]] = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - a node lost meanwhile, a worker that crashed
            raise MdfrError(
                f"the shared-storage check failed on node {_name(node)} of the Ray cluster "
                f"at {address}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            ) from None
    return out


def _not_shared(
    item: SharedPath, blind: list[tuple[dict[str, Any], str]], total: int, address: str
) -> str:
    # "not there" is the usual case (a node-local disk); other reasons (permissions on an
    # NFS export, a different file at that path) are worth showing.
    who = _names([n for n, _ in blind], [r if r != "not there" else "" for _, r in blind])
    return (
        f"{item.what} {item.path} is not shared by every node of the Ray cluster at {address}: "
        f"{len(blind)} of {total} nodes cannot see it ({who}). Trials run on every "
        f"node and {item.use} there; {SHARED_FS}, e.g. {item.example}"
    )


def _name(node: dict[str, Any]) -> str:
    return f"node {node['NodeID'][:8]} ({node.get('NodeManagerAddress', '?')})"


def _names(nodes: list[dict[str, Any]], reasons: list[str] | None = None, limit: int = 3) -> str:
    reasons = reasons or [""] * len(nodes)
    names = ", ".join(
        _name(n) + (f": {why}" if why else "")
        for n, why in zip(nodes[:limit], reasons, strict=False)
    )
    return names + (f" and {len(nodes) - limit} more" if len(nodes) > limit else "")
