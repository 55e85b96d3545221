"""Clustering: routes between nodes, gossip membership, interest propagation.

protocol.py    sans-IO route frames (INFO, CONNECT, RS+/RS-, RMSG/HMSG, PING/PONG, -ERR)
runs.py        runs of identical frames by strided slices (shared with the client parser)
membership.py  pure gossip view: members, state, forget timeout, duplicate-route rule
route.py       one route connection (trio): outbound buffer, writer, pinger
manager.py     listener, dialing with backoff, handshake, gossip, interest sync

This package imports only the standard library, trio and msgspec; the broker adapts
itself in broker/cluster_glue.py.
"""
