ALTER TYPE "public"."payment_state" ADD VALUE 'sent' BEFORE 'confirmed';--> statement-breakpoint
ALTER TYPE "public"."payment_state" ADD VALUE 'owed' BEFORE 'failed';--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "tx_bytes" text;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "last_valid_block_height" bigint;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "send_attempts" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "slot" bigint;--> statement-breakpoint
ALTER TABLE "payments" ADD COLUMN "last_error" text;--> statement-breakpoint
CREATE UNIQUE INDEX "payments_escrow_tx_idx" ON "payments" USING btree ("tx_ref") WHERE "payments"."leg" = 'escrow';--> statement-breakpoint
CREATE INDEX "payments_state_idx" ON "payments" USING btree ("state","updated_at");