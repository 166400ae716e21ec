-- A version's and an event's project are kept by their writers too (as 0023 did for the
-- version links), not by foreign keys checked on every write.
--
-- Every function that inserts versions or events holds the project's row lock when it does:
-- authorize and adopt_files take it (FOR NO KEY UPDATE) before anything is written, and
-- append_event inserts the event only through the UPDATE of that row that assigns its seq.
-- So the project exists when the rows are inserted, and a deletion of the project waits for
-- the writing transaction to commit. The two foreign keys checked that again on every write:
-- 96 K of the 1.27 M instructions of a single-file upsert.
--
-- Their ON DELETE CASCADE stays, once per statement: deleting projects deletes their events
-- and versions. The other tables that name a project (members, snapshots, sessions,
-- adoption records) keep their foreign keys: no write path inserts them per edit.
--
-- Instructions per upsert (python -m bench.rpc_instructions): 1.27 M to 1.17 M.

ALTER TABLE public.project_files DROP CONSTRAINT project_files_project_id_fkey;
ALTER TABLE public.file_events DROP CONSTRAINT file_events_project_id_fkey;

CREATE FUNCTION internal.delete_project_history() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
  DELETE FROM public.file_events e USING deleted_projects d WHERE e.project_id = d.id;
  DELETE FROM public.project_files f USING deleted_projects d WHERE f.project_id = d.id;
  RETURN NULL;
END
$$;

CREATE TRIGGER projects_delete_history AFTER DELETE ON public.projects
  REFERENCING OLD TABLE AS deleted_projects
  FOR EACH STATEMENT EXECUTE FUNCTION internal.delete_project_history();
