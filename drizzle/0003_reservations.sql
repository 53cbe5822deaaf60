CREATE TYPE "public"."reservation_status" AS ENUM('pending', 'active', 'completing', 'completed', 'cancelled', 'expired', 'failed');--> statement-breakpoint
CREATE TABLE "reservations" (
	"id" text PRIMARY KEY NOT NULL,
	"node_id" text NOT NULL,
	"user_wallet" text NOT NULL,
	"status" "reservation_status" DEFAULT 'pending' NOT NULL,
	"duration_minutes" integer NOT NULL,
	"price_per_hour_units" bigint NOT NULL,
	"escrow_units" bigint NOT NULL,
	"extensions" integer DEFAULT 0 NOT NULL,
	"escrow_account" text DEFAULT '' NOT NULL,
	"funded_by" text DEFAULT '' NOT NULL,
	"job_config" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"start_at" timestamp with time zone NOT NULL,
	"end_at" timestamp with time zone NOT NULL,
	"engine_last_heartbeat" timestamp with time zone,
	"training_active" boolean DEFAULT false NOT NULL,
	"job_progress" double precision DEFAULT 0 NOT NULL,
	"current_metrics" jsonb DEFAULT '{}'::jsonb NOT NULL,
	"current_job_id" text DEFAULT '' NOT NULL,
	"jobs_completed" integer DEFAULT 0 NOT NULL,
	"engine_reported_end" boolean DEFAULT false NOT NULL,
	"node_reported_end" boolean DEFAULT false NOT NULL,
	"end_reason" text,
	"ended_at" timestamp with time zone,
	"time_used_seconds" bigint,
	"paid_units" bigint,
	"refund_units" bigint,
	"payment_tx" text,
	"refund_tx" text,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "reserved_by" text;--> statement-breakpoint
CREATE UNIQUE INDEX "reservations_live_node_idx" ON "reservations" USING btree ("node_id") WHERE "reservations"."status" in ('pending', 'active', 'completing');--> statement-breakpoint
CREATE INDEX "reservations_wallet_idx" ON "reservations" USING btree ("user_wallet","created_at");--> statement-breakpoint
CREATE INDEX "reservations_status_idx" ON "reservations" USING btree ("status","end_at");--> statement-breakpoint
CREATE INDEX "nodes_reserved_idx" ON "nodes" USING btree ("reserved_by") WHERE "nodes"."reserved_by" is not null;