-- A version's author and parent are kept right by the only code that writes them, not by
-- foreign keys checked again on every write.
--
-- Versions are inserted only by internal.write_file and internal.delete_file, inside the
-- SECURITY DEFINER functions: no role may write project_files itself (0003). They take
-- parent_version_id from the current row they have just read under the project's lock, and
-- the author from the membership that authorize reads in the statement that takes that lock.
-- Three foreign keys checked both again on every write, each with a query and a row lock:
-- 117 K of the 1.50 M instructions of a single-file upsert, and another 28 K went to the
-- index on parent_version_id, which only the foreign key's ON DELETE used.
--
-- What the keys did when a row is deleted stays, done once per statement by triggers:
-- - deleting versions clears parent_version_id of the versions that replaced them (a
--   version's parent is always the version before it, at the same path);
-- - deleting user profiles clears last_modified_by, and is refused (23503, as before) while
--   one of them created a path.
-- A user deleted while writing: authorize now locks the membership it reads (FOR KEY SHARE),
-- so the membership's deletion, cascaded from the profile, waits for the write to commit,
-- and the profile trigger then sees the new version. Adoption's authors come from its
-- caller's plan, so adopt_files checks and locks them before writing.
--
-- Instructions per upsert (python -m bench.rpc_instructions): 1.50 M to 1.35 M.

ALTER TABLE public.project_files
  DROP CONSTRAINT project_files_parent_version_id_fkey,
  DROP CONSTRAINT project_files_created_by_fkey,
  DROP CONSTRAINT project_files_last_modified_by_fkey;
DROP INDEX public.project_files_parent_idx;

CREATE FUNCTION internal.unlink_deleted_parents() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
BEGIN
  UPDATE public.project_files child SET parent_version_id = NULL
    FROM deleted_versions parent
   WHERE child.project_id = parent.project_id AND child.file_path = parent.file_path
     AND child.parent_version_id = parent.id;
  RETURN NULL;
END
$$;

CREATE TRIGGER project_files_unlink_deleted_parents AFTER DELETE ON public.project_files
  REFERENCING OLD TABLE AS deleted_versions
  FOR EACH STATEMENT EXECUTE FUNCTION internal.unlink_deleted_parents();

CREATE FUNCTION internal.release_deleted_authors() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog AS $$
DECLARE
  v_file public.project_files;
BEGIN
  SELECT f.* INTO v_file
    FROM public.project_files f JOIN deleted_profiles d ON d.id = f.created_by
   LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'cannot delete user %: they created % in project %', v_file.created_by,
      quote_literal(v_file.file_path), v_file.project_id
      USING ERRCODE = '23503',
            DETAIL = jsonb_build_object('user_id', v_file.created_by,
                                        'project_id', v_file.project_id,
                                        'path', v_file.file_path)::text;
  END IF;
  UPDATE public.project_files f SET last_modified_by = NULL
    FROM deleted_profiles d
   WHERE f.last_modified_by = d.id;
  RETURN NULL;
END
$$;

CREATE TRIGGER user_profiles_release_deleted_authors AFTER DELETE ON public.user_profiles
  REFERENCING OLD TABLE AS deleted_profiles
  FOR EACH STATEMENT EXECUTE FUNCTION internal.release_deleted_authors();

CREATE OR REPLACE FUNCTION internal.authorize(p_project uuid, p_access text)
RETURNS internal.caller
LANGUAGE plpgsql AS $$
DECLARE
  v_user uuid := auth.uid();
  v_role text := current_setting('role');
  v_member_role text;
  v_owner uuid;
BEGIN
  IF p_project IS NULL THEN
    RAISE EXCEPTION 'project_uuid is required' USING ERRCODE = '22004';
  END IF;
  IF v_role = 'service_role' OR (v_role = 'none' AND v_user IS NULL) THEN
    IF p_access = 'write' THEN
      SELECT owner_id INTO v_owner FROM public.projects WHERE id = p_project FOR NO KEY UPDATE;
    ELSE
      SELECT owner_id INTO v_owner FROM public.projects WHERE id = p_project;
    END IF;
    IF NOT FOUND THEN
      RAISE EXCEPTION 'project % not found', p_project USING ERRCODE = 'P0002';
    END IF;
    RETURN ROW(NULL, v_owner, true)::internal.caller;
  END IF;

  IF v_user IS NULL THEN
    RAISE EXCEPTION 'authentication required' USING ERRCODE = '28000';
  END IF;
  IF p_access = 'write' THEN
    -- Membership and the project row lock in one statement (this is the hot path). The
    -- membership's lock makes a deletion of the user wait for this write (see above).
    SELECT m.role INTO v_member_role
      FROM public.project_members m JOIN public.projects p ON p.id = m.project_id
     WHERE m.project_id = p_project AND m.user_id = v_user
       FOR NO KEY UPDATE OF p FOR KEY SHARE OF m;
  ELSE
    SELECT role INTO v_member_role
      FROM public.project_members WHERE project_id = p_project AND user_id = v_user;
  END IF;
  IF v_member_role IS NULL THEN
    RAISE EXCEPTION 'permission denied: user % is not a member of project %', v_user, p_project
      USING ERRCODE = '42501';
  END IF;
  IF p_access = 'write' THEN
    IF v_member_role = 'viewer' THEN
      RAISE EXCEPTION 'permission denied: viewers cannot change files of project %', p_project
        USING ERRCODE = '42501';
    END IF;
    PERFORM internal.take_rate_token(v_user, p_project);
  END IF;
  RETURN ROW(v_user, v_user, false)::internal.caller;
END
$$;

ALTER FUNCTION internal.adopt_files(uuid, uuid, jsonb) RENAME TO write_adopted_files;

-- adopt_files(p_batch, p_project, p_files): internal.write_adopted_files (0017), once every
-- author the files name is a user profile, locked until the batch commits. 23503 names the
-- ones that are not.
CREATE FUNCTION internal.adopt_files(p_batch uuid, p_project uuid, p_files jsonb)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v_unknown text;
BEGIN
  WITH authors AS (
    SELECT DISTINCT (version ->> 'author')::uuid AS id
      FROM jsonb_array_elements(p_files) AS paths (path),
           jsonb_array_elements(path -> 'versions') AS versions (version)
  ), known AS (
    SELECT u.id FROM public.user_profiles u JOIN authors a ON a.id = u.id FOR KEY SHARE OF u
  )
  SELECT string_agg(a.id::text, ', ' ORDER BY a.id) INTO v_unknown
    FROM authors a
   WHERE a.id IS NOT NULL AND a.id NOT IN (SELECT id FROM known);
  IF v_unknown IS NOT NULL THEN
    RAISE EXCEPTION 'unknown author(s) %: no such user profile', v_unknown
      USING ERRCODE = '23503', DETAIL = jsonb_build_object('authors', v_unknown)::text;
  END IF;
  RETURN internal.write_adopted_files(p_batch, p_project, p_files);
END
$$;
