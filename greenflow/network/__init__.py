"""Nodes talking to each other: the TCP transport (authenticated, encrypted links), the
network map, a node directory's configuration (`node_config`) and bootstrapping a
network of node directories.

Imports the node and everything below it; never the RPC or CLI.
"""
