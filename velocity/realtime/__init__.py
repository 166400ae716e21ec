"""The realtime gateway: Supabase-Realtime-compatible websocket fan-out of file events."""
