-- Whether a waiting job could run on a node, as matching decides it (domain/scoring.ts): the node is not excluded
-- for the job, has the memory for the job's device type (node_device_memory, 0009), and its price for the job's
-- estimated duration (at least 10 minutes; domain/pricing.ts estimateCostUnits) is within the job's escrow.
-- One definition for claim_node (who is ahead) and for choosing which waiting jobs to wake.
CREATE OR REPLACE FUNCTION job_wants_node(q jobs, n nodes, p_decimals integer) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT NOT (n.id = ANY(q.excluded_nodes))
     AND q.estimated_memory <= node_device_memory(n.devices, n.ram_total, q.required_device)
     AND ceil(round(n.price_per_hour::numeric * 1000000) * (10::numeric ^ p_decimals)
              * greatest(ceil(coalesce((q.config->>'estimatedDuration')::numeric, 0)), 600) / 3600000000) <= q.payment_units
$$;
--> statement-breakpoint
-- Jobs that wait for a node: queued, or pending (escrow on its way) after a match found none (0011).
CREATE OR REPLACE FUNCTION job_is_waiting(q jobs) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT q.status = 'queued' OR (q.status = 'pending' AND q.waiting_since IS NOT NULL)
$$;
--> statement-breakpoint
-- claim_node as in 0009, with 0011's waiting jobs and the 10-minute minimum cost, its rule of who is ahead written
-- with the two functions above.
CREATE OR REPLACE FUNCTION claim_node(p_job_id text, p_node_id text, p_decimals integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  n nodes;
BEGIN
  SELECT * INTO n FROM nodes WHERE id = p_node_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  WITH me AS (
    SELECT priority_rank, created_at FROM jobs WHERE id = p_job_id
  )
  INSERT INTO node_claims (node_id, job_id)
  SELECT n.id, p_job_id FROM me
   WHERE n.reserved_by IS NULL
     AND (SELECT count(*) FROM node_claims c WHERE c.node_id = n.id AND c.job_id <> p_job_id) < n.capacity
     AND NOT EXISTS (
       SELECT 1 FROM jobs q
        WHERE job_is_waiting(q) AND q.id <> p_job_id
          AND (q.priority_rank, q.created_at, q.id) < (me.priority_rank, me.created_at, p_job_id)
          AND job_wants_node(q, n, p_decimals)
          AND NOT EXISTS (SELECT 1 FROM node_claims held WHERE held.job_id = q.id)
     )
  ON CONFLICT (node_id, job_id) DO UPDATE SET claimed_at = node_claims.claimed_at;
  RETURN FOUND;
END
$$;
