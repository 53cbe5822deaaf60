CREATE TABLE "heartbeat_relays" (
	"id" text PRIMARY KEY NOT NULL,
	"up_since" timestamp with time zone DEFAULT now() NOT NULL,
	"at" timestamp with time zone DEFAULT now() NOT NULL
);
