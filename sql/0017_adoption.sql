-- Adoption of legacy data (`velocity adopt`): each run is a batch with an id, and the batch
-- records every project it created, every file version it wrote and the span of events it
-- appended, so `velocity adopt --undo BATCH_ID` removes exactly that.
--
-- Imported versions go through internal.write_file, as every RPC's do (path and type checks,
-- sha256 computed here, one current row per path, file/directory clashes refused); only the
-- history's timestamps are then set from the legacy rows. Each call appends one bulk:apply
-- event naming the imported paths' current versions, so gateways, agents and snapshots see an
-- adoption like any bulk write. Adoption never writes to a path that already has a version:
-- it only adds paths, so undoing it never has to restore a row it changed.
--
-- Undo keeps the event log gap-free: it deletes the batch's events and moves the project's
-- last_event_seq back, which is only exact while nothing came after them. It is refused
-- (SQLSTATE 55V01) for the whole batch if any of its projects has an event after the batch's
-- last one (a user's write, a snapshot, another batch), a live preview session (an agent may
-- hold the batch's files), pruned events in the batch's span, or — for a project the batch
-- created — members other than its owner.
--
-- Service only: everything is in schema internal, with no grants.

CREATE TABLE internal.adoption_batches (
  id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
  status      text NOT NULL DEFAULT 'running',
  -- Where the data came from (URLs without passwords) and the options of the run.
  source      jsonb NOT NULL DEFAULT '{}',
  options     jsonb NOT NULL DEFAULT '{}',
  -- The run's report (totals, conflicts, rejected paths), set when it finishes.
  report      jsonb,
  created_at  timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  undone_at   timestamptz,
  CONSTRAINT adoption_batches_known_status CHECK (
    status IN ('running', 'done', 'failed', 'undone')),
  CONSTRAINT adoption_batches_undone_has_time CHECK (status <> 'undone' OR undone_at IS NOT NULL)
);

-- One row per project a batch changed: whether it created the project, the project's event
-- counters before its first write, and the span of seqs its bulk:apply events took.
CREATE TABLE internal.adoption_projects (
  batch_id              uuid NOT NULL REFERENCES internal.adoption_batches (id) ON DELETE CASCADE,
  project_id            uuid NOT NULL REFERENCES public.projects (id) ON DELETE CASCADE,
  created_project       boolean NOT NULL DEFAULT false,
  last_event_seq_before bigint NOT NULL,
  last_file_seq_before  bigint NOT NULL,
  first_seq             bigint,
  last_seq              bigint,
  CONSTRAINT adoption_projects_pkey PRIMARY KEY (batch_id, project_id),
  CONSTRAINT adoption_projects_seq_span CHECK (
    (first_seq IS NULL) = (last_seq IS NULL) AND first_seq <= last_seq)
);
CREATE INDEX adoption_projects_project_idx ON internal.adoption_projects (project_id);

-- Every file version a batch wrote.
CREATE TABLE internal.adoption_files (
  file_id    uuid PRIMARY KEY REFERENCES public.project_files (id) ON DELETE CASCADE,
  batch_id   uuid NOT NULL REFERENCES internal.adoption_batches (id) ON DELETE CASCADE,
  project_id uuid NOT NULL,
  -- The legacy row (or bucket object) the version came from, for tracing.
  source_ref text NOT NULL
);
CREATE INDEX adoption_files_batch_idx ON internal.adoption_files (batch_id, project_id);

-- Objects a batch copied into the object store (binaries whose bytes were only in the legacy
-- bucket); undo deletes those no remaining file version refers to.
CREATE TABLE internal.adoption_objects (
  batch_id    uuid NOT NULL REFERENCES internal.adoption_batches (id) ON DELETE CASCADE,
  storage_key text NOT NULL,
  CONSTRAINT adoption_objects_pkey PRIMARY KEY (batch_id, storage_key)
);

-- No role but the owner reads these; RLS with no policy keeps it so where default
-- privileges would grant new tables to API roles.
ALTER TABLE internal.adoption_batches ENABLE ROW LEVEL SECURITY;
ALTER TABLE internal.adoption_projects ENABLE ROW LEVEL SECURITY;
ALTER TABLE internal.adoption_files ENABLE ROW LEVEL SECURITY;
ALTER TABLE internal.adoption_objects ENABLE ROW LEVEL SECURITY;

-- The batch, locked for the caller, if it may still import: 22023 otherwise, P0002 if missing.
CREATE FUNCTION internal.running_adoption_batch(p_batch uuid) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, internal AS $$
DECLARE
  v_status text;
BEGIN
  SELECT status INTO v_status FROM internal.adoption_batches WHERE id = p_batch FOR SHARE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'adoption batch % not found', p_batch USING ERRCODE = 'P0002';
  END IF;
  IF v_status <> 'running' THEN
    RAISE EXCEPTION 'adoption batch % is %, not running', p_batch, v_status
      USING ERRCODE = '22023';
  END IF;
END
$$;

-- adopt_project(p_batch, p_project, p_name, p_owner): creates a project with the legacy id,
-- owned by p_owner (a user profile; the owner membership trigger adds the member row), and
-- records it as the batch's. 23505 if the project already exists.
CREATE FUNCTION internal.adopt_project(p_batch uuid, p_project uuid, p_name text, p_owner uuid)
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
  PERFORM internal.running_adoption_batch(p_batch);
  INSERT INTO public.projects (id, name, owner_id) VALUES (p_project, p_name, p_owner);
  INSERT INTO internal.adoption_projects (batch_id, project_id, created_project,
                                          last_event_seq_before, last_file_seq_before)
  VALUES (p_batch, p_project, true, 0, 0);
END
$$;

-- adopt_files(p_batch, p_project, p_files) → the seq of the bulk:apply event it appended.
--
-- p_files: a JSON array of paths, each {"file_path", "versions": [...]} with versions oldest
-- first, each {"content"} (text) or {"storage_key", "content_hash", "size_bytes"} (binary),
-- plus "file_type", "author" (a user profile id), "created_at", "updated_at", "source_ref".
-- Paths are created in array order; each version is written by internal.write_file as the
-- path's next version, authored by "author", then given the legacy timestamps.
--
-- Errors: those of write_file (22V01, 22V02, 22V03, 23V01, naming the item as bulk writes
-- do); 23V02 when a path already has versions (plan again: adoption only adds paths); 22023
-- for a batch that is not running or a version that writes nothing (a plan that repeats
-- content); P0002 for a missing batch or project.
CREATE FUNCTION internal.adopt_files(p_batch uuid, p_project uuid, p_files jsonb)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v_project public.projects;
  v_path jsonb;
  v_version jsonb;
  v_index integer := -1;
  v_change internal.file_change;
  v_current public.project_files;
  v_items jsonb[] := '{}';
  v_existing integer;
  v_seq bigint;
  v_state text;
  v_message text;
  v_detail text;
BEGIN
  PERFORM internal.running_adoption_batch(p_batch);
  SELECT * INTO v_project FROM public.projects WHERE id = p_project FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'project % not found', p_project USING ERRCODE = 'P0002';
  END IF;
  INSERT INTO internal.adoption_projects (batch_id, project_id, last_event_seq_before,
                                          last_file_seq_before)
  VALUES (p_batch, p_project, v_project.last_event_seq, v_project.last_file_seq)
  ON CONFLICT (batch_id, project_id) DO NOTHING;

  BEGIN
    FOR v_path IN SELECT item FROM jsonb_array_elements(p_files) AS items (item) LOOP
      v_index := v_index + 1;
      v_current := NULL;
      SELECT max(version) INTO v_existing FROM public.project_files
       WHERE project_id = p_project AND file_path = v_path ->> 'file_path';
      IF v_existing IS NOT NULL THEN
        RAISE EXCEPTION '% already has versions in the target; adoption only adds paths',
          quote_literal(v_path ->> 'file_path')
          USING ERRCODE = '23V02',
                DETAIL = jsonb_build_object('path', v_path ->> 'file_path', 'expected_version', 0,
                                            'current_version', v_existing)::text;
      END IF;
      FOR v_version IN SELECT item FROM jsonb_array_elements(v_path -> 'versions') AS vs (item)
      LOOP
        v_change := internal.write_file(
          p_project, v_path ->> 'file_path', v_version ->> 'content', v_version ->> 'file_type',
          NULL, (v_version ->> 'author')::uuid, v_version ->> 'storage_key',
          v_version ->> 'content_hash', (v_version ->> 'size_bytes')::bigint);
        IF NOT v_change.changed THEN
          RAISE EXCEPTION 'a version of % repeats the one before it',
            quote_literal(v_path ->> 'file_path') USING ERRCODE = '22023';
        END IF;
        UPDATE public.project_files
           SET created_at = coalesce((v_version ->> 'created_at')::timestamptz, created_at),
               updated_at = coalesce((v_version ->> 'updated_at')::timestamptz, updated_at)
         WHERE id = (v_change.file).id
        RETURNING * INTO v_current;
        INSERT INTO internal.adoption_files (file_id, batch_id, project_id, source_ref)
        VALUES (v_current.id, p_batch, p_project, coalesce(v_version ->> 'source_ref', ''));
      END LOOP;
      IF v_current.id IS NOT NULL THEN
        v_items := v_items || internal.event_item(v_current);
      END IF;
    END LOOP;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                            v_detail = PG_EXCEPTION_DETAIL;
    RAISE EXCEPTION USING ERRCODE = v_state, MESSAGE = format('files[%s]: %s', v_index, v_message),
      DETAIL = coalesce(v_detail, '');
  END;

  IF cardinality(v_items) = 0 THEN
    RETURN NULL;
  END IF;
  v_seq := internal.append_event(p_project, 'bulk:apply',
    jsonb_build_object('files', to_jsonb(v_items), 'count', cardinality(v_items)), NULL);
  UPDATE internal.adoption_projects
     SET first_seq = coalesce(first_seq, v_seq), last_seq = v_seq
   WHERE batch_id = p_batch AND project_id = p_project;
  RETURN v_seq;
END
$$;

-- Why a batch's project cannot be undone exactly, or NULL when it can. The caller holds the
-- project row lock.
CREATE FUNCTION internal.adoption_undo_problem(p_record internal.adoption_projects)
RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v_project public.projects;
  v_count bigint;
BEGIN
  SELECT * INTO v_project FROM public.projects WHERE id = p_record.project_id;
  IF p_record.last_seq IS NOT NULL AND v_project.last_event_seq > p_record.last_seq THEN
    RETURN format('%s event(s) were written after the batch (seq %s to %s)',
                  v_project.last_event_seq - p_record.last_seq, p_record.last_seq + 1,
                  v_project.last_event_seq);
  END IF;
  IF p_record.last_seq IS NULL AND v_project.last_event_seq > p_record.last_event_seq_before
  THEN
    RETURN format('%s event(s) were written after the batch',
                  v_project.last_event_seq - p_record.last_event_seq_before);
  END IF;
  IF p_record.first_seq IS NOT NULL AND v_project.pruned_through_seq >= p_record.first_seq THEN
    RETURN format('events up to seq %s were pruned', v_project.pruned_through_seq);
  END IF;
  SELECT count(*) INTO v_count FROM public.preview_sessions
   WHERE project_id = p_record.project_id AND status IN ('creating', 'active');
  IF v_count > 0 THEN
    RETURN format('%s preview session(s) are live and may hold its files', v_count);
  END IF;
  IF p_record.created_project THEN
    SELECT count(*) INTO v_count FROM public.project_members
     WHERE project_id = p_record.project_id AND user_id <> v_project.owner_id;
    IF v_count > 0 THEN
      RETURN format('%s member(s) were added to the project it created', v_count);
    END IF;
  END IF;
  RETURN NULL;
END
$$;

-- undo_adoption(p_batch) → one row per project the batch changed: what was removed, and the
-- storage keys the batch copied that no file version refers to any more (the caller deletes
-- those objects after commit). All or nothing: 55V01, DETAIL {"batch_id", "blocked":
-- [{"project_id", "reason"}]}, when any project cannot be undone exactly; 22023 for a batch
-- already undone; P0002 for an unknown batch.
CREATE FUNCTION internal.undo_adoption(p_batch uuid)
RETURNS TABLE (project_id uuid, files_removed bigint, events_removed bigint,
               project_removed boolean, orphaned_keys text[])
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
  v_status text;
  v_record internal.adoption_projects;
  v_problem text;
  v_blocked jsonb := '[]';
  v_files bigint;
  v_events bigint;
  v_keys text[];
BEGIN
  SELECT status INTO v_status FROM internal.adoption_batches WHERE id = p_batch FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'adoption batch % not found', p_batch USING ERRCODE = 'P0002';
  END IF;
  IF v_status = 'undone' THEN
    RAISE EXCEPTION 'adoption batch % was already undone', p_batch USING ERRCODE = '22023';
  END IF;
  -- Lock the projects in a fixed order, then check them all before changing any.
  PERFORM FROM public.projects p
   WHERE p.id IN (SELECT a.project_id FROM internal.adoption_projects a WHERE a.batch_id = p_batch)
   ORDER BY p.id FOR UPDATE;
  FOR v_record IN SELECT * FROM internal.adoption_projects a WHERE a.batch_id = p_batch
                   ORDER BY a.project_id LOOP
    v_problem := internal.adoption_undo_problem(v_record);
    IF v_problem IS NOT NULL THEN
      v_blocked := v_blocked || jsonb_build_object('project_id', v_record.project_id,
                                                   'reason', v_problem);
    END IF;
  END LOOP;
  IF jsonb_array_length(v_blocked) > 0 THEN
    RAISE EXCEPTION 'adoption batch % cannot be undone exactly: %', p_batch,
      (SELECT string_agg(format('project %s: %s', b ->> 'project_id', b ->> 'reason'), '; ')
         FROM jsonb_array_elements(v_blocked) AS blocked (b))
      USING ERRCODE = '55V01',
            DETAIL = jsonb_build_object('batch_id', p_batch, 'blocked', v_blocked)::text;
  END IF;

  FOR v_record IN SELECT * FROM internal.adoption_projects a WHERE a.batch_id = p_batch
                   ORDER BY a.project_id LOOP
    DELETE FROM public.file_events e
     WHERE e.project_id = v_record.project_id
       AND e.seq BETWEEN v_record.first_seq AND v_record.last_seq;
    GET DIAGNOSTICS v_events = ROW_COUNT;
    DELETE FROM public.project_files f
     WHERE f.id IN (SELECT a.file_id FROM internal.adoption_files a
                     WHERE a.batch_id = p_batch AND a.project_id = v_record.project_id);
    GET DIAGNOSTICS v_files = ROW_COUNT;
    IF v_record.created_project THEN
      DELETE FROM public.projects p WHERE p.id = v_record.project_id;
    ELSE
      UPDATE public.projects p
         SET last_event_seq = v_record.last_event_seq_before,
             last_file_seq = v_record.last_file_seq_before
       WHERE p.id = v_record.project_id;
    END IF;
    project_id := v_record.project_id;
    files_removed := v_files;
    events_removed := v_events;
    project_removed := v_record.created_project;
    orphaned_keys := '{}';
    RETURN NEXT;
  END LOOP;

  SELECT coalesce(array_agg(o.storage_key ORDER BY o.storage_key), '{}') INTO v_keys
    FROM internal.adoption_objects o
   WHERE o.batch_id = p_batch
     AND NOT EXISTS (SELECT FROM public.project_files f WHERE f.storage_key = o.storage_key);
  UPDATE internal.adoption_batches SET status = 'undone', undone_at = now() WHERE id = p_batch;
  IF cardinality(v_keys) > 0 THEN
    project_id := NULL;
    files_removed := 0;
    events_removed := 0;
    project_removed := false;
    orphaned_keys := v_keys;
    RETURN NEXT;
  END IF;
END
$$;
