CREATE TABLE "reservation_jobs" (
	"reservation_id" text NOT NULL,
	"job_id" text NOT NULL,
	"reported_by" text NOT NULL,
	"success" boolean NOT NULL,
	"at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "reservation_jobs_reservation_id_job_id_pk" PRIMARY KEY("reservation_id","job_id")
);
--> statement-breakpoint
ALTER TABLE "reservation_jobs" ADD CONSTRAINT "reservation_jobs_reservation_id_reservations_id_fk" FOREIGN KEY ("reservation_id") REFERENCES "public"."reservations"("id") ON DELETE no action ON UPDATE no action;--> statement-breakpoint
-- Jobs that nodes reported before this table existed: their reputation events (evidence "<reservation>/<job>")
-- say which, so a repeated report of one of them is not counted again.
INSERT INTO "reservation_jobs" ("reservation_id", "job_id", "reported_by", "success", "at")
SELECT r."id", substr(e."job_id", length(r."id") + 2), 'node', bool_or(e."kind" = 'job_completed'), min(e."at")
  FROM "reputation_events" e
  JOIN "reservations" r ON left(e."job_id", length(r."id") + 1) = r."id" || '/'
 WHERE e."kind" IN ('job_completed', 'job_failed')
 GROUP BY r."id", substr(e."job_id", length(r."id") + 2)
ON CONFLICT DO NOTHING;
