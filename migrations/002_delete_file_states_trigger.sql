-- 002: unsharing a file removes its guests' file states.
--
-- When "file"."shared" goes from TRUE to FALSE, every file_state of that file that does not
-- belong to the owner is deleted, so guests lose the file from their lists. The owner's
-- own state is kept. The trigger fires only on UPDATEs that name the "shared" column.

CREATE OR REPLACE FUNCTION delete_file_states() RETURNS TRIGGER AS $$
BEGIN
  IF OLD.shared = TRUE AND NEW.shared = FALSE THEN
    DELETE FROM file_state
    WHERE "fileId" = OLD.id AND OLD."ownerId" != "userId";
  END IF;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER file_shared_update
AFTER UPDATE OF shared ON file
FOR EACH ROW
EXECUTE FUNCTION delete_file_states();
