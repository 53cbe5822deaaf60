ALTER TABLE "jobs" ADD COLUMN "waiting_since" timestamp with time zone;--> statement-breakpoint
-- claim_node as in 0009, with two changes: a job still pending (its escrow on its way) whose match already
-- found no node (waiting_since) waits like a queued one, so it holds its place ahead of later jobs; and a
-- job without an estimated duration is costed at the 10-minute minimum (domain/pricing.ts estimateCostUnits)
-- instead of skipping the price check.
CREATE OR REPLACE FUNCTION claim_node(p_job_id text, p_node_id text, p_decimals integer) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM nodes WHERE id = p_node_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  WITH node AS (
    SELECT id, capacity, devices, ram_total, price_per_hour FROM nodes WHERE id = p_node_id AND reserved_by IS NULL
  ), me AS (
    SELECT priority_rank, created_at FROM jobs WHERE id = p_job_id
  )
  INSERT INTO node_claims (node_id, job_id)
  SELECT node.id, p_job_id FROM node, me
   WHERE (SELECT count(*) FROM node_claims c WHERE c.node_id = node.id AND c.job_id <> p_job_id) < node.capacity
     AND NOT EXISTS (
       SELECT 1 FROM jobs q
        WHERE (q.status = 'queued' OR (q.status = 'pending' AND q.waiting_since IS NOT NULL)) AND q.id <> p_job_id
          AND (q.priority_rank, q.created_at, q.id) < (me.priority_rank, me.created_at, p_job_id)
          AND NOT (node.id = ANY(q.excluded_nodes))
          AND q.estimated_memory <= node_device_memory(node.devices, node.ram_total, q.required_device)
          AND ceil(round(node.price_per_hour::numeric * 1000000) * (10::numeric ^ p_decimals)
                   * greatest(ceil(coalesce((q.config->>'estimatedDuration')::numeric, 0)), 600) / 3600000000) <= q.payment_units
          AND NOT EXISTS (SELECT 1 FROM node_claims held WHERE held.job_id = q.id)
     )
  ON CONFLICT (node_id, job_id) DO UPDATE SET claimed_at = node_claims.claimed_at;
  RETURN FOUND;
END
$$;
