"""The root of pyswarm's errors.

Every package draws its own tree under :class:`PyswarmError`; the CLI prints
any ``PyswarmError`` as one line and exits non-zero, never with a traceback::

    PyswarmError
    ├── UsageError            bad input from the user (arguments, files)
    │   └── compose.ComposeError      names file, line and key
    ├── ClusterError          the cluster refused or cannot do it
    │   ├── NotInSwarmError / NotManagerError / AlreadyInSwarmError
    │   ├── NoQuorumError
│   │   └── ElectionError     leader election in progress, retry
│   │       └── UncertainWriteError  the leader changed mid-write: check first
    │   └── NotFoundError
    ├── ConnectionError_      could not reach a manager or node
    ├── manager errors (manager/__init__.py)
    └── worker.RuntimeError_  the container runtime failed
"""

from __future__ import annotations


class PyswarmError(Exception):
    """Anything pyswarm reports to a person."""

    exit_code: int = 1
    """The CLI's exit status for this error (a bad stack file: 2, as Docker)."""


class UsageError(PyswarmError):
    pass


class ClusterError(PyswarmError):
    pass


class NotInSwarmError(ClusterError):
    pass


class NotManagerError(ClusterError):
    pass


class AlreadyInSwarmError(ClusterError):
    pass


class NoQuorumError(ClusterError):
    pass


class ElectionError(NoQuorumError):
    """A write refused while the managers elect a leader (a majority is
    reachable): safe writes are retried by the CLI for a few seconds."""


class UncertainWriteError(ElectionError):
    """The leader changed after the write entered its log and before it
    committed: the next leader may still apply it (Raft keeps an entry a
    majority holds). Saying "refused, retry" here made a person create the
    same thing twice; the CLI repeats only the writes it may repeat anyway."""


class NotFoundError(ClusterError):
    pass


class ConnectionError_(PyswarmError):
    pass
