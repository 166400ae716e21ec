-- The event's payload: the jsonb object describing the new version.
CREATE OR REPLACE FUNCTION internal.event_item(p_file public.project_files)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN RETURN '{}'; END $$;
