CREATE TABLE "opened_escrow_accounts" (
	"job_id" text PRIMARY KEY NOT NULL,
	"opened_at" timestamp (3) with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
CREATE TABLE "user_wallets" (
	"user_id" text NOT NULL,
	"wallet" text NOT NULL,
	"linked_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "user_wallets_user_id_wallet_pk" PRIMARY KEY("user_id","wallet")
);
--> statement-breakpoint
CREATE INDEX "opened_escrow_accounts_opened_idx" ON "opened_escrow_accounts" USING btree ("opened_at","job_id");--> statement-breakpoint
CREATE INDEX "nodes_owner_idx" ON "nodes" USING btree ("owner") WHERE "nodes"."owner" is not null;