-- The two foreign keys an upsert checks: the version's project and its event's project.
ALTER TABLE public.project_files DROP CONSTRAINT project_files_project_id_fkey;
ALTER TABLE public.file_events DROP CONSTRAINT file_events_project_id_fkey;
