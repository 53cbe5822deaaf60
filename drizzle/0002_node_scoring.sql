CREATE TABLE "node_claims" (
	"node_id" text NOT NULL,
	"job_id" text NOT NULL,
	"claimed_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "node_claims_node_id_job_id_pk" PRIMARY KEY("node_id","job_id")
);
--> statement-breakpoint
CREATE TABLE "reputation_events" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"node_id" text NOT NULL,
	"job_id" text,
	"kind" text NOT NULL,
	"delta" double precision NOT NULL,
	"reputation_after" double precision NOT NULL,
	"reason" text NOT NULL,
	"banned_until" timestamp with time zone,
	"at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "priority_rank" integer DEFAULT 2 NOT NULL;--> statement-breakpoint
ALTER TABLE "jobs" ADD COLUMN "excluded_nodes" text[] DEFAULT '{}'::text[] NOT NULL;--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "compute_score" double precision DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "price_per_hour" double precision DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "pricing" jsonb DEFAULT '{}'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "capacity" integer DEFAULT 1 NOT NULL;--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "banned_until" timestamp with time zone;--> statement-breakpoint
CREATE INDEX "node_claims_job_idx" ON "node_claims" USING btree ("job_id");--> statement-breakpoint
CREATE INDEX "reputation_events_node_idx" ON "reputation_events" USING btree ("node_id","at");--> statement-breakpoint
CREATE UNIQUE INDEX "reputation_events_job_kind_idx" ON "reputation_events" USING btree ("node_id","job_id","kind");--> statement-breakpoint
CREATE INDEX "jobs_queue_idx" ON "jobs" USING btree ("priority_rank","created_at") WHERE "jobs"."status" in ('pending', 'queued');--> statement-breakpoint
CREATE INDEX "nodes_region_idx" ON "nodes" USING btree ("region");--> statement-breakpoint
CREATE INDEX "nodes_price_idx" ON "nodes" USING btree ("price_per_hour");