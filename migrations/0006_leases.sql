-- Leases: a named duty (the global reaper) held by one codebox instance until a time, renewed
-- while it lives and taken over by another once it lapses, so that several instances sharing
-- one catalog never do it twice at once. Portable SQL: it runs on SQLite and on PostgreSQL.
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
