-- claim_node as in 0016, and one more refusal: a job holds capacity on one node at a time. Two tries of one match
-- (the activity's first try blocked past its timeout while its retry ran) could each claim a node; the first's
-- claim then held capacity nobody used until the job's attempt ended. Claims of one job are taken one at a time
-- (a transaction-scoped advisory lock on the job), so the second sees the first's. A try refused this way finds
-- the claim its job holds (see matchNode).
CREATE OR REPLACE FUNCTION claim_node(p_job_id text, p_node_id text, p_decimals integer) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  n nodes;
BEGIN
  PERFORM pg_advisory_xact_lock(hashtext('claim_node:' || p_job_id));
  IF EXISTS (SELECT 1 FROM node_claims c WHERE c.job_id = p_job_id AND c.node_id <> p_node_id) THEN
    RETURN false;
  END IF;
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
