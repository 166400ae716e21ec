-- The file RPCs: the only way files change. Signatures follow the seeds, so an existing
-- client calling supabase.rpc('upsert_project_file', {...}) keeps working. Every function is
-- SECURITY DEFINER with a pinned search_path and checks access itself (internal.authorize).
-- Each single-file write that changes something emits one event; a no-op emits none.

-- Writes a file's next version. Emits file:update. Returns the resulting (or unchanged) row.
CREATE FUNCTION public.upsert_project_file(
  project_uuid uuid, p_file_path text, p_content text, p_file_type text DEFAULT NULL,
  expected_version integer DEFAULT NULL
) RETURNS public.project_files
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v_caller internal.caller := internal.authorize(project_uuid, 'write');
  v_change internal.file_change;
BEGIN
  v_change := internal.write_file(project_uuid, p_file_path, p_content, p_file_type,
                                  expected_version, v_caller.author_id);
  IF v_change.changed THEN
    PERFORM internal.append_event(project_uuid, 'file:update',
                                  internal.event_item(v_change.file), v_caller.user_id);
  END IF;
  RETURN v_change.file;
END
$$;

-- Registers a binary file whose bytes the service already put in object storage.
-- Service only: a user could otherwise point a file at another project's object.
CREATE FUNCTION public.upsert_project_binary_file(
  project_uuid uuid, p_file_path text, p_storage_key text, p_content_hash text,
  p_size_bytes bigint, p_file_type text DEFAULT 'binary', expected_version integer DEFAULT NULL
) RETURNS public.project_files
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v_caller internal.caller := internal.authorize(project_uuid, 'write');
  v_change internal.file_change;
BEGIN
  IF NOT v_caller.is_service THEN
    RAISE EXCEPTION 'permission denied: only the service registers binary files'
      USING ERRCODE = '42501';
  END IF;
  IF p_storage_key IS NULL OR p_storage_key = '' THEN
    RAISE EXCEPTION 'p_storage_key is required' USING ERRCODE = '22004';
  END IF;
  v_change := internal.write_file(project_uuid, p_file_path, NULL, p_file_type,
                                  expected_version, v_caller.author_id,
                                  p_storage_key, p_content_hash, p_size_bytes);
  IF v_change.changed THEN
    PERFORM internal.append_event(project_uuid, 'file:update',
                                  internal.event_item(v_change.file), v_caller.user_id);
  END IF;
  RETURN v_change.file;
END
$$;

-- Deletes a file by writing a tombstone version. Emits file:delete. Returns the tombstone.
CREATE FUNCTION public.delete_project_file(
  project_uuid uuid, p_file_path text, expected_version integer DEFAULT NULL
) RETURNS public.project_files
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v_caller internal.caller := internal.authorize(project_uuid, 'write');
  v_change internal.file_change;
BEGIN
  v_change := internal.delete_file(project_uuid, p_file_path, expected_version,
                                   v_caller.author_id);
  IF v_change.changed THEN
    PERFORM internal.append_event(project_uuid, 'file:delete',
                                  internal.event_item(v_change.file), v_caller.user_id);
  END IF;
  RETURN v_change.file;
END
$$;

