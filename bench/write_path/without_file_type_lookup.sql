-- The file type: the extension looked up in internal.file_types.
CREATE OR REPLACE FUNCTION internal.resolve_file_type(p_path text, p_file_type text)
RETURNS text LANGUAGE plpgsql STABLE AS $$ BEGIN RETURN coalesce(p_file_type, 'text'); END $$;
