CREATE TYPE "public"."job_phase" AS ENUM('pending', 'queued', 'assigned', 'running', 'completed', 'failed', 'cancelled');--> statement-breakpoint
CREATE TYPE "public"."payment_leg" AS ENUM('escrow', 'release_node', 'release_platform', 'refund');--> statement-breakpoint
CREATE TYPE "public"."payment_state" AS ENUM('pending', 'confirmed', 'failed');--> statement-breakpoint
CREATE TABLE "job_events" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"job_id" text NOT NULL,
	"seq" integer NOT NULL,
	"from_status" "job_phase",
	"to_status" "job_phase" NOT NULL,
	"reason" text NOT NULL,
	"actor" text NOT NULL,
	"node_id" text,
	"attempt" integer DEFAULT 0 NOT NULL,
	"data" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "jobs" (
	"id" text PRIMARY KEY NOT NULL,
	"status" "job_phase" DEFAULT 'pending' NOT NULL,
	"job_type" text NOT NULL,
	"priority" text NOT NULL,
	"required_device" text NOT NULL,
	"estimated_memory" bigint DEFAULT 0 NOT NULL,
	"config" jsonb NOT NULL,
	"config_hash" text NOT NULL,
	"submitter" text DEFAULT '' NOT NULL,
	"payment_units" bigint NOT NULL,
	"assigned_node_id" text,
	"attempts" integer DEFAULT 0 NOT NULL,
	"progress" double precision DEFAULT 0 NOT NULL,
	"current_epoch" integer DEFAULT 0 NOT NULL,
	"metrics" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"error_code" integer,
	"error_message" text,
	"event_seq" integer DEFAULT 0 NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"started_at" timestamp with time zone,
	"ended_at" timestamp with time zone,
	"deleted_at" timestamp with time zone,
	CONSTRAINT "jobs_progress_range" CHECK ("jobs"."progress" >= 0 and "jobs"."progress" <= 1),
	CONSTRAINT "jobs_payment_positive" CHECK ("jobs"."payment_units" > 0)
);
--> statement-breakpoint
CREATE TABLE "node_job_cancels" (
	"node_id" text NOT NULL,
	"job_id" text NOT NULL,
	"reason" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "node_job_cancels_node_id_job_id_pk" PRIMARY KEY("node_id","job_id")
);
--> statement-breakpoint
CREATE TABLE "node_metrics" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"node_id" text NOT NULL,
	"at" timestamp with time zone NOT NULL,
	"cpu_usage" double precision DEFAULT 0 NOT NULL,
	"gpu_usage" double precision DEFAULT 0 NOT NULL,
	"memory_usage" double precision DEFAULT 0 NOT NULL,
	"network_throughput" double precision DEFAULT 0 NOT NULL,
	"power_consumption" double precision DEFAULT 0 NOT NULL
);
--> statement-breakpoint
CREATE TABLE "nodes" (
	"id" text PRIMARY KEY NOT NULL,
	"name" text DEFAULT '' NOT NULL,
	"cpu_cores" integer DEFAULT 0 NOT NULL,
	"ram_total" bigint DEFAULT 0 NOT NULL,
	"ram_available" bigint DEFAULT 0 NOT NULL,
	"devices" jsonb DEFAULT '[]'::jsonb NOT NULL,
	"device_types" text[] DEFAULT '{}'::text[] NOT NULL,
	"max_device_memory" bigint DEFAULT 0 NOT NULL,
	"ip_address" text DEFAULT '' NOT NULL,
	"port" integer DEFAULT 0 NOT NULL,
	"region" text DEFAULT '' NOT NULL,
	"wallet_address" text DEFAULT '' NOT NULL,
	"reputation" double precision DEFAULT 0.5 NOT NULL,
	"status" text DEFAULT 'online' NOT NULL,
	"profile" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"total_jobs_completed" integer DEFAULT 0 NOT NULL,
	"total_jobs_failed" integer DEFAULT 0 NOT NULL,
	"registered_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	"last_heartbeat" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "nodes_reputation_range" CHECK ("nodes"."reputation" >= 0 and "nodes"."reputation" <= 1)
);
--> statement-breakpoint
CREATE TABLE "payments" (
	"id" bigserial PRIMARY KEY NOT NULL,
	"job_id" text NOT NULL,
	"leg" "payment_leg" NOT NULL,
	"amount" bigint NOT NULL,
	"from_account" text NOT NULL,
	"to_account" text NOT NULL,
	"state" "payment_state" DEFAULT 'pending' NOT NULL,
	"idempotency_key" text NOT NULL,
	"tx_ref" text,
	"memo" text DEFAULT '' NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "payments_amount_nonnegative" CHECK ("payments"."amount" >= 0)
);
--> statement-breakpoint
CREATE UNIQUE INDEX "job_events_job_seq_idx" ON "job_events" USING btree ("job_id","seq");--> statement-breakpoint
CREATE INDEX "jobs_status_idx" ON "jobs" USING btree ("status","created_at");--> statement-breakpoint
CREATE INDEX "jobs_node_idx" ON "jobs" USING btree ("assigned_node_id") WHERE "jobs"."status" in ('assigned', 'running');--> statement-breakpoint
CREATE INDEX "jobs_submitter_idx" ON "jobs" USING btree ("submitter","created_at");--> statement-breakpoint
CREATE INDEX "jobs_created_idx" ON "jobs" USING btree ("created_at","id");--> statement-breakpoint
CREATE INDEX "node_metrics_node_at_idx" ON "node_metrics" USING btree ("node_id","at");--> statement-breakpoint
CREATE INDEX "nodes_endpoint_idx" ON "nodes" USING btree ("ip_address","port");--> statement-breakpoint
CREATE INDEX "nodes_wallet_idx" ON "nodes" USING btree ("wallet_address") WHERE "nodes"."wallet_address" <> '';--> statement-breakpoint
CREATE INDEX "nodes_heartbeat_idx" ON "nodes" USING btree ("last_heartbeat");--> statement-breakpoint
CREATE UNIQUE INDEX "payments_idempotency_idx" ON "payments" USING btree ("idempotency_key");--> statement-breakpoint
CREATE UNIQUE INDEX "payments_job_leg_idx" ON "payments" USING btree ("job_id","leg");--> statement-breakpoint
CREATE INDEX "payments_from_idx" ON "payments" USING btree ("from_account");--> statement-breakpoint
CREATE INDEX "payments_to_idx" ON "payments" USING btree ("to_account");