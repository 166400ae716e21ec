-- Feature flags as in the seeds (on/off, percentage, target users, environment), a record
-- of every rollout step, and is_feature_enabled(flag_key, user_id).
--
-- Bucketing: a user falls in bucket sha256(flag_key:user_id) mod 100 and has the flag when
-- the bucket is below rollout_percentage. A user's answer is stable, and raising the
-- percentage only adds users. Target users always have an enabled flag.

CREATE TABLE public.feature_flags (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  flag_key           text NOT NULL,
  description        text,
  is_enabled         boolean NOT NULL DEFAULT false,
  rollout_percentage integer NOT NULL DEFAULT 0,
  environment        text NOT NULL DEFAULT 'production',
  target_user_ids    uuid[] NOT NULL DEFAULT '{}',
  metadata           jsonb NOT NULL DEFAULT '{}',
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT feature_flags_flag_key_key UNIQUE (flag_key),
  CONSTRAINT feature_flags_percentage_range CHECK (rollout_percentage BETWEEN 0 AND 100)
);

CREATE TABLE public.feature_flag_rollouts (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  flag_key    text NOT NULL REFERENCES public.feature_flags (flag_key) ON DELETE CASCADE,
  flow_run_id uuid,
  step        integer NOT NULL,
  percentage  integer NOT NULL,
  action      text NOT NULL,
  gates       jsonb NOT NULL DEFAULT '{}',
  note        text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT feature_flag_rollouts_known_action CHECK (
    action IN ('start', 'raise', 'hold', 'rollback', 'complete'))
);
CREATE INDEX feature_flag_rollouts_flag_idx ON public.feature_flag_rollouts (flag_key, created_at);

INSERT INTO public.feature_flags (flag_key, description) VALUES
  ('FSYNC_USE_RPC', 'Use RPC functions for file operations'),
  ('FSYNC_SERVER_BROADCASTS', 'Enable server-side realtime broadcasts'),
  ('FSYNC_SNAPSHOT_HYDRATION', 'Use snapshot-based container hydration'),
  ('FSYNC_BULK_GENERATION', 'Enable bulk file generation'),
  ('FSYNC_KEEP_CLIENT_BROADCAST', 'Relay client-authored broadcasts to other subscribers');

CREATE FUNCTION internal.flag_bucket(p_flag_key text, p_user uuid) RETURNS integer
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog AS $$
  SELECT (('x' || left(encode(sha256(convert_to(p_flag_key || ':' || p_user::text, 'UTF8')),
                              'hex'), 8))::bit(32)::bigint % 100)::integer
$$;

CREATE FUNCTION public.is_feature_enabled(flag_key text, user_id uuid DEFAULT NULL)
RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT coalesce((
    SELECT f.is_enabled
           AND f.environment = (SELECT c.environment FROM internal.config c)
           AND (f.rollout_percentage = 100
                OR is_feature_enabled.user_id = ANY (f.target_user_ids)
                OR (is_feature_enabled.user_id IS NOT NULL
                    AND internal.flag_bucket(f.flag_key, is_feature_enabled.user_id)
                        < f.rollout_percentage))
      FROM public.feature_flags f
     WHERE f.flag_key = is_feature_enabled.flag_key), false)
$$;

ALTER TABLE public.feature_flags ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.feature_flag_rollouts ENABLE ROW LEVEL SECURITY;
CREATE POLICY "signed-in users read flags" ON public.feature_flags
  FOR SELECT TO authenticated USING (true);
REVOKE ALL ON public.feature_flags, public.feature_flag_rollouts FROM anon, authenticated;
GRANT SELECT ON public.feature_flags TO authenticated;
GRANT ALL ON public.feature_flags, public.feature_flag_rollouts TO service_role;
