"""A clustered node: many worker processes of one party sharing one PostgreSQL database.

Flows are spread over fixed virtual partitions by a hash of their id; each partition is
leased to one worker at a time (`leases`), and every commit is fenced by the lease's
epoch. See docs/cluster.md for the design. Needs ``pip install '.[cluster]' in greenflow's checkout``
(psycopg and an embedded PostgreSQL server).
"""
