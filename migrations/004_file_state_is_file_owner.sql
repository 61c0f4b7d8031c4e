-- 004: guest access. A file_state now records whether its user owns the file, so a
-- user's file list can tell their own files from files shared with them.

ALTER TABLE "file_state" ADD COLUMN "isFileOwner" BOOLEAN;
