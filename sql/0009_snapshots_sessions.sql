-- Snapshots (zips of a project's current files with their watermark) and preview sessions
-- (the real-time preview plan's columns plus runtime, snapshot, token, heartbeat and the
-- agent's applied seq). Both are written by the service only; members read them.

CREATE TABLE public.project_snapshots (
  id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  project_id   uuid NOT NULL REFERENCES public.projects (id) ON DELETE CASCADE,
  -- The project's last event seq when the files were read: the agent replays after it.
  watermark    bigint NOT NULL,
  -- The project's last file-changing seq: equal on a later build means the files are unchanged.
  file_seq     bigint NOT NULL,
  sha256       text NOT NULL,
  size_bytes   bigint NOT NULL,
  file_count   integer NOT NULL,
  storage_key  text NOT NULL,
  manifest_key text NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  last_used_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT project_snapshots_sha256_hex CHECK (sha256 ~ '^[0-9a-f]{64}$'),
  CONSTRAINT project_snapshots_sizes_not_negative CHECK (size_bytes >= 0 AND file_count >= 0)
);
CREATE INDEX project_snapshots_project_idx ON public.project_snapshots (project_id, file_seq DESC);

CREATE TABLE public.preview_sessions (
  id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id          uuid NOT NULL REFERENCES public.user_profiles (id) ON DELETE CASCADE,
  project_id       uuid NOT NULL REFERENCES public.projects (id) ON DELETE CASCADE,
  session_id       text,
  runtime          text NOT NULL DEFAULT 'process',
  status           text NOT NULL DEFAULT 'creating',
  container_id     text,
  container_url    text,
  snapshot_id      uuid REFERENCES public.project_snapshots (id) ON DELETE SET NULL,
  token_jti        text,
  token_expires_at timestamptz,
  flow_run_id      uuid,
  error_message    text,
  applied_seq      bigint,
  lag_ms           integer,
  agent_status     jsonb,
  heartbeat_at     timestamptz,
  expires_at       timestamptz,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now(),
  ended_at         timestamptz,
  CONSTRAINT preview_sessions_status_check CHECK (status IN ('creating', 'active', 'ended', 'error')),
  CONSTRAINT preview_sessions_ended_has_time CHECK (status <> 'ended' OR ended_at IS NOT NULL)
);
-- Starting a session for a user who has a live one on the project returns that one.
CREATE UNIQUE INDEX preview_sessions_one_live_per_user_project
  ON public.preview_sessions (user_id, project_id) WHERE status IN ('creating', 'active');
CREATE INDEX preview_sessions_project_idx ON public.preview_sessions (project_id);
CREATE INDEX preview_sessions_status_idx ON public.preview_sessions (status);
CREATE INDEX preview_sessions_container_idx ON public.preview_sessions (container_id);

ALTER TABLE public.project_snapshots ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.preview_sessions ENABLE ROW LEVEL SECURITY;
CREATE POLICY "members read their projects' snapshots" ON public.project_snapshots
  FOR SELECT TO authenticated USING (project_id IN (SELECT internal.my_project_ids()));
CREATE POLICY "members read their projects' sessions" ON public.preview_sessions
  FOR SELECT TO authenticated
  USING (user_id = auth.uid() OR project_id IN (SELECT internal.my_project_ids()));
REVOKE ALL ON public.project_snapshots, public.preview_sessions FROM anon, authenticated;
GRANT SELECT ON public.project_snapshots, public.preview_sessions TO authenticated;
GRANT ALL ON public.project_snapshots, public.preview_sessions TO service_role;
