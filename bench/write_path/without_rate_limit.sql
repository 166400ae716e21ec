-- The token bucket: one upsert of the caller's row in internal.rate_limit_buckets.
CREATE OR REPLACE FUNCTION internal.take_rate_token(p_user uuid, p_project uuid)
RETURNS void LANGUAGE plpgsql AS $$ BEGIN END $$;
