-- The write path's helpers, made cheaper without changing what they do.
--
-- 1. path_problem's segment-length rule was one condition `octet_length(p) > 255 AND
--    EXISTS (...)`. A condition holding a subquery is not a plpgsql "simple expression": it
--    went through the executor on every write, even for the short paths the AND skips.
--    Nested, the subquery runs only for paths over 255 bytes.
-- 2. The helpers below run only inside the SECURITY DEFINER RPCs (whose search_path is
--    pinned) or as the trigger of the inserts those RPCs make: nobody else may execute them
--    (default privileges on `internal`). Their own `SET search_path` only switched the path
--    and back on every call, several times per write, which cost more than some helpers'
--    work. The RPCs keep theirs.
--
-- Measured with bench.rpc_throughput (pgbench, 4 clients); see docs/database.md.

CREATE OR REPLACE FUNCTION internal.path_problem(p_path text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
  IF p_path IS NULL OR p_path = '' THEN RETURN 'empty'; END IF;
  IF octet_length(p_path) > 1024 THEN RETURN 'too_long'; END IF;
  IF left(p_path, 1) = '/' THEN RETURN 'absolute'; END IF;
  IF p_path ~ '^[A-Za-z]:' THEN RETURN 'drive_letter'; END IF;
  IF strpos(p_path, E'\\') > 0 THEN RETURN 'backslash'; END IF;
  IF p_path ~ '[\x01-\x1f\x7f\u0080-\u009f]' THEN RETURN 'control_character'; END IF;
  IF right(p_path, 1) = '/' THEN RETURN 'trailing_slash'; END IF;
  IF strpos(p_path, '//') > 0 THEN RETURN 'empty_segment'; END IF;
  IF p_path ~ '(^|/)\.\.?(/|$)' THEN RETURN 'dot_segment'; END IF;
  IF cardinality(string_to_array(p_path, '/')) > 32 THEN RETURN 'too_deep'; END IF;
  -- Only a path over 255 bytes can hold a segment over 255 bytes.
  IF octet_length(p_path) > 255 THEN
    IF EXISTS (SELECT FROM unnest(string_to_array(p_path, '/')) AS segment
                WHERE octet_length(segment) > 255) THEN
      RETURN 'segment_too_long';
    END IF;
  END IF;
  RETURN NULL;
END
$$;

ALTER FUNCTION internal.path_problem(text) RESET search_path;
ALTER FUNCTION internal.check_path(text) RESET search_path;
ALTER FUNCTION internal.resolve_file_type(text, text) RESET search_path;
ALTER FUNCTION internal.check_expected_version(text, public.project_files, integer)
  RESET search_path;
ALTER FUNCTION internal.check_no_file_directory_clash(uuid, text) RESET search_path;
ALTER FUNCTION internal.write_file(uuid, text, text, text, integer, uuid, text, text, bigint)
  RESET search_path;
ALTER FUNCTION internal.delete_file(uuid, text, integer, uuid) RESET search_path;
ALTER FUNCTION internal.event_item(public.project_files) RESET search_path;
ALTER FUNCTION internal.append_event(uuid, text, jsonb, uuid) RESET search_path;
ALTER FUNCTION internal.notify_file_event() RESET search_path;
ALTER FUNCTION internal.take_rate_token(uuid, uuid) RESET search_path;
ALTER FUNCTION internal.authorize(uuid, text) RESET search_path;
ALTER FUNCTION internal.apply_bulk(uuid, jsonb, internal.caller) RESET search_path;
