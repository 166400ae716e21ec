-- A version's shape is kept by the two functions that insert versions, not by CHECK
-- constraints evaluated on every write: a tombstone holds no content, storage key or hash; a
-- live version holds its content or a storage key (one of them) and a hash.
--
-- PostgreSQL evaluates every CHECK of a table on every INSERT and UPDATE, whichever columns
-- change, and parses each one's stored expression again for every statement. A single-file
-- write makes two statements on project_files (the old version stops being current, the new
-- one is inserted), so the two rules cost 103 K of the 1.35 M instructions of an upsert, for
-- rows that internal.write_file and internal.delete_file build this shape by construction and
-- that no role may write otherwise (0003). tests/test_version_shape.py holds every kind of
-- write to the rules. The single-column rules stay, as domains (0022).
--
-- Instructions per upsert (python -m bench.rpc_instructions): 1.35 M to 1.25 M.

ALTER TABLE public.project_files
  DROP CONSTRAINT project_files_tombstone_is_empty,
  DROP CONSTRAINT project_files_live_has_one_source;
