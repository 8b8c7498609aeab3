-- Version 2 of the shared queue (docs/design.md, "One scheduler core, two state backends").

-- "Precondition check failed." answers in a row per mailbox, counted by every replica together
-- (version 1 counted them per replica, so N replicas took N times as long to hold a mailbox).
ALTER TABLE smtp2gmail.mailbox_limits
    ADD COLUMN preconditions integer NOT NULL DEFAULT 0 CHECK (preconditions >= 0);
