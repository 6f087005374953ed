-- The values of a gate's form that came with its decision (JSON), for the restart path to apply
-- a recorded decision exactly as it was made.
ALTER TABLE decisions ADD COLUMN inputs TEXT;
