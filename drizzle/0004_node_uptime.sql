ALTER TABLE "nodes" ADD COLUMN "compute_ms" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "online_ms" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "uptime_since" timestamp with time zone DEFAULT now() NOT NULL;--> statement-breakpoint
-- Compute time of the attempts that ended before this migration, by the definition recordReputationEvent applies
-- from now on: from the attempt's latest 'assigned' event on the node to its outcome's reputation event.
UPDATE "nodes" SET "compute_ms" = t.ms FROM (
  SELECT r.node_id, sum(greatest(0, extract(epoch FROM r.at - a.at) * 1000))::bigint AS ms
    FROM "reputation_events" r
    CROSS JOIN LATERAL (
      SELECT e.at FROM "job_events" e
       WHERE e.job_id = r.job_id AND e.node_id = r.node_id AND e.to_status = 'assigned' AND e.at <= r.at
       ORDER BY e.seq DESC LIMIT 1
    ) a
   WHERE r.kind IN ('job_completed', 'job_failed', 'timeout', 'node_lost')
   GROUP BY r.node_id
) t WHERE "nodes"."id" = t.node_id;
