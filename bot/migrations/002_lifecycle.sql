-- The job lifecycle: new states (preparing, submitting), one owner with a lease per running job, delivery as
-- its own fact, cancel requests any process can leave, and the provider outputs kept until they are delivered.
-- SQLite cannot change a CHECK constraint, so the table is rebuilt (the runner turns foreign keys off meanwhile).
-- One file for both backends: the runner gives PostgreSQL its names for the types (see bot/db/postgres.py).

CREATE TABLE jobs_new (
    id                  TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('fill', 'edit')),
    front               TEXT NOT NULL DEFAULT 'discord' CHECK (front IN ('discord', 'cli')),
    user_id             INTEGER NOT NULL,
    guild_id            INTEGER,                      -- NULL in DMs
    channel_id          INTEGER NOT NULL,
    channel_nsfw        INTEGER NOT NULL DEFAULT 0,   -- age-restricted channel (decides safety on resume)
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN (
                            'preparing', 'queued', 'submitting', 'starting', 'running', 'succeeded', 'failed',
                            'moderated', 'canceled', 'expired', 'timed_out')),
    handle              TEXT,                         -- provider Handle as JSON, once the provider answered
    request             TEXT NOT NULL,                -- the validated request as JSON
    prompt              TEXT NOT NULL,
    notices             TEXT NOT NULL DEFAULT '[]',   -- JSON list of notes from preparing, shown at the end
    application_id      INTEGER NOT NULL,
    interaction_token   TEXT,                         -- cleared once the job is delivered
    token_expires_at    REAL,
    reply_message_id    INTEGER,
    outputs             TEXT NOT NULL DEFAULT '[]',   -- JSON list of {filename, width, height, flagged, bytes}
    seed                INTEGER,
    error               TEXT,                         -- user-safe text
    owner               TEXT,                         -- the process running the job
    lease_until         REAL,                         -- ...for as long as it keeps renewing this
    cancel_requested_at REAL,
    created_at          REAL NOT NULL,
    updated_at          REAL NOT NULL,
    finished_at         REAL,
    delivered_at        REAL,                         -- the front end showed the outcome: nothing left to do
    erased_at           REAL                          -- content erased on request; row kept a day for quotas
);

INSERT INTO jobs_new (
    id, kind, user_id, guild_id, channel_id, channel_nsfw, provider, model, status, handle, request, prompt,
    application_id, interaction_token, token_expires_at, reply_message_id, outputs, seed, error, created_at,
    updated_at, finished_at, delivered_at, erased_at)
SELECT
    id, kind, user_id, guild_id, channel_id, channel_nsfw, provider, model,
    CASE WHEN status = 'starting' AND handle IS NULL THEN 'submitting' ELSE status END,
    handle, request, prompt, application_id, interaction_token, token_expires_at, reply_message_id, outputs, seed,
    error, created_at, updated_at, finished_at,
    CASE WHEN status IN ('queued', 'starting', 'running') THEN NULL ELSE COALESCE(finished_at, updated_at) END,
    erased_at
FROM jobs;

-- job_inputs is rebuilt too, referencing jobs_new, so that the old jobs table can be dropped on PostgreSQL (which
-- refuses while a reference to it remains); SQLite (3.26+) rewrites the reference when jobs_new is renamed.
CREATE TABLE job_inputs_new (
    job_id   TEXT PRIMARY KEY REFERENCES jobs_new (id) ON DELETE CASCADE,
    original BLOB NOT NULL,
    mask     BLOB
);
INSERT INTO job_inputs_new (job_id, original, mask) SELECT job_id, original, mask FROM job_inputs;

DROP TABLE job_inputs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
ALTER TABLE job_inputs_new RENAME TO job_inputs;
CREATE INDEX jobs_user_created ON jobs (user_id, created_at);
CREATE INDEX jobs_guild_created ON jobs (guild_id, created_at);
CREATE INDEX jobs_status ON jobs (status);
CREATE INDEX jobs_undelivered ON jobs (front, lease_until) WHERE delivered_at IS NULL;

-- Provider outputs, downloaded once and kept until the job is delivered (a restart finishes them again).
CREATE TABLE job_outputs (
    job_id  TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL,
    data    BLOB NOT NULL,
    flagged INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);
