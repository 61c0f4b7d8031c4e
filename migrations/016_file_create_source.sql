-- 016: where a file came from (for example a duplicate or an import), recorded at
-- creation; NULL for files created before this column existed.

ALTER TABLE "file" ADD COLUMN "createSource" VARCHAR;
