-- The five foreign keys an upsert checks: four on the new version, one on its event.
ALTER TABLE public.project_files
  DROP CONSTRAINT project_files_project_id_fkey,
  DROP CONSTRAINT project_files_parent_version_id_fkey,
  DROP CONSTRAINT project_files_created_by_fkey,
  DROP CONSTRAINT project_files_last_modified_by_fkey;
ALTER TABLE public.file_events DROP CONSTRAINT file_events_project_id_fkey;
