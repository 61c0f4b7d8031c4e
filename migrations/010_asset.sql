-- 010: asset information. One row per uploaded asset object, tied to the file it was
-- uploaded into (deleted with the file) and to the uploading user if known (kept, with
-- the user cleared, when that user is deleted). Not published to zero-cache.

CREATE TABLE "asset" (
  "objectName" VARCHAR PRIMARY KEY,
  "fileId" VARCHAR NOT NULL,
  "userId" VARCHAR,
  FOREIGN KEY ("fileId") REFERENCES "file" ("id") ON DELETE CASCADE,
  FOREIGN KEY ("userId") REFERENCES "user" ("id") ON DELETE SET NULL
);
