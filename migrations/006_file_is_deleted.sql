-- 006: soft deletion. Deleted files stay in the table (and in replicas) flagged as
-- deleted; existing rows become "not deleted" through the default.

ALTER TABLE "file" ADD COLUMN "isDeleted" BOOLEAN NOT NULL DEFAULT FALSE;
