-- Version 1 of the shared queue (docs/design.md, "The queue on PostgreSQL").

-- One row per queued message, in one of the places a spool has as directories.
CREATE TABLE smtp2gmail.messages (
    id text PRIMARY KEY,
    -- queue: waiting for delivery; dead: given up (dead letters); held: one transaction of a
    -- message an MTA split, waiting for the others.
    place text NOT NULL DEFAULT 'queue' CHECK (place IN ('queue', 'dead', 'held')),
    -- The queue's Entry record (envelope, account, attempts, last error) as serde writes it.
    entry jsonb NOT NULL,
    -- Copied out of entry for the indexes and the limits: the account (config name) and the
    -- Gmail mailbox that sends it (the impersonated user for a service account; '' when the
    -- account is one mailbox). A mailbox is (account, mailbox), as the scheduler's MailboxKey.
    account text NOT NULL,
    mailbox text NOT NULL,
    -- Bytes of the message; the bytes themselves are in message_chunks.
    size bigint NOT NULL CHECK (size >= 0),
    queued_at timestamptz NOT NULL DEFAULT now(),
    -- When the next attempt is planned.
    next_attempt timestamptz NOT NULL DEFAULT now(),
    -- The replica sending it now, and until when that claim holds unless renewed.
    lease_owner text,
    lease_until timestamptz,
    -- When a replica may next claim it: the planned attempt or the end of the lease, whichever is
    -- later (GREATEST skips NULL). One index on it finds "due and not leased", expired leases
    -- of a dead replica included, without a second condition to filter.
    due_at timestamptz GENERATED ALWAYS AS (GREATEST(next_attempt, lease_until)) STORED,
    CHECK ((lease_owner IS NULL) = (lease_until IS NULL))
);

-- Claiming, one mailbox at a time: SELECT ... WHERE place = 'queue' AND account = ... AND
-- mailbox = ... AND due_at <= now() ORDER BY due_at FOR UPDATE SKIP LOCKED; finding the mailboxes
-- with mail (a loose scan from one (account, mailbox) to the next) and their earliest due_at.
CREATE INDEX messages_due_by_mailbox ON smtp2gmail.messages (account, mailbox, due_at)
    WHERE place = 'queue';
-- Per-mailbox concurrency across replicas: the live leases of a mailbox.
CREATE INDEX messages_leased_by_mailbox ON smtp2gmail.messages (account, mailbox, lease_until)
    WHERE lease_owner IS NOT NULL;
-- `queue list`: each place in arrival order.
CREATE INDEX messages_by_place ON smtp2gmail.messages (place, queued_at);

-- The message bytes, exactly as received, in chunks of at most 1 MiB: written and read one
-- chunk at a time, so a 35 MiB message never has to be one value in memory (a bytea column is
-- sent and received whole).
CREATE TABLE smtp2gmail.message_chunks (
    id text NOT NULL REFERENCES smtp2gmail.messages (id) ON DELETE CASCADE,
    seq integer NOT NULL CHECK (seq >= 0),
    data bytea NOT NULL,
    PRIMARY KEY (id, seq)
);

-- Rows are deleted once Gmail accepted the message: vacuum often, so a busy queue's tables
-- stay the size of what is waiting, not of everything ever sent.
ALTER TABLE smtp2gmail.messages SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000
);
ALTER TABLE smtp2gmail.message_chunks SET (
    autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
    toast.autovacuum_vacuum_scale_factor = 0.02, toast.autovacuum_vacuum_threshold = 1000
);

-- What every replica must agree on per Gmail mailbox.
-- Created by the first claim of the mailbox's mail; the row lock it is claimed under is what
-- makes replicas' claims of one mailbox take turns.
CREATE TABLE smtp2gmail.mailbox_limits (
    account text NOT NULL,
    -- As in messages: '' when the account is one mailbox.
    mailbox text NOT NULL,
    -- queue.max_send_rate as the replicas that claim configure it (each claim writes it).
    max_rate double precision NOT NULL CHECK (max_rate > 0),
    -- The adaptive (AIMD) send rate now, sends per second: halved after a rate-limit answer,
    -- regained gradually up to max_rate.
    send_rate double precision NOT NULL CHECK (send_rate > 0),
    -- The next send slot: a replica takes it (and moves it on by 1/send_rate) before sending.
    next_send_at timestamptz NOT NULL DEFAULT '-infinity',
    -- Gmail's daily sending limit was reached: nothing is sent before this.
    deferred_until timestamptz,
    -- Held (a credentials problem of this one mailbox, a delegation missing): not before this.
    held_until timestamptz,
    hold_reason text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account, mailbox)
);

-- What every replica must agree on per configured account.
CREATE TABLE smtp2gmail.account_limits (
    account text PRIMARY KEY,
    -- The account's credentials were refused: paused, probed again at this time.
    paused_until timestamptz,
    pause_reason text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The records of merges of a split message's held transactions (queue::split), kept until the
-- splitter forgets them.
CREATE TABLE smtp2gmail.merges (
    id text PRIMARY KEY,
    record jsonb NOT NULL,
    at timestamptz NOT NULL
);

COMMENT ON TABLE smtp2gmail.messages IS 'smtp2gmail: queued, held and dead messages';
COMMENT ON TABLE smtp2gmail.message_chunks IS 'smtp2gmail: the bytes of each message';
