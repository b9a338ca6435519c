-- Jobs, their inputs, per-server settings, channel overrides, blocked terms and the moderator audit log.
-- Discord ids are INTEGER (snowflakes fit in SQLite's signed 64 bits); times are unix seconds (REAL).

CREATE TABLE jobs (
    id                TEXT PRIMARY KEY,
    kind              TEXT NOT NULL CHECK (kind IN ('fill', 'edit')),
    user_id           INTEGER NOT NULL,
    guild_id          INTEGER,                      -- NULL in DMs
    channel_id        INTEGER NOT NULL,
    channel_nsfw      INTEGER NOT NULL DEFAULT 0,   -- age-restricted channel (decides safety on resume)
    provider          TEXT NOT NULL,
    model             TEXT NOT NULL,
    status            TEXT NOT NULL CHECK (status IN (
                          'queued', 'starting', 'running', 'succeeded', 'failed',
                          'moderated', 'canceled', 'expired', 'timed_out')),
    handle            TEXT,                         -- provider Handle as JSON, once submitted
    request           TEXT NOT NULL,                -- the validated request as JSON
    prompt            TEXT NOT NULL,
    application_id    INTEGER NOT NULL,
    interaction_token TEXT,                         -- cleared when the job ends
    token_expires_at  REAL,
    reply_message_id  INTEGER,
    outputs           TEXT NOT NULL DEFAULT '[]',   -- JSON list of {filename, width, height, flagged, bytes}
    seed              INTEGER,
    error             TEXT,                         -- user-safe text
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    finished_at       REAL,
    erased_at         REAL                          -- content erased on request; row kept a day for quotas
);
CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
CREATE INDEX jobs_status ON jobs (status);

CREATE TABLE job_inputs (
    job_id   TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    original BLOB NOT NULL,
    mask     BLOB
);

-- One row per explicitly set key; missing keys take the defaults declared in GuildSettings.
CREATE TABLE guild_settings (
    guild_id INTEGER NOT NULL,
    key      TEXT NOT NULL,
    value    TEXT NOT NULL,                         -- JSON
    PRIMARY KEY (guild_id, key)
) WITHOUT ROWID;

CREATE TABLE channel_overrides (
    guild_id   INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    safety     INTEGER CHECK (safety BETWEEN 0 AND 6),
    PRIMARY KEY (guild_id, channel_id)
) WITHOUT ROWID;

CREATE TABLE blocked_terms (
    guild_id INTEGER NOT NULL,
    term_key TEXT NOT NULL,                         -- casefolded term, so "Bad" and "bad" are one entry
    term     TEXT NOT NULL,                         -- as the moderator wrote it
    action   TEXT NOT NULL CHECK (action IN ('block', 'strip')),
    added_by INTEGER NOT NULL,
    added_at REAL NOT NULL,
    PRIMARY KEY (guild_id, term_key)
) WITHOUT ROWID;

CREATE TABLE settings_audit (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id INTEGER NOT NULL,
    actor_id INTEGER NOT NULL,
    key      TEXT NOT NULL,
    old      TEXT,
    new      TEXT,
    at       REAL NOT NULL
);
CREATE INDEX settings_audit_guild ON settings_audit (guild_id, id);
