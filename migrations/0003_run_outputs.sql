-- A run's rich outputs (results, figures, errors, as a notebook shows them) and the state of
-- the interpreter it ran in, each as JSON text. Runs recorded before have neither.
ALTER TABLE runs ADD COLUMN outputs TEXT;
ALTER TABLE runs ADD COLUMN kernel TEXT;
