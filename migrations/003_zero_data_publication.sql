-- 003: publish the synced tables to zero-cache.
--
-- zero-cache replicates through logical replication of the publication "zero_data".
-- REPLICA IDENTITY FULL makes UPDATE and DELETE records carry the whole old row rather
-- than only the primary key, which the sync engine needs to retract the old version of a
-- file or file state. "user" keeps the default identity (its primary key).

CREATE PUBLICATION zero_data FOR TABLE file, file_state, public.user;

ALTER TABLE file REPLICA IDENTITY FULL;
ALTER TABLE file_state REPLICA IDENTITY FULL;
