-- An admin's role and scope (their grant) and users' groups.
--
-- Power is read from `grant_sealed` only: the grant as JSON, MACed under a
-- key derived from the deployment's cluster key and bound to the person's
-- id and email (relay/src/directory/grants.rs). A database writer who sets
-- `is_admin`, or copies another admin's grant, grants nothing. Admins made
-- before this migration have no sealed grant and so no power: make a new
-- owner with `obr-relay admin create`.
ALTER TABLE people ADD COLUMN grant_sealed TEXT;

CREATE TABLE person_groups (
    person_id TEXT NOT NULL REFERENCES people(id),
    group_name TEXT NOT NULL,
    PRIMARY KEY (person_id, group_name)
);
