-- Projects, their members and user profiles, plus the internal schema that holds what only
-- the write functions may touch: service-wide limits and the known file types.
--
-- Roles on a project: owner and editor write, viewer reads. The owner is a member row too,
-- added by a trigger when the project is created.

CREATE SCHEMA internal;
REVOKE ALL ON SCHEMA internal FROM PUBLIC;
-- Row-level security policies call internal.my_project_ids(); nothing else is reachable.
GRANT USAGE ON SCHEMA internal TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES IN SCHEMA internal REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC;

-- Service-wide limits read by the write functions. Exactly one row; change it with UPDATE.
CREATE TABLE internal.config (
  singleton             boolean PRIMARY KEY DEFAULT true,
  max_content_bytes     integer NOT NULL DEFAULT 5242880,
  max_bulk_files        integer NOT NULL DEFAULT 5000,
  rate_limit_burst      integer NOT NULL DEFAULT 100,
  rate_limit_per_second double precision NOT NULL DEFAULT 20,
  environment           text    NOT NULL DEFAULT 'production',
  CONSTRAINT config_is_singleton CHECK (singleton),
  CONSTRAINT config_limits_positive CHECK (
    max_content_bytes > 0 AND max_bulk_files > 0
    AND rate_limit_burst > 0 AND rate_limit_per_second > 0)
);
INSERT INTO internal.config DEFAULT VALUES;

-- Known file types and the extensions that imply them when a writer names none.
CREATE TABLE internal.file_types (
  name       text PRIMARY KEY,
  extensions text[] NOT NULL DEFAULT '{}'
);
INSERT INTO internal.file_types (name, extensions) VALUES
  ('typescript', '{ts,tsx,mts,cts}'),
  ('javascript', '{js,jsx,mjs,cjs}'),
  ('json',       '{json}'),
  ('markdown',   '{md,mdx}'),
  ('html',       '{html,htm}'),
  ('css',        '{css,scss,sass,less}'),
  ('sql',        '{sql}'),
  ('yaml',       '{yml,yaml}'),
  ('toml',       '{toml}'),
  ('xml',        '{xml}'),
  ('svg',        '{svg}'),
  ('python',     '{py}'),
  ('shell',      '{sh,bash}'),
  ('text',       '{txt}'),
  ('image',      '{png,jpg,jpeg,gif,webp,ico,avif}'),
  ('font',       '{woff,woff2,ttf,otf}'),
  ('binary',     '{}');

CREATE TABLE public.user_profiles (
  id           uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
  email        text,
  display_name text,
  created_at   timestamptz NOT NULL DEFAULT now(),
  updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE public.projects (
  id                 uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  name               text NOT NULL,
  owner_id           uuid NOT NULL REFERENCES public.user_profiles (id),
  template           text,
  -- Event sequence state, advanced only by internal.append_event under this row's lock.
  last_event_seq     bigint NOT NULL DEFAULT 0,
  last_file_seq      bigint NOT NULL DEFAULT 0,
  pruned_through_seq bigint NOT NULL DEFAULT 0,
  created_at         timestamptz NOT NULL DEFAULT now(),
  updated_at         timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT projects_name_length CHECK (length(btrim(name)) BETWEEN 1 AND 200)
);
CREATE INDEX projects_owner_idx ON public.projects (owner_id);

CREATE TABLE public.project_members (
  project_id uuid NOT NULL REFERENCES public.projects (id) ON DELETE CASCADE,
  user_id    uuid NOT NULL REFERENCES public.user_profiles (id) ON DELETE CASCADE,
  role       text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT project_members_pkey PRIMARY KEY (project_id, user_id),
  CONSTRAINT project_members_known_role CHECK (role IN ('owner', 'editor', 'viewer'))
);
CREATE INDEX project_members_user_idx ON public.project_members (user_id);

-- The creator of a project is its first owner.
CREATE FUNCTION internal.add_owner_membership() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  INSERT INTO public.project_members (project_id, user_id, role)
  VALUES (NEW.id, NEW.owner_id, 'owner')
  ON CONFLICT (project_id, user_id) DO UPDATE SET role = 'owner';
  RETURN NULL;
END
$$;
CREATE TRIGGER projects_add_owner AFTER INSERT ON public.projects
  FOR EACH ROW EXECUTE FUNCTION internal.add_owner_membership();

-- The projects the calling user belongs to. SECURITY DEFINER so policies on
-- project_members can use it without recursing into their own policy.
CREATE FUNCTION internal.my_project_ids() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT project_id FROM public.project_members WHERE user_id = auth.uid()
$$;
GRANT EXECUTE ON FUNCTION internal.my_project_ids() TO anon, authenticated, service_role;

CREATE FUNCTION internal.my_owned_project_ids() RETURNS SETOF uuid
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
  SELECT project_id FROM public.project_members WHERE user_id = auth.uid() AND role = 'owner'
$$;
GRANT EXECUTE ON FUNCTION internal.my_owned_project_ids() TO anon, authenticated, service_role;

ALTER TABLE public.user_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.project_members ENABLE ROW LEVEL SECURITY;

CREATE POLICY "users read their own profile and their co-members'" ON public.user_profiles
  FOR SELECT TO authenticated
  USING (id = auth.uid() OR id IN (
    SELECT m.user_id FROM public.project_members m
    WHERE m.project_id IN (SELECT internal.my_project_ids())));
CREATE POLICY "users update their own profile" ON public.user_profiles
  FOR UPDATE TO authenticated USING (id = auth.uid()) WITH CHECK (id = auth.uid());

CREATE POLICY "members read their projects" ON public.projects
  FOR SELECT TO authenticated USING (id IN (SELECT internal.my_project_ids()));
CREATE POLICY "users create projects they own" ON public.projects
  FOR INSERT TO authenticated WITH CHECK (owner_id = auth.uid());
CREATE POLICY "owners update their projects" ON public.projects
  FOR UPDATE TO authenticated USING (id IN (SELECT internal.my_owned_project_ids()));
CREATE POLICY "owners delete their projects" ON public.projects
  FOR DELETE TO authenticated USING (id IN (SELECT internal.my_owned_project_ids()));

CREATE POLICY "members read their projects' members" ON public.project_members
  FOR SELECT TO authenticated USING (project_id IN (SELECT internal.my_project_ids()));
CREATE POLICY "owners add members" ON public.project_members
  FOR INSERT TO authenticated WITH CHECK (project_id IN (SELECT internal.my_owned_project_ids()));
CREATE POLICY "owners change members" ON public.project_members
  FOR UPDATE TO authenticated USING (project_id IN (SELECT internal.my_owned_project_ids()));
CREATE POLICY "owners remove members" ON public.project_members
  FOR DELETE TO authenticated USING (project_id IN (SELECT internal.my_owned_project_ids()));

REVOKE ALL ON public.user_profiles, public.projects, public.project_members FROM anon, authenticated;
GRANT SELECT ON public.user_profiles, public.projects, public.project_members TO authenticated;
GRANT UPDATE (display_name, updated_at) ON public.user_profiles TO authenticated;
GRANT INSERT (id, name, owner_id, template) ON public.projects TO authenticated;
GRANT UPDATE (name, template, updated_at) ON public.projects TO authenticated;
GRANT DELETE ON public.projects TO authenticated;
GRANT INSERT, UPDATE (role), DELETE ON public.project_members TO authenticated;
GRANT ALL ON public.user_profiles, public.projects, public.project_members TO service_role;
