"""Flows spread over a fixed number of virtual partitions: the unit a clustered node's
workers own (one lease each) and the key the PostgreSQL store files each flow's rows
under. Pure Python, so routing code can place a flow without a database driver.

The hash is CRC-32 of the flow id's UTF-8 bytes: stable across processes, machines and
Python versions (unlike ``hash()``), and cheap on every commit.
"""
from __future__ import annotations

import zlib

#: Partitions of a store. Fixed: changing it moves every flow to another partition.
PARTITIONS = 256


def partition_of(fid: str) -> int:
    """The partition the flow ``fid`` belongs to (0 <= p < `PARTITIONS`)."""
    return zlib.crc32(fid.encode()) % PARTITIONS


def initiator_flow_id(sid: str) -> str:
    """The flow that opened session ``sid`` (a session id is ``<flow id>.<counter>``)."""
    return sid.rpartition(".")[0] or sid


def session_partition(sid: str) -> int:
    """The partition of the initiating flow of ``sid``."""
    return partition_of(initiator_flow_id(sid))
