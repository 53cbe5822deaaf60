-- One payer transaction may pay several escrow accounts: it is bound once per account it pays (a job or one
-- reclaim of that account), no longer once overall, so the second account's money is not stranded.
DROP INDEX "payments_escrow_tx_idx";--> statement-breakpoint
CREATE UNIQUE INDEX "payments_escrow_account_tx_idx" ON "payments" USING btree ("to_account","tx_ref") WHERE "payments"."leg" = 'escrow';