-- Ending a session revokes its container token at once, in every gateway process: a trigger
-- NOTIFYs channel velocity_session_revoked with the session id whenever a session leaves
-- the live states, whichever code path ended it. Gateways close that session's channels.

CREATE FUNCTION internal.notify_session_revoked() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog AS $$
BEGIN
  PERFORM pg_notify('velocity_session_revoked', NEW.id::text);
  RETURN NULL;
END
$$;

CREATE TRIGGER preview_sessions_revoke_on_end
  AFTER UPDATE OF status, token_jti ON public.preview_sessions
  FOR EACH ROW
  WHEN (NEW.status NOT IN ('creating', 'active')
        OR NEW.token_jti IS DISTINCT FROM OLD.token_jti)
  EXECUTE FUNCTION internal.notify_session_revoked();

-- Agents report over the gateway, which records their state in batches.
CREATE FUNCTION internal.record_agent_status(
  p_sessions uuid[], p_applied_seqs bigint[], p_lag_ms integer[], p_statuses jsonb[]
) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, public AS $$
  UPDATE public.preview_sessions s
     SET heartbeat_at = now(), applied_seq = r.applied_seq, lag_ms = r.lag_ms,
         agent_status = r.status, updated_at = now()
    FROM unnest(p_sessions, p_applied_seqs, p_lag_ms, p_statuses)
         AS r (session_id, applied_seq, lag_ms, status)
   WHERE s.id = r.session_id AND s.status IN ('creating', 'active')
$$;
