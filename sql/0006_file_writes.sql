-- The two primitive changes to a path, shared by every write RPC: write a new version, or
-- write a tombstone. Neither emits an event (single-file RPCs emit one each, bulk RPCs one
-- for the batch) and neither checks access (the RPC did).
--
-- Errors: 22V01 invalid path; 22V02 content too large, DETAIL {"size", "limit"};
-- 22V03 unknown file type; 22004 missing content; 23V01 a file where a directory is
-- (or the reverse), DETAIL {"path", "conflicting_path"}; 23V02 version conflict,
-- DETAIL {"path", "expected_version", "current_version"}; P0002 no such file.
--
-- expected_version: NULL skips the check; 0 means "the path holds no live file"; N means
-- "version N is current" (a tombstone's version counts, so a delete can be re-created).

CREATE TYPE internal.file_change AS (
  file    public.project_files,
  changed boolean
);

CREATE FUNCTION internal.check_expected_version(
  p_path text, p_current public.project_files, p_expected integer
) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
  v_current integer := coalesce(p_current.version, 0);
BEGIN
  IF p_expected IS NULL
     OR p_expected = v_current
     OR (p_expected = 0 AND (p_current.id IS NULL OR p_current.is_deleted)) THEN
    RETURN;
  END IF;
  RAISE EXCEPTION 'version conflict on %: expected version %, current version is %',
    quote_literal(p_path), p_expected, v_current
    USING ERRCODE = '23V02',
          DETAIL = jsonb_build_object('path', p_path, 'expected_version', p_expected,
                                      'current_version', v_current)::text;
END
$$;

-- A new path may not sit below a file ("a" then "a/b") nor above files ("a/b" then "a").
-- Two index lookups: the ancestors are exact keys; the descendants are the key range between
-- p_path || '/' and p_path || '0' ('0' is the character after '/'). Kept as two queries: one
-- query ORing them lets the planner scan every row of a young project (quadratic bulks).
CREATE FUNCTION internal.check_no_file_directory_clash(p_project uuid, p_path text)
RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public AS $$
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
    SELECT file_path INTO v_clash FROM public.project_files
     WHERE project_id = p_project AND file_path = ANY (v_ancestors)
       AND is_current_version AND NOT is_deleted
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

-- Writes the next version of a path: text content, or (p_storage_key set) a binary whose
-- bytes are in object storage with the given sha256 and size. Unchanged content and type is
-- a no-op returning the current row with changed = false.
CREATE FUNCTION internal.write_file(
  p_project uuid, p_path text, p_content text, p_file_type text, p_expected_version integer,
  p_author uuid, p_storage_key text DEFAULT NULL, p_hash text DEFAULT NULL,
  p_size bigint DEFAULT NULL
) RETURNS internal.file_change
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
  v_type text;
  v_hash text;
  v_size bigint;
  v_limit integer;
  v_current public.project_files;
  v_new public.project_files;
BEGIN
  PERFORM internal.check_path(p_path);
  v_type := internal.resolve_file_type(p_path, p_file_type);
  IF p_storage_key IS NULL THEN
    IF p_content IS NULL THEN
      RAISE EXCEPTION 'content is required for %', quote_literal(p_path) USING ERRCODE = '22004';
    END IF;
    SELECT max_content_bytes INTO v_limit FROM internal.config;
    v_size := octet_length(p_content);
    IF v_size > v_limit THEN
      RAISE EXCEPTION 'content of % is % bytes, over the limit of % bytes',
        quote_literal(p_path), v_size, v_limit
        USING ERRCODE = '22V02',
              DETAIL = jsonb_build_object('path', p_path, 'size', v_size, 'limit', v_limit)::text;
    END IF;
    v_hash := encode(sha256(convert_to(p_content, 'UTF8')), 'hex');
  ELSE
    IF p_hash IS NULL OR p_hash !~ '^[0-9a-f]{64}$' OR p_size IS NULL OR p_size < 0 THEN
      RAISE EXCEPTION 'a binary file needs a lowercase hex sha256 and a size (%)',
        quote_literal(p_path) USING ERRCODE = '22023';
    END IF;
    v_hash := p_hash;
    v_size := p_size;
  END IF;

  SELECT * INTO v_current FROM public.project_files
   WHERE project_id = p_project AND file_path = p_path AND is_current_version;
  PERFORM internal.check_expected_version(p_path, v_current, p_expected_version);

  IF v_current.id IS NOT NULL AND NOT v_current.is_deleted
     AND v_current.content_hash = v_hash AND v_current.file_type = v_type
     AND v_current.storage_key IS NOT DISTINCT FROM p_storage_key THEN
    RETURN ROW(v_current, false)::internal.file_change;
  END IF;
  IF v_current.id IS NULL OR v_current.is_deleted THEN
    PERFORM internal.check_no_file_directory_clash(p_project, p_path);
  END IF;
  -- Two statements, not one with a data-modifying CTE: the CTE's UPDATE is not ordered
  -- before the INSERT, and the one-current-row index would see two current rows.
  IF v_current.id IS NOT NULL THEN
    UPDATE public.project_files SET is_current_version = false WHERE id = v_current.id;
  END IF;
  INSERT INTO public.project_files (
    project_id, file_path, file_type, content, content_hash, size_bytes, storage_key,
    version, parent_version_id, created_by, last_modified_by)
  VALUES (
    p_project, p_path, v_type, CASE WHEN p_storage_key IS NULL THEN p_content END, v_hash,
    v_size, p_storage_key, coalesce(v_current.version, 0) + 1, v_current.id,
    CASE WHEN v_current.id IS NULL OR v_current.is_deleted THEN p_author
         ELSE v_current.created_by END,
    p_author)
  RETURNING * INTO v_new;
  RETURN ROW(v_new, true)::internal.file_change;
END
$$;

-- Writes a tombstone version. Deleting a deleted path is a no-op returning its tombstone
-- (retries are safe); deleting a path that never existed is P0002.
CREATE FUNCTION internal.delete_file(
  p_project uuid, p_path text, p_expected_version integer, p_author uuid
) RETURNS internal.file_change
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
  v_current public.project_files;
  v_new public.project_files;
BEGIN
  PERFORM internal.check_path(p_path);
  SELECT * INTO v_current FROM public.project_files
   WHERE project_id = p_project AND file_path = p_path AND is_current_version;
  IF v_current.id IS NULL THEN
    RAISE EXCEPTION 'file % not found', quote_literal(p_path)
      USING ERRCODE = 'P0002', DETAIL = jsonb_build_object('path', p_path)::text;
  END IF;
  PERFORM internal.check_expected_version(p_path, v_current, p_expected_version);
  IF v_current.is_deleted THEN
    RETURN ROW(v_current, false)::internal.file_change;
  END IF;
  UPDATE public.project_files SET is_current_version = false WHERE id = v_current.id;
  INSERT INTO public.project_files (
    project_id, file_path, file_type, content, content_hash, size_bytes, storage_key,
    is_deleted, version, parent_version_id, created_by, last_modified_by)
  VALUES (
    p_project, p_path, v_current.file_type, NULL, NULL, 0, NULL, true,
    v_current.version + 1, v_current.id, v_current.created_by, p_author)
  RETURNING * INTO v_new;
  RETURN ROW(v_new, true)::internal.file_change;
END
$$;

-- How a changed file appears in an event payload (content is joined back by readers).
-- Helpers on the write path are plpgsql, not SQL: a SQL function that cannot be inlined is
-- planned again in every transaction, which costs more than the work it does.
CREATE FUNCTION internal.event_item(p_file public.project_files) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
  IF p_file.is_deleted THEN
    RETURN jsonb_build_object('action', 'delete', 'file_path', p_file.file_path,
                              'version', p_file.version, 'file_id', p_file.id);
  END IF;
  RETURN jsonb_strip_nulls(jsonb_build_object(
    'action', 'update', 'file_path', p_file.file_path, 'version', p_file.version,
    'file_id', p_file.id, 'file_type', p_file.file_type,
    'content_hash', p_file.content_hash, 'size', p_file.size_bytes,
    'storage_key', p_file.storage_key));
END
$$;
