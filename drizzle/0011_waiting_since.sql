ALTER TABLE "jobs" ADD COLUMN "waiting_since" timestamp with time zone;
