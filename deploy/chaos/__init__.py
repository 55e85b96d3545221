"""nats-chaos: a Jepsen-style check that a NATS cluster loses nothing it acknowledged.

Modules: cli (the `nats-chaos` command), cluster (local processes / compose / URLs),
nemesis (the seeded fault schedule), workload (queue and KV clients that record a
history), checker (counts anomalies in a history), report (table, JSON, timeline),
lazyfs (FUSE filesystem that drops unsynced writes on a simulated power loss),
toxiproxy_server (Toxiproxy's HTTP API, driven with toxiproxy-python).
"""
