-- Row-level security on the last four tables without it, so every table has it on.
--
-- No role but their owner reads or writes these: users reach them only through functions
-- that run as the owner (who is not subject to the tables' own security), and no grant opens
-- them. With security on and no policy, a grant made by mistake still shows no row.
ALTER TABLE internal.config ENABLE ROW LEVEL SECURITY;
ALTER TABLE internal.file_types ENABLE ROW LEVEL SECURITY;
ALTER TABLE internal.rate_limit_buckets ENABLE ROW LEVEL SECURITY;
ALTER TABLE internal.webhook_deliveries ENABLE ROW LEVEL SECURITY;
