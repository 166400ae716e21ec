-- Who may call which function. PostgreSQL grants EXECUTE to PUBLIC by default (and Supabase
-- to anon): revoke that, then grant the RPCs to signed-in users and the service.
-- The RPCs check membership themselves; this only keeps anonymous callers out.

REVOKE EXECUTE ON FUNCTION
  public.upsert_project_file(uuid, text, text, text, integer),
  public.upsert_project_binary_file(uuid, text, text, text, bigint, text, integer),
  public.delete_project_file(uuid, text, integer),
  public.list_current_files(uuid),
  public.file_history(uuid, text),
  public.restore_file_version(uuid, text, integer, integer),
  public.events_since(uuid, bigint, integer),
  public.bulk_upsert_project_files(uuid, jsonb),
  public.bulk_delete_project_files(uuid, text[]),
  public.is_feature_enabled(text, uuid)
FROM PUBLIC, anon;

GRANT EXECUTE ON FUNCTION
  public.upsert_project_file(uuid, text, text, text, integer),
  public.upsert_project_binary_file(uuid, text, text, text, bigint, text, integer),
  public.delete_project_file(uuid, text, integer),
  public.list_current_files(uuid),
  public.file_history(uuid, text),
  public.restore_file_version(uuid, text, integer, integer),
  public.events_since(uuid, bigint, integer),
  public.bulk_upsert_project_files(uuid, jsonb),
  public.bulk_delete_project_files(uuid, text[]),
  public.is_feature_enabled(text, uuid)
TO authenticated, service_role;
