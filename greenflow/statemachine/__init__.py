"""The node's state machine: events in, pure `transitions` deciding actions, the
`executor` carrying them out, and the `scheduler` that runs rounds, routes frames,
keeps the hospital and commits each round to storage. `limits` bounds what one peer
may make the node hold.

Imports the vocabulary, flows, runtime and storage; never the node, network or RPC.
"""
