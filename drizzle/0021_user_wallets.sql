CREATE TABLE "user_wallets" (
	"user_id" text NOT NULL,
	"wallet" text NOT NULL,
	"linked_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "user_wallets_user_id_wallet_pk" PRIMARY KEY("user_id","wallet")
);
