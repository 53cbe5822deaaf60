CREATE TABLE "opened_escrow_accounts" (
	"job_id" text PRIMARY KEY NOT NULL,
	"opened_at" timestamp with time zone DEFAULT now() NOT NULL,
	"closed_at" timestamp with time zone
);
--> statement-breakpoint
CREATE INDEX "opened_escrow_accounts_open_idx" ON "opened_escrow_accounts" USING btree ("opened_at") WHERE "opened_escrow_accounts"."closed_at" is null;