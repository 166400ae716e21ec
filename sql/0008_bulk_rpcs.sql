-- Bulk writes: all or nothing, and exactly one bulk:apply event listing every change (none
-- when nothing changed). Used for template generation, AI generation, renames (a delete and
-- a create in one batch) and adoption.
--
-- files is a JSON array of at most internal.config.max_bulk_files objects:
--   {"file_path": "...", "content": "...", "file_type"?: "...", "expected_version"?: n}
--   {"file_path": "...", "action": "delete", "expected_version"?: n}
-- Items apply in array order. Errors name the item: 22V04 malformed payload, 22V05 too many
-- files, or the error of the failing item (prefixed "files[i]: "), as for the single RPCs.
-- Returns {"success", "project_id", "seq", "changed", "unchanged", "files": [...]}.

CREATE FUNCTION internal.bulk_payload_error(p_message text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  RAISE EXCEPTION '%', p_message USING ERRCODE = '22V04';
END
$$;

CREATE FUNCTION internal.apply_bulk(p_project uuid, p_files jsonb, p_caller internal.caller)
RETURNS jsonb
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
  v_limit integer;
  v_item jsonb;
  v_index integer := -1;
  v_action text;
  v_expected integer;
  v_change internal.file_change;
  v_results jsonb[] := '{}';
  v_events jsonb[] := '{}';
  v_duplicate text;
  v_seq bigint;
  v_state text;
  v_message text;
  v_detail text;
BEGIN
  IF p_files IS NULL OR jsonb_typeof(p_files) <> 'array' THEN
    PERFORM internal.bulk_payload_error(
      'files must be a JSON array of {file_path, content, file_type?, expected_version?, action?}');
  END IF;
  SELECT max_bulk_files INTO v_limit FROM internal.config;
  IF jsonb_array_length(p_files) > v_limit THEN
    RAISE EXCEPTION 'a bulk write takes at most % files, got %', v_limit,
      jsonb_array_length(p_files)
      USING ERRCODE = '22V05',
            DETAIL = jsonb_build_object('count', jsonb_array_length(p_files),
                                        'limit', v_limit)::text;
  END IF;
  SELECT item ->> 'file_path' INTO v_duplicate
    FROM jsonb_array_elements(p_files) AS items (item)
   WHERE jsonb_typeof(item) = 'object' AND item ? 'file_path'
   GROUP BY 1 HAVING count(*) > 1 LIMIT 1;
  IF v_duplicate IS NOT NULL THEN
    PERFORM internal.bulk_payload_error(format('path %L appears more than once', v_duplicate));
  END IF;

  BEGIN
    FOR v_item IN SELECT item FROM jsonb_array_elements(p_files) AS items (item) LOOP
      v_index := v_index + 1;
      IF jsonb_typeof(v_item) <> 'object' THEN
        PERFORM internal.bulk_payload_error('must be an object');
      END IF;
      IF jsonb_typeof(v_item -> 'file_path') IS DISTINCT FROM 'string' THEN
        PERFORM internal.bulk_payload_error('file_path must be a string');
      END IF;
      v_action := coalesce(v_item ->> 'action', 'update');
      IF v_action NOT IN ('update', 'delete') THEN
        PERFORM internal.bulk_payload_error(
          format('action must be "update" or "delete", not %L', v_action));
      END IF;
      IF v_item ? 'expected_version' AND jsonb_typeof(v_item -> 'expected_version') <> 'null'
         AND (jsonb_typeof(v_item -> 'expected_version') <> 'number'
              OR (v_item ->> 'expected_version') !~ '^\d{1,9}$') THEN
        PERFORM internal.bulk_payload_error('expected_version must be a whole number or null');
      END IF;
      v_expected := (v_item ->> 'expected_version')::integer;
      IF v_action = 'delete' THEN
        v_change := internal.delete_file(p_project, v_item ->> 'file_path', v_expected,
                                         p_caller.author_id);
      ELSE
        IF jsonb_typeof(v_item -> 'content') IS DISTINCT FROM 'string' THEN
          PERFORM internal.bulk_payload_error('content must be a string');
        END IF;
        IF v_item ? 'file_type' AND jsonb_typeof(v_item -> 'file_type') NOT IN ('string', 'null')
        THEN
          PERFORM internal.bulk_payload_error('file_type must be a string');
        END IF;
        v_change := internal.write_file(p_project, v_item ->> 'file_path', v_item ->> 'content',
                                        v_item ->> 'file_type', v_expected, p_caller.author_id);
      END IF;
      v_results := v_results || jsonb_build_object(
        'file_path', (v_change.file).file_path, 'action', v_action,
        'version', (v_change.file).version, 'changed', v_change.changed);
      IF v_change.changed THEN
        v_events := v_events || internal.event_item(v_change.file);
      END IF;
    END LOOP;
  EXCEPTION WHEN OTHERS THEN
    -- One handler for the whole loop (one subtransaction, not one per file): name the item.
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                            v_detail = PG_EXCEPTION_DETAIL;
    IF v_index < 0 THEN
      RAISE EXCEPTION USING ERRCODE = v_state, MESSAGE = v_message, DETAIL = v_detail;
    END IF;
    RAISE EXCEPTION USING ERRCODE = v_state, MESSAGE = format('files[%s]: %s', v_index, v_message),
      DETAIL = coalesce(v_detail, '');
  END;

  IF cardinality(v_events) > 0 THEN
    v_seq := internal.append_event(p_project, 'bulk:apply',
      jsonb_build_object('files', to_jsonb(v_events), 'count', cardinality(v_events)),
      p_caller.user_id);
  END IF;
  RETURN jsonb_build_object(
    'success', true, 'project_id', p_project, 'seq', v_seq,
    'changed', cardinality(v_events),
    'unchanged', cardinality(v_results) - cardinality(v_events),
    'files', to_jsonb(v_results));
END
$$;

CREATE FUNCTION public.bulk_upsert_project_files(project_uuid uuid, files jsonb)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  RETURN internal.apply_bulk(project_uuid, files, internal.authorize(project_uuid, 'write'));
END
$$;

-- Deletes many paths in one batch (one bulk:apply event).
CREATE FUNCTION public.bulk_delete_project_files(project_uuid uuid, p_file_paths text[])
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v_caller internal.caller := internal.authorize(project_uuid, 'write');
BEGIN
  IF p_file_paths IS NULL THEN
    PERFORM internal.bulk_payload_error('p_file_paths must be an array of paths');
  END IF;
  RETURN internal.apply_bulk(project_uuid,
    (SELECT coalesce(jsonb_agg(jsonb_build_object('file_path', path, 'action', 'delete')
                               ORDER BY position), '[]'::jsonb)
       FROM unnest(p_file_paths) WITH ORDINALITY AS paths (path, position)),
    v_caller);
END
$$;
