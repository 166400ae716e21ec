-- Files as versioned rows: the seeds' unified project_files schema, plus an explicit
-- tombstone flag, the size, and a storage key for binaries (content lives in object storage).
--
-- A write never updates a version in place: it clears is_current_version on the old row and
-- inserts the next version. A partial unique index keeps at most one current row per path.
-- file_path uses the "C" collation: byte order for listings and zips, and prefix scans on
-- the index for the file-versus-directory check.

CREATE TABLE public.project_files (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  project_id         uuid NOT NULL REFERENCES public.projects (id) ON DELETE CASCADE,
  file_path          text COLLATE "C" NOT NULL,
  -- Checked against internal.file_types by the write functions (no foreign key: it would
  -- cost a lookup per write for a check the only writers already made).
  file_type          text NOT NULL,
  content            text,
  content_hash       text,
  size_bytes         bigint NOT NULL DEFAULT 0,
  storage_key        text,
  is_deleted         boolean NOT NULL DEFAULT false,
  version            integer NOT NULL,
  parent_version_id  uuid REFERENCES public.project_files (id) ON DELETE SET NULL,
  is_current_version boolean NOT NULL DEFAULT true,
  created_by         uuid NOT NULL REFERENCES public.user_profiles (id),
  last_modified_by   uuid REFERENCES public.user_profiles (id) ON DELETE SET NULL,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT project_files_version_unique UNIQUE (project_id, file_path, version),
  CONSTRAINT project_files_version_positive CHECK (version >= 1),
  CONSTRAINT project_files_tombstone_is_empty CHECK (
    NOT is_deleted OR (content IS NULL AND storage_key IS NULL AND content_hash IS NULL)),
  CONSTRAINT project_files_live_has_one_source CHECK (
    is_deleted OR ((content IS NULL) <> (storage_key IS NULL))),
  CONSTRAINT project_files_live_has_sha256 CHECK (
    is_deleted OR content_hash ~ '^[0-9a-f]{64}$'),
  CONSTRAINT project_files_size_not_negative CHECK (size_bytes >= 0)
);

CREATE UNIQUE INDEX project_files_one_current_per_path
  ON public.project_files (project_id, file_path) WHERE is_current_version;
CREATE INDEX project_files_parent_idx ON public.project_files (parent_version_id);

-- What a project holds now: current, not deleted. security_invoker keeps RLS in force.
CREATE VIEW public.project_files_current WITH (security_invoker = true) AS
  SELECT * FROM public.project_files WHERE is_current_version AND NOT is_deleted;

ALTER TABLE public.project_files ENABLE ROW LEVEL SECURITY;
CREATE POLICY "members read their projects' files" ON public.project_files
  FOR SELECT TO authenticated USING (project_id IN (SELECT internal.my_project_ids()));
-- No write policies: files change only through the RPCs below.
REVOKE ALL ON public.project_files, public.project_files_current FROM anon, authenticated;
GRANT SELECT ON public.project_files, public.project_files_current TO authenticated;
GRANT SELECT ON public.project_files, public.project_files_current TO service_role;

-- Why a path is not acceptable, or NULL when it is. Reasons are stable identifiers:
-- empty, too_long (over 1,024 bytes), absolute, backslash, control_character,
-- trailing_slash, empty_segment, dot_segment, too_deep (over 32 segments).
CREATE FUNCTION internal.path_problem(p_path text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
BEGIN
  IF p_path IS NULL OR p_path = '' THEN RETURN 'empty'; END IF;
  IF octet_length(p_path) > 1024 THEN RETURN 'too_long'; END IF;
  IF left(p_path, 1) = '/' THEN RETURN 'absolute'; END IF;
  IF strpos(p_path, E'\\') > 0 THEN RETURN 'backslash'; END IF;
  IF p_path ~ '[\x01-\x1f\x7f\u0080-\u009f]' THEN RETURN 'control_character'; END IF;
  IF right(p_path, 1) = '/' THEN RETURN 'trailing_slash'; END IF;
  IF strpos(p_path, '//') > 0 THEN RETURN 'empty_segment'; END IF;
  IF p_path ~ '(^|/)\.\.?(/|$)' THEN RETURN 'dot_segment'; END IF;
  IF cardinality(string_to_array(p_path, '/')) > 32 THEN RETURN 'too_deep'; END IF;
  RETURN NULL;
END
$$;

-- Raises invalid_path (SQLSTATE 22V01) naming the path and the reason.
CREATE FUNCTION internal.check_path(p_path text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog AS $$
DECLARE
  v_reason text := internal.path_problem(p_path);
BEGIN
  IF v_reason IS NOT NULL THEN
    RAISE EXCEPTION 'invalid path %: %', coalesce(quote_literal(left(p_path, 200)), 'NULL'),
      replace(v_reason, '_', ' ')
      USING ERRCODE = '22V01',
            DETAIL = jsonb_build_object('path', left(p_path, 1100), 'reason', v_reason)::text;
  END IF;
END
$$;

-- The file type to store: the one named (must be known), else implied by the extension.
CREATE FUNCTION internal.resolve_file_type(p_path text, p_file_type text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog AS $$
DECLARE
  v_type text;
  v_extension text;
BEGIN
  IF p_file_type IS NULL OR p_file_type = '' THEN
    v_extension := lower(substring(p_path FROM '\.([^./]+)$'));
    SELECT name INTO v_type FROM internal.file_types WHERE v_extension = ANY (extensions);
    RETURN coalesce(v_type, 'text');
  END IF;
  PERFORM FROM internal.file_types WHERE name = p_file_type;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'unknown file_type % for %; known types: %', quote_literal(p_file_type),
      quote_literal(p_path), (SELECT string_agg(name, ', ' ORDER BY name) FROM internal.file_types)
      USING ERRCODE = '22V03',
            DETAIL = jsonb_build_object('path', p_path, 'file_type', p_file_type)::text;
  END IF;
  RETURN p_file_type;
END
$$;
