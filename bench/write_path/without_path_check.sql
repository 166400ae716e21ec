-- The path rules (internal.path_problem): length, depth, segments, characters.
CREATE OR REPLACE FUNCTION internal.check_path(p_path text)
RETURNS void LANGUAGE plpgsql IMMUTABLE AS $$ BEGIN END $$;
