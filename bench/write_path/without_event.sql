-- The event: the project's counter, the file_events row, its payload and its NOTIFY.
CREATE OR REPLACE FUNCTION internal.append_event(p_project uuid, p_type text, p_payload jsonb,
                                                 p_actor uuid)
RETURNS bigint LANGUAGE plpgsql AS $$ BEGIN RETURN 0; END $$;
