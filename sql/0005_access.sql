-- Who may call the RPCs, and how often.
--
-- A caller is the service when it acts as role service_role, or connects as a trusted role
-- (no SET ROLE) without user claims: the orchestrator, flows and migrations. Anyone else is a
-- user identified by auth.uid(): viewers read, editors and owners write. Writes lock the
-- project row (serialising a project's writes, which is what makes event seqs gap-free) and
-- spend one token of the user's bucket for that project.
--
-- Errors: 28000 authentication required; 42501 permission denied; P0002 project not found
-- (service callers only: users learn nothing about projects they are not members of);
-- 53V01 rate limited, DETAIL {"retry_after_ms": n}.

CREATE TYPE internal.caller AS (
  user_id    uuid,     -- the acting user; NULL for the service
  author_id  uuid,     -- whom new file versions are attributed to (the owner for the service)
  is_service boolean
);

CREATE UNLOGGED TABLE internal.rate_limit_buckets (
  user_id     uuid NOT NULL,
  project_id  uuid NOT NULL,
  tokens      double precision NOT NULL,
  refilled_at timestamptz NOT NULL,
  CONSTRAINT rate_limit_buckets_pkey PRIMARY KEY (user_id, project_id)
);

-- Spends one token; raises 53V01 with the wait when the bucket is empty. The failed call
-- rolls back, so a refused request costs nothing.
CREATE FUNCTION internal.take_rate_token(p_user uuid, p_project uuid) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
DECLARE
  v_rate double precision;
  v_tokens double precision;
  v_retry_ms integer;
BEGIN
  INSERT INTO internal.rate_limit_buckets AS b (user_id, project_id, tokens, refilled_at)
  SELECT p_user, p_project, c.rate_limit_burst - 1, clock_timestamp() FROM internal.config c
  ON CONFLICT (user_id, project_id) DO UPDATE
     SET tokens = (SELECT least(c.rate_limit_burst,
                                b.tokens + extract(epoch FROM clock_timestamp() - b.refilled_at)
                                           * c.rate_limit_per_second) - 1
                     FROM internal.config c),
         refilled_at = clock_timestamp()
  RETURNING tokens INTO v_tokens;
  IF v_tokens < 0 THEN
    SELECT rate_limit_per_second INTO v_rate FROM internal.config;
    v_retry_ms := ceil(-v_tokens / v_rate * 1000);
    RAISE EXCEPTION 'rate limit exceeded on project %: retry after % ms', p_project, v_retry_ms
      USING ERRCODE = '53V01',
            DETAIL = jsonb_build_object('retry_after_ms', v_retry_ms)::text,
            HINT = format('retry after %s ms', v_retry_ms);
  END IF;
END
$$;

-- Checks the caller may read or write (p_access 'read' | 'write') the project.
CREATE FUNCTION internal.authorize(p_project uuid, p_access text) RETURNS internal.caller
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
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
    -- Membership and the project row lock in one statement (this is the hot path).
    SELECT m.role INTO v_member_role
      FROM public.project_members m JOIN public.projects p ON p.id = m.project_id
     WHERE m.project_id = p_project AND m.user_id = v_user
       FOR NO KEY UPDATE OF p;
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
