import fs from 'node:fs';
import path from 'node:path';

/** Where scripts/record-histories.ts writes the recorded job workflow histories. */
export const HISTORIES_DIR = path.join(__dirname, 'histories');

/**
 * Histories recorded against earlier versions of the workflow, one folder per version (`--keep-as=<label>` of the
 * script). Jobs of those versions may still be running when the new code deploys, so they must keep replaying.
 */
export const PREVIOUS_DIR = path.join(HISTORIES_DIR, 'previous');

/** Workflow id a scenario was recorded under (`<scenario>.json` or `<scenario>.run-first|last.json`). */
export const replayWorkflowId = (scenario: string) => `replay-${scenario}`;

/** The committed history files of `dir` (the current recordings by default) with the workflow id each was recorded under. */
export function recordedHistories(dir = HISTORIES_DIR): { file: string; workflowId: string }[] {
  return fs
    .readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .sort()
    .map((file) => ({ file: path.join(dir, file), workflowId: replayWorkflowId(file.replace(/(\.run-\w+)?\.json$/, '')) }));
}

/** The histories kept from earlier workflow versions, labelled `<version>/<file>`. */
export function previousHistories(): { label: string; file: string; workflowId: string }[] {
  if (!fs.existsSync(PREVIOUS_DIR)) return [];
  return fs
    .readdirSync(PREVIOUS_DIR, { withFileTypes: true })
    .filter((d) => d.isDirectory())
    .map((d) => d.name)
    .sort()
    .flatMap((version) =>
      recordedHistories(path.join(PREVIOUS_DIR, version)).map((h) => ({ ...h, label: `${version}/${path.basename(h.file)}` })),
    );
}
