-- Version 3 of the shared queue: split messages held across replicas (docs/design.md, "Messages
-- an MTA splits" and "Replicas deliver by claiming").

-- A held transaction's group (its split.group), copied out of the record for the index; NULL for
-- every other message.
ALTER TABLE smtp2gmail.messages ADD COLUMN split_group text;
UPDATE smtp2gmail.messages SET split_group = entry->'split'->>'group' WHERE place = 'held';
CREATE INDEX messages_held_by_group ON smtp2gmail.messages (split_group) WHERE place = 'held';

-- One row per message whose transactions are held: every replica sees it, and whichever finds it
-- due looks at it (releases it, or sets when it is due next).
CREATE TABLE smtp2gmail.split_groups (
    -- The group key: a hash of the sender, the AUTH identity and the exact bytes.
    key text PRIMARY KEY,
    -- The header recipients, normalized, written with the first transaction; NULL for a group
    -- made here from transactions held before (read from a transaction's head).
    header text[],
    -- When queue.split_window ends for the group.
    deadline timestamptz NOT NULL,
    -- When a replica should look at it next: at once after a transaction arrived, the end of the
    -- settling time once complete, the deadline otherwise.
    due_at timestamptz NOT NULL,
    -- One more with each transaction held into it: a release or a new due time is written only
    -- if the group is as it was read.
    version bigint NOT NULL DEFAULT 1
);
CREATE INDEX split_groups_due ON smtp2gmail.split_groups (due_at);
INSERT INTO smtp2gmail.split_groups (key, deadline, due_at)
SELECT split_group, min(next_attempt), now()
  FROM smtp2gmail.messages
 WHERE place = 'held' AND split_group IS NOT NULL
 GROUP BY split_group;

-- The merges of a message, found by its group key (a transaction sent again is checked against
-- them).
ALTER TABLE smtp2gmail.merges ADD COLUMN group_key text;
UPDATE smtp2gmail.merges SET group_key = record->'entry'->'split'->>'group';
CREATE INDEX merges_by_group ON smtp2gmail.merges (group_key);
