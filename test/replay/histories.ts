import fs from 'node:fs';
import path from 'node:path';

/** Where scripts/record-histories.ts writes the recorded job workflow histories. */
export const HISTORIES_DIR = path.join(__dirname, 'histories');

/** Workflow id a scenario was recorded under (`<scenario>.json` or `<scenario>.run-first|last.json`). */
export const replayWorkflowId = (scenario: string) => `replay-${scenario}`;

/** The committed history files with the workflow id each was recorded under. */
export function recordedHistories(): { file: string; workflowId: string }[] {
  return fs
    .readdirSync(HISTORIES_DIR)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((file) => ({ file: path.join(HISTORIES_DIR, file), workflowId: replayWorkflowId(file.replace(/(\.run-\w+)?\.json$/, '')) }));
}
