"""The change source: owns everything upstream — shard schema, publications, replication slot,
initial sync and the replication stream.

`upstream` creates and checks the Postgres objects zero-cache 1.9 keeps in the upstream database
(app schema, shard schema, publications, DDL event triggers) and reads the published schema that
the replica is built from.
"""
