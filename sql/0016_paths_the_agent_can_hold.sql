-- Two more path rules, so that every path the database accepts is one a preview container
-- can hold. Before them, `c:notes.txt` (the agent refuses a drive letter) or a name over 255
-- bytes (Linux's NAME_MAX) was stored, and then every snapshot of the project was refused by
-- the agent's extractor: one file name kept the whole preview from starting.
--
-- drive_letter:     the path starts with a letter and a colon (`C:`, `c:x`).
-- segment_too_long: a segment (file or directory name) is over 255 bytes in UTF-8.
--
-- The order of the reasons stays the documented one; the new ones come where they first
-- apply (drive_letter after absolute, segment_too_long last). Paths already stored are not
-- touched; docs/database.md lists the rules.

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
  -- Only a path over 255 bytes can hold a segment over 255 bytes: most paths skip the scan.
  IF octet_length(p_path) > 255 AND EXISTS (
       SELECT FROM unnest(string_to_array(p_path, '/')) AS segment
        WHERE octet_length(segment) > 255) THEN
    RETURN 'segment_too_long';
  END IF;
  RETURN NULL;
END
$$;
