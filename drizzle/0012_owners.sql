ALTER TABLE "jobs" ADD COLUMN "owner" text;--> statement-breakpoint
ALTER TABLE "nodes" ADD COLUMN "owner" text;--> statement-breakpoint
ALTER TABLE "reservations" ADD COLUMN "owner" text;