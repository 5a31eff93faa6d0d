"""Durable state: the LMDB store (`store`), its single-writer guard and format marker
(`store_guard`), page trimming of large maps (`page_trim`) and large received payloads
kept aside (`payloads`).

Imports the vocabulary and the runtime's data formats (checkpoints, journal entries).
"""
