-- A node row's change time comes from the database's clock, taken as the statement runs: the node caches read
-- the rows changed since their last refresh (less an overlap of seconds), and a change stamped with a writer's
-- own clock (one behind the database's, or taken before the writer waited for a pooled connection or the row's
-- lock) could fall behind that watermark and never be read. Writers still say that a row changed by setting
-- updated_at (a heartbeat leaves it alone); these triggers only decide the time.
-- The trigger's WHEN leaves the function out of the heartbeat batches' updates, which do not change updated_at.
CREATE OR REPLACE FUNCTION nodes_stamp_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := clock_timestamp();
  RETURN NEW;
END;
$$;
--> statement-breakpoint
CREATE TRIGGER nodes_stamp_insert BEFORE INSERT ON nodes FOR EACH ROW EXECUTE FUNCTION nodes_stamp_change();
--> statement-breakpoint
CREATE TRIGGER nodes_stamp_update BEFORE UPDATE ON nodes FOR EACH ROW
  WHEN (NEW.updated_at IS DISTINCT FROM OLD.updated_at) EXECUTE FUNCTION nodes_stamp_change();
