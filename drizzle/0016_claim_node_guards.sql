-- claim_node as in 0013, and two more refusals: a banned node takes no new claim (a failure that bans it wakes
-- waiting jobs a moment before the node cache sees the ban), and an ended job takes none (a late, stray match of
-- a job that has been cancelled or has failed meanwhile would hold the capacity for good).
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
    SELECT priority_rank, created_at FROM jobs
     WHERE id = p_job_id AND status NOT IN ('completed', 'failed', 'cancelled')
  )
  INSERT INTO node_claims (node_id, job_id)
  SELECT n.id, p_job_id FROM me
   WHERE n.reserved_by IS NULL
     AND (n.banned_until IS NULL OR n.banned_until <= now())
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
