-- The memory a node offers a job that requires `p_device`, as matching counts it (domain/node.ts fitsJob): any
-- device or the RAM for UNKNOWN; the RAM or a CPU device for CPU; the largest device of that type otherwise.
-- NULL when the node has no such device.
CREATE OR REPLACE FUNCTION node_device_memory(p_devices jsonb, p_ram_total bigint, p_device text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
  SELECT CASE
    WHEN p_device = 'UNKNOWN' THEN greatest(p_ram_total, coalesce(max(mem), 0))
    WHEN p_device = 'CPU' THEN CASE WHEN p_ram_total > 0 OR bool_or(kind = 'CPU') THEN greatest(p_ram_total, coalesce(max(mem) FILTER (WHERE kind = 'CPU'), 0)) END
    ELSE max(mem) FILTER (WHERE kind = p_device)
  END
  FROM (
    SELECT d->>'deviceType' AS kind,
           CASE WHEN coalesce((d->>'vramTotal')::bigint, 0) > 0 THEN (d->>'vramTotal')::bigint ELSE coalesce((d->>'memoryTotal')::bigint, 0) END AS mem
      FROM jsonb_array_elements(p_devices) AS d
  ) AS devices
$$;
--> statement-breakpoint
-- A capacity claim in one round trip (matchNode): lock the node, then count and insert. Under READ COMMITTED
-- each statement of the function reads a fresh snapshot, so the insert counts every claim committed by whoever
-- held the node's lock before (a single statement would count from a snapshot taken before the lock wait).
-- The claim is refused while a job ahead in the queue (priority, then age) waits for a node like this one: one
-- whose device, memory and price (the cost formula of domain/pricing.ts, for jobs that give a duration) it
-- meets. Returns whether the job now holds a claim on the node.
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
        WHERE q.status = 'queued' AND q.id <> p_job_id
          AND (q.priority_rank, q.created_at, q.id) < (me.priority_rank, me.created_at, p_job_id)
          AND NOT (node.id = ANY(q.excluded_nodes))
          AND q.estimated_memory <= node_device_memory(node.devices, node.ram_total, q.required_device)
          AND (coalesce((q.config->>'estimatedDuration')::numeric, 0) <= 0
               OR ceil(round(node.price_per_hour::numeric * 1000000) * (10::numeric ^ p_decimals)
                       * greatest(ceil((q.config->>'estimatedDuration')::numeric), 600) / 3600000000) <= q.payment_units)
          AND NOT EXISTS (SELECT 1 FROM node_claims held WHERE held.job_id = q.id)
     )
  ON CONFLICT (node_id, job_id) DO UPDATE SET claimed_at = node_claims.claimed_at;
  RETURN FOUND;
END
$$;
