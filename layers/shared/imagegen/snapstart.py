"""SnapStart runtime hooks: what restored execution environments must not share.

With SnapStart (template parameter ``EnableSnapStart``) Lambda runs the init code once, when it publishes a
version, snapshots the memory, and resumes every new execution environment from a copy of that snapshot.
Whatever init left in memory is then the same in all of them:

- the ``random`` module's state (seeded once, at import) and the ``random.Random`` the Flux client draws its
  backoff jitter from: restored environments would draw the same jitter and retry in lockstep;
- the clients ``imagegen.wiring`` builds once per container: boto3 clients holding the credentials resolved
  before the snapshot, ``requests`` sessions whose pooled sockets belong to the snapshotted environment, the
  subscription key and the webhook signing key cached with their age;
- the values Powertools' parameter providers cache.

``after_restore`` reseeds ``random`` and drops those caches; the next call builds them afresh. ``secrets``,
``uuid.uuid4`` and ``random.SystemRandom`` read ``os.urandom`` on every call, so image and job ids, generation
seeds and nothing else need it.

The hook is registered with ``snapshot_restore_py``, which the Python managed runtimes ship (it is not a layer
dependency), and only when Lambda initialises for a snapshot (``AWS_LAMBDA_INITIALIZATION_TYPE=snap-start``):
without SnapStart, importing this module costs nothing and imports nothing more.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Mapping

SNAP_START = "snap-start"


def after_restore() -> None:
    """Give this restored environment its own randomness, credentials, connections and cached secrets."""
    random.seed()  # from os.urandom: the snapshot's state is every restored environment's state
    wiring = sys.modules.get("imagegen.wiring")
    if wiring is not None:  # nothing was built if wiring was never imported
        for value in vars(wiring).values():
            cache_clear = getattr(value, "cache_clear", None)
            if callable(cache_clear):  # every @lru_cache of the module: services, clients, sessions, key providers
                cache_clear()
    parameters = sys.modules.get("aws_lambda_powertools.utilities.parameters")
    if parameters is not None:
        parameters.clear_caches()
    boto3 = sys.modules.get("boto3")
    if boto3 is not None:  # the default session's credential resolver would hand out the snapshot's credentials
        boto3.DEFAULT_SESSION = None  # type: ignore[attr-defined]


def register_hooks(environ: Mapping[str, str] | None = None) -> bool:
    """Register ``after_restore`` when this init is a SnapStart snapshot's; True when it did."""
    if (os.environ if environ is None else environ).get("AWS_LAMBDA_INITIALIZATION_TYPE") != SNAP_START:
        return False
    from snapshot_restore_py import register_after_restore  # type: ignore[import-not-found]  # the runtime's

    register_after_restore(after_restore)
    return True
