-- A capacity claim in one round trip (matchNode): lock the node, then count and insert. Under READ COMMITTED
-- each statement of the function reads a fresh snapshot, so the insert counts every claim committed by whoever
-- held the node's lock before (a single statement would count from a snapshot taken before the lock wait).
-- Returns whether the job now holds a claim on the node.
CREATE OR REPLACE FUNCTION claim_node(p_job_id text, p_node_id text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM nodes WHERE id = p_node_id FOR UPDATE;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  WITH node AS (
    SELECT id, capacity, device_types, max_device_memory, ram_total FROM nodes WHERE id = p_node_id AND reserved_by IS NULL
  ), me AS (
    SELECT priority_rank, created_at FROM jobs WHERE id = p_job_id
  )
  INSERT INTO node_claims (node_id, job_id)
  SELECT node.id, p_job_id FROM node, me
   WHERE (SELECT count(*) FROM node_claims c WHERE c.node_id = node.id AND c.job_id <> p_job_id) < node.capacity
     AND NOT EXISTS (
       SELECT 1 FROM jobs q
        WHERE q.status = 'queued' AND q.id <> p_job_id
          AND (q.priority_rank, q.created_at, q.id) < (me.priority_rank, me.created_at, p_job_id)
          AND NOT (node.id = ANY(q.excluded_nodes))
          AND (q.required_device IN ('UNKNOWN', 'CPU') OR q.required_device = ANY(node.device_types))
          AND q.estimated_memory <= greatest(node.max_device_memory, CASE WHEN q.required_device IN ('UNKNOWN', 'CPU') THEN node.ram_total ELSE 0 END)
          AND NOT EXISTS (SELECT 1 FROM node_claims held WHERE held.job_id = q.id)
     )
  ON CONFLICT (node_id, job_id) DO UPDATE SET claimed_at = node_claims.claimed_at;
  RETURN FOUND;
END
$$;
