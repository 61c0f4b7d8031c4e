"""The replica service: the SQLite copy of upstream that the query engine reads.

`replicator.Replicator` builds it (initial sync) and keeps it current (replication stream); the
writing itself happens in Rust (`zcache._native.InitialSync`, `zcache._native.ReplicaWriter`).
"""
