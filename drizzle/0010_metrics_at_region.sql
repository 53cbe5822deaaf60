DROP INDEX "nodes_region_idx";--> statement-breakpoint
CREATE INDEX "node_metrics_at_brin" ON "node_metrics" USING brin ("at");--> statement-breakpoint
CREATE INDEX "nodes_region_lower_idx" ON "nodes" USING btree (lower("region"));