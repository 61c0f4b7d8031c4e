-- 008: file pinning. A user can pin a file to the top of their file list; NULL means
-- never pinned.

ALTER TABLE "file_state" ADD COLUMN "isPinned" BOOLEAN;
