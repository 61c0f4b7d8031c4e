-- 012: mutation tracking. The app server stores, per user, the number of the last
-- mutation it processed, so replayed or duplicated pushes can be recognised. Deleted with
-- the user. Not published to zero-cache.

CREATE TABLE "user_mutation_number" (
  "userId" VARCHAR PRIMARY KEY REFERENCES "user" ("id") ON DELETE CASCADE,
  "mutationNumber" BIGINT NOT NULL DEFAULT 0
);