-- The project's current files, tombstones excluded, ordered by path (byte order).
CREATE FUNCTION public.list_current_files(project_uuid uuid)
RETURNS TABLE (
  file_path text, file_type text, content text, content_hash text, version integer,
  size_bytes bigint, storage_key text, updated_at timestamptz
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  PERFORM internal.authorize(project_uuid, 'read');
  RETURN QUERY
    SELECT f.file_path::text, f.file_type, f.content, f.content_hash, f.version, f.size_bytes,
           f.storage_key, f.updated_at
      FROM public.project_files f
     WHERE f.project_id = project_uuid AND f.is_current_version AND NOT f.is_deleted
     ORDER BY f.file_path;
END
$$;

-- Every version of a path, newest first, tombstones included. P0002 if it never existed.
CREATE FUNCTION public.file_history(project_uuid uuid, p_file_path text)
RETURNS SETOF public.project_files
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  PERFORM internal.authorize(project_uuid, 'read');
  PERFORM internal.check_path(p_file_path);
  RETURN QUERY
    SELECT * FROM public.project_files f
     WHERE f.project_id = project_uuid AND f.file_path = p_file_path
     ORDER BY f.version DESC;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'file % not found', quote_literal(p_file_path)
      USING ERRCODE = 'P0002', DETAIL = jsonb_build_object('path', p_file_path)::text;
  END IF;
END
$$;

-- Makes an old version current again, as a new version with its content. Emits
-- file:update (with restored_from). Restoring a tombstone is refused (22023).
CREATE FUNCTION public.restore_file_version(
  project_uuid uuid, p_file_path text, p_version integer, expected_version integer DEFAULT NULL
) RETURNS public.project_files
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v_caller internal.caller := internal.authorize(project_uuid, 'write');
  v_old public.project_files;
  v_change internal.file_change;
BEGIN
  PERFORM internal.check_path(p_file_path);
  SELECT * INTO v_old FROM public.project_files
   WHERE project_id = project_uuid AND file_path = p_file_path AND version = p_version;
  IF v_old.id IS NULL THEN
    RAISE EXCEPTION 'version % of % not found', p_version, quote_literal(p_file_path)
      USING ERRCODE = 'P0002',
            DETAIL = jsonb_build_object('path', p_file_path, 'version', p_version)::text;
  END IF;
  IF v_old.is_deleted THEN
    RAISE EXCEPTION 'version % of % is a deletion; there is nothing to restore',
      p_version, quote_literal(p_file_path) USING ERRCODE = '22023';
  END IF;
  v_change := internal.write_file(project_uuid, p_file_path, v_old.content, v_old.file_type,
                                  expected_version, v_caller.author_id, v_old.storage_key,
                                  v_old.content_hash, v_old.size_bytes);
  IF v_change.changed THEN
    PERFORM internal.append_event(
      project_uuid, 'file:update',
      internal.event_item(v_change.file) || jsonb_build_object('restored_from', p_version),
      v_caller.user_id);
  END IF;
  RETURN v_change.file;
END
$$;

-- Events after since_seq, in order, at most max_rows (1..10000), with content joined back.
-- Raises 22V07 when since_seq is older than the retained log: re-hydrate from a snapshot.
CREATE FUNCTION public.events_since(project_uuid uuid, since_seq bigint,
                                    max_rows integer DEFAULT 1000)
RETURNS TABLE (seq bigint, type text, payload jsonb, actor uuid, created_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v_pruned bigint;
BEGIN
  PERFORM internal.authorize(project_uuid, 'read');
  IF since_seq IS NULL OR since_seq < 0 THEN
    RAISE EXCEPTION 'since_seq must be 0 or more' USING ERRCODE = '22023';
  END IF;
  IF max_rows IS NULL OR max_rows NOT BETWEEN 1 AND 10000 THEN
    RAISE EXCEPTION 'max_rows must be between 1 and 10000' USING ERRCODE = '22023';
  END IF;
  SELECT pruned_through_seq INTO v_pruned FROM public.projects WHERE id = project_uuid;
  IF since_seq < v_pruned THEN
    RAISE EXCEPTION 'events after seq % are no longer retained (oldest retained is %): '
      're-hydrate from a fresh snapshot', since_seq, v_pruned + 1
      USING ERRCODE = '22V07',
            DETAIL = jsonb_build_object('since_seq', since_seq,
                                        'oldest_retained_seq', v_pruned + 1)::text;
  END IF;
  RETURN QUERY
    SELECT e.seq, e.type, internal.materialize_event(e.type, e.payload), e.actor, e.created_at
      FROM public.file_events e
     WHERE e.project_id = project_uuid AND e.seq > since_seq
     ORDER BY e.seq
     LIMIT max_rows;
END
$$;
