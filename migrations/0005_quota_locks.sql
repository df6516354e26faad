-- One row per tenant that inserts under a quota, locked by each such insert until it commits:
-- PostgreSQL runs concurrent statements side by side, and two inserts that each summed the
-- stored bytes before the other committed could both fit in room only one has. (SQLite runs
-- one writer at a time anyway.) Portable SQL: it runs on SQLite and on PostgreSQL.
CREATE TABLE quota_locks (
    tenant TEXT PRIMARY KEY
);
