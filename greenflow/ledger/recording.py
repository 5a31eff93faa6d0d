"""`StatesToRecord`: what a node takes into its vault from a transaction it receives.

A participant records the states it is a participant of. An observer (a regulator, an
auditor, a node that watches a deal it is no party to) receives the same transaction
through `FinalityFlow`'s ``observers`` and chooses, on its own side, how much of it to
hold: its vault must never depend on what the sender claims the observer wants.
"""
from __future__ import annotations

import enum

__all__ = ["StatesToRecord"]


class StatesToRecord(enum.Enum):
    """Corda's ``StatesToRecord``."""

    #: Keep the transaction (as history: it can be served and resolved against) but take
    #: none of its states into the vault.
    NONE = "none"
    #: Take only the output states this node is a participant of (the default).
    ONLY_RELEVANT = "only_relevant"
    #: Take every output state, whoever its participants are: what an observer uses to
    #: query and track states it is not a party to.
    ALL_VISIBLE = "all_visible"
