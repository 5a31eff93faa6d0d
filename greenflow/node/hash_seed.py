"""One string-hashing seed per party, for its node processes.

Python hashes strings (and bytes, and what holds them) with a seed each process draws at
start, so a set of strings iterates in another order in every process. A flow replayed
after its node restarted would then take the items of such a set in another order than
its first run did, send them in that order, and be parked as diverged. A node process
therefore runs with a seed of its own party's: derived from the party's identity key,
so it is the same at every start (and on every worker of a clustered party, which share
the key) and nobody without the key can work it out (a guessable seed would let a peer
send keys that all collide). The process sets it by starting itself again at once
(``os.execve``, the same process id) with ``PYTHONHASHSEED`` set, before it has done
anything else. ``GREENFLOW_HASH_SEED=off`` keeps the process's own random seed.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from typing import Optional

from greenflow.node.identity import key_path

log = logging.getLogger("greenflow.node")

#: Set to "off" to keep the random seed Python draws (set iteration then differs
#: between the runs of a node process, as it does in any Python program).
SWITCH = "GREENFLOW_HASH_SEED"


def party_seed(base_dir: str) -> Optional[int]:
    """The seed of the party whose node directory is ``base_dir``; None when its key
    cannot be read (the start itself then says why)."""
    try:
        with open(key_path(base_dir), "rb") as fh:
            key = fh.read(4096)
    except OSError:
        return None
    if not key:
        return None
    return int.from_bytes(hashlib.sha256(b"greenflow hash seed\0" + key).digest()[:4], "big")


def run_with_party_seed(base_dir: str) -> None:
    """Start this process again with its party's seed unless it runs with it already
    (or the platform cannot, or ``GREENFLOW_HASH_SEED=off``). Call it first thing in a
    node process's entry point: what ran before is run again."""
    if os.name != "posix" or os.environ.get(SWITCH, "").lower() == "off":
        return
    seed = party_seed(base_dir)
    if seed is None or os.environ.get("PYTHONHASHSEED") == str(seed):
        return
    argv = list(getattr(sys, "orig_argv", None) or [])
    if not argv or not sys.executable:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, dict(os.environ, PYTHONHASHSEED=str(seed)))
