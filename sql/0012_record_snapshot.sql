-- Recording a built snapshot: the project_snapshots row and its snapshot:ready event, in one
-- transaction under the project lock, so the event's seq orders it among the file events.
-- Service only (internal schema). The payload names the snapshot, never a signed URL: URLs
-- are short-lived secrets minted per session and have no place in a replayable log.

CREATE FUNCTION internal.record_snapshot(
  p_project uuid, p_snapshot uuid, p_watermark bigint, p_file_seq bigint, p_sha256 text,
  p_size bigint, p_file_count integer, p_storage_key text, p_manifest_key text
) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
BEGIN
  PERFORM FROM public.projects WHERE id = p_project FOR NO KEY UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION 'project % not found', p_project USING ERRCODE = 'P0002';
  END IF;
  INSERT INTO public.project_snapshots (id, project_id, watermark, file_seq, sha256, size_bytes,
                                        file_count, storage_key, manifest_key)
  VALUES (p_snapshot, p_project, p_watermark, p_file_seq, p_sha256, p_size, p_file_count,
          p_storage_key, p_manifest_key);
  RETURN internal.append_event(p_project, 'snapshot:ready', jsonb_build_object(
    'snapshot_id', p_snapshot, 'watermark', p_watermark, 'sha256', p_sha256,
    'size', p_size, 'files', p_file_count), NULL);
END
$$;
