-- The event log: one row per change, in a per-project sequence that is gap-free and
-- strictly increasing. seq is assigned by internal.append_event under the project row's
-- lock, held until commit, so commit order equals seq order.
--
-- Payloads name the file version (file_id) instead of copying content: readers join it back
-- (public.events_since). An insert trigger NOTIFYs channel velocity_file_events with only
-- 'project_id:seq' — never content, since NOTIFY payloads are capped at 8,000 bytes.

CREATE TABLE public.file_events (
  project_id uuid NOT NULL REFERENCES public.projects (id) ON DELETE CASCADE,
  seq        bigint NOT NULL,
  type       text NOT NULL,
  payload    jsonb NOT NULL,
  actor      uuid,
  created_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT file_events_pkey PRIMARY KEY (project_id, seq),
  CONSTRAINT file_events_known_type CHECK (
    type IN ('file:update', 'file:delete', 'bulk:apply', 'snapshot:ready'))
);
CREATE INDEX file_events_created_at_brin ON public.file_events USING brin (created_at);

ALTER TABLE public.file_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY "members read their projects' events" ON public.file_events
  FOR SELECT TO authenticated USING (project_id IN (SELECT internal.my_project_ids()));
REVOKE ALL ON public.file_events FROM anon, authenticated;
GRANT SELECT ON public.file_events TO authenticated, service_role;

-- Appends one event and returns its seq. The caller must hold the project row lock
-- (internal.authorize takes it for writes); the UPDATE here would take it otherwise.
CREATE FUNCTION internal.append_event(
  p_project uuid, p_type text, p_payload jsonb, p_actor uuid
) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
DECLARE
  v_seq bigint;
BEGIN
  WITH advanced AS (
    UPDATE public.projects
       SET last_event_seq = last_event_seq + 1,
           last_file_seq = CASE WHEN p_type = 'snapshot:ready' THEN last_file_seq
                                ELSE last_event_seq + 1 END
     WHERE id = p_project
    RETURNING last_event_seq
  )
  INSERT INTO public.file_events (project_id, seq, type, payload, actor)
  SELECT p_project, last_event_seq, p_type,
         p_payload || jsonb_build_object('seq', last_event_seq, 'sender', p_actor,
                                         'timestamp', to_jsonb(clock_timestamp())),
         p_actor
    FROM advanced
  RETURNING seq INTO v_seq;
  IF v_seq IS NULL THEN
    RAISE EXCEPTION 'project % not found', p_project USING ERRCODE = 'P0002';
  END IF;
  RETURN v_seq;
END
$$;

CREATE FUNCTION internal.notify_file_event() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
  PERFORM pg_notify('velocity_file_events', NEW.project_id::text || ':' || NEW.seq::text);
  RETURN NULL;
END
$$;
CREATE TRIGGER file_events_notify AFTER INSERT ON public.file_events
  FOR EACH ROW EXECUTE FUNCTION internal.notify_file_event();

-- An event as consumers see it: the stored payload with each file's content joined back.
-- plpgsql rather than SQL so its plans are cached across calls (it runs on the live path).
CREATE FUNCTION internal.materialize_event(p_type text, p_payload jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, public AS $$
BEGIN
  IF p_type = 'file:update' THEN
    RETURN p_payload || jsonb_build_object('content',
      (SELECT f.content FROM public.project_files f WHERE f.id = (p_payload ->> 'file_id')::uuid));
  ELSIF p_type = 'bulk:apply' THEN
    RETURN jsonb_set(p_payload, '{files}', (
      SELECT coalesce(jsonb_agg(
               CASE WHEN item ->> 'action' = 'update'
                    THEN item || jsonb_build_object('content', f.content)
                    ELSE item END
               ORDER BY position), '[]'::jsonb)
        FROM jsonb_array_elements(p_payload -> 'files') WITH ORDINALITY AS items (item, position)
        LEFT JOIN public.project_files f ON f.id = (item ->> 'file_id')::uuid));
  END IF;
  RETURN p_payload;
END
$$;
