import fs from 'node:fs';
import path from 'node:path';

/**
 * Where scripts/record-reservation-histories.ts writes the recorded reservation workflow histories (apart from the
 * job workflow's, test/replay/histories, which are recorded and replayed on their own).
 */
export const RESERVATION_HISTORIES_DIR = path.join(__dirname, 'reservation-histories');

/** Workflow id (the reservation id) a scenario was recorded under: `<scenario>.json`. */
export const reservationReplayId = (scenario: string) => `replay-reservation-${scenario}`;

/** The committed reservation history files with the workflow id each was recorded under. */
export function recordedReservationHistories(dir = RESERVATION_HISTORIES_DIR): { file: string; workflowId: string }[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((file) => ({ file: path.join(dir, file), workflowId: reservationReplayId(file.replace(/\.json$/, '')) }));
}
