-- Webhook replay protection shared by every API replica: the signature of each accepted
-- delivery is kept until its timestamp leaves the 5-minute acceptance window, and a second
-- delivery with the same signature is refused. Service only (internal schema, no grants).

CREATE TABLE internal.webhook_deliveries (
  signature   text PRIMARY KEY,
  expires_at  timestamptz NOT NULL,
  received_at timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT webhook_deliveries_signature_length CHECK (length(signature) <= 200)
);
CREATE INDEX webhook_deliveries_expires_idx ON internal.webhook_deliveries (expires_at);

-- record_webhook_delivery(p_signature, p_expires_at) → true the first time a signature is
-- seen, false for a replay. Forgets expired signatures on the way: a delivery that old is
-- refused by its timestamp before it gets here, so an expired row can never be needed.
CREATE FUNCTION internal.record_webhook_delivery(p_signature text, p_expires_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, internal AS $$
BEGIN
  DELETE FROM internal.webhook_deliveries WHERE expires_at < now();
  INSERT INTO internal.webhook_deliveries (signature, expires_at)
  VALUES (p_signature, p_expires_at)
  ON CONFLICT (signature) DO NOTHING;
  RETURN FOUND;
END
$$;

-- forget_webhook_delivery(p_signature): when no flow run could be started for a delivery,
-- its sender may retry the same delivery.
CREATE FUNCTION internal.forget_webhook_delivery(p_signature text) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, internal AS $$
  DELETE FROM internal.webhook_deliveries WHERE signature = p_signature
$$;
