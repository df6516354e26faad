-- Which codebox instance (data folder) executes a run, so that a restarted instance marks only
-- its own interrupted runs as failed when several instances share one catalog.
ALTER TABLE runs ADD COLUMN instance TEXT;
