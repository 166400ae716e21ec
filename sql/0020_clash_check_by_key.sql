-- The file-versus-directory check looks up each ancestor of a new path by its key.
--
-- It asked `file_path = ANY (ancestors)` in one query. The planner may answer that with the
-- index on project_id alone, filtering every current file of the project, when it believes
-- the project small: the plan plpgsql caches after five calls is chosen without the
-- project's id, and statistics gathered before a project grew say the same. Loading 10,000
-- files into a second project of a database then took 56 s instead of 14 s, each 2,000-file
-- bulk slower than the one before. A LATERAL subquery with its own LIMIT is not flattened
-- into a join: it runs once per ancestor, with the whole (project_id, file_path) key of the
-- one-current-row index, whatever the statistics.

CREATE OR REPLACE FUNCTION internal.check_no_file_directory_clash(p_project uuid, p_path text)
RETURNS void
LANGUAGE plpgsql STABLE AS $$
DECLARE
  v_ancestors text[] := '{}';
  v_slash integer := 0;
  v_next integer;
  v_clash text;
BEGIN
  LOOP
    v_next := strpos(substr(p_path, v_slash + 1), '/');
    EXIT WHEN v_next = 0;
    v_slash := v_slash + v_next;
    v_ancestors := v_ancestors || left(p_path, v_slash - 1);
  END LOOP;
  IF cardinality(v_ancestors) > 0 THEN
    SELECT file.file_path INTO v_clash
      FROM unnest(v_ancestors) AS ancestor (path),
           LATERAL (SELECT f.file_path FROM public.project_files f
                     WHERE f.project_id = p_project AND f.file_path = ancestor.path
                       AND f.is_current_version AND NOT f.is_deleted
                     LIMIT 1) AS file
     LIMIT 1;
    IF v_clash IS NOT NULL THEN
      RAISE EXCEPTION 'cannot create %: % is a file, not a directory',
        quote_literal(p_path), quote_literal(v_clash)
        USING ERRCODE = '23V01',
              DETAIL = jsonb_build_object('path', p_path, 'conflicting_path', v_clash)::text;
    END IF;
  END IF;
  SELECT file_path INTO v_clash FROM public.project_files
   WHERE project_id = p_project AND file_path > p_path || '/' AND file_path < p_path || '0'
     AND is_current_version AND NOT is_deleted
   ORDER BY file_path
   LIMIT 1;
  IF v_clash IS NOT NULL THEN
    RAISE EXCEPTION 'cannot create %: it is a directory holding %',
      quote_literal(p_path), quote_literal(v_clash)
      USING ERRCODE = '23V01',
            DETAIL = jsonb_build_object('path', p_path, 'conflicting_path', v_clash)::text;
  END IF;
END
$$;
