ALTER TABLE "jobs" ADD COLUMN "refused_nodes" text[] DEFAULT '{}'::text[] NOT NULL;--> statement-breakpoint
-- job_wants_node as in 0013, and a node that refused the waiting job (or could not be reached) since its last
-- assignment is not one it waits for: it holds that node back from nobody, and is not woken for it.
CREATE OR REPLACE FUNCTION job_wants_node(q jobs, n nodes, p_decimals integer) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT NOT (n.id = ANY(q.excluded_nodes))
     AND NOT (n.id = ANY(q.refused_nodes))
     AND q.estimated_memory <= node_device_memory(n.devices, n.ram_total, q.required_device)
     AND ceil(round(n.price_per_hour::numeric * 1000000) * (10::numeric ^ p_decimals)
              * greatest(ceil(coalesce((q.config->>'estimatedDuration')::numeric, 0)), 600) / 3600000000) <= q.payment_units
$$;
