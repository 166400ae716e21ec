-- The NOTIFY sent by the insert trigger on file_events.
ALTER TABLE public.file_events DISABLE TRIGGER file_events_notify;
