import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Client as TemporalClient, Connection } from '@temporalio/client';
import { defineSearchAttributeKey, SearchAttributeType } from '@temporalio/common';
import { Client } from 'pg';
import { startEmbeddedPostgres } from '../../src/infra/embedded-postgres';
import { getFreePort, isProcessAlive, waitForPidExit } from '../../src/infra/process';
import { listCustomSearchAttributes } from '../../src/infra/search-attributes';
import { findTemporalCli } from '../../src/infra/temporal-cli';
import { startTemporalDevServer } from '../../src/infra/temporal-dev-server';
import {
  createTestDatabase,
  dropTestDatabase,
  TEST_SEARCH_ATTRIBUTES,
  testDatabaseUrl,
  testTemporalAddress,
  testTemporalCli,
  testTemporalNamespace,
} from '../support/env';

const JOB_STATUS = defineSearchAttributeKey('JobStatus', SearchAttributeType.KEYWORD);
const ATTEMPT = defineSearchAttributeKey('Attempt', SearchAttributeType.INT);

async function query<T extends Record<string, unknown>>(url: string, sql: string, params: unknown[] = []): Promise<T[]> {
  const client = new Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<T>(sql, params)).rows;
  } finally {
    await client.end();
  }
}

/** A temp dir the `postgres` OS user can enter when the tests run as root. */
function makeTempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  fs.chmodSync(dir, 0o755);
  return dir;
}

describe('shared Postgres', () => {
  test('answers queries on TEST_DATABASE_URL', async () => {
    const [row] = await query<{ one: number }>(testDatabaseUrl(), 'SELECT 1 AS one');
    expect(row).toEqual({ one: 1 });
  });

  test('createTestDatabase gives every caller its own database', async () => {
    const a = await createTestDatabase();
    const b = await createTestDatabase('other');
    try {
      expect(a).not.toEqual(b);
      const [{ db }] = (await query<{ db: string }>(a, 'SELECT current_database() AS db')) as [{ db: string }];
      expect(db).toMatch(/^cyxwiz_t_[0-9a-f]+_infra_[0-9a-f]{8}$/);
      await query(a, 'CREATE TABLE only_in_a (id int)');
      const inB = await query(b, "SELECT 1 FROM pg_tables WHERE tablename = 'only_in_a'");
      expect(inB).toHaveLength(0);
    } finally {
      await dropTestDatabase(a);
      await dropTestDatabase(b);
    }
  });
});

describe('shared Temporal dev server', () => {
  test('has the project search attributes and indexes them', async () => {
    const connection = await Connection.connect({ address: testTemporalAddress() });
    try {
      const namespace = testTemporalNamespace();
      expect(await listCustomSearchAttributes(connection, namespace)).toMatchObject(TEST_SEARCH_ATTRIBUTES);

      // No worker polls this queue: the execution just sits there, which is enough for visibility.
      const client = new TemporalClient({ connection, namespace });
      const workflowId = `infra-test-${Date.now()}`;
      const handle = await client.workflow.start('infraProbe', {
        taskQueue: 'infra-test',
        workflowId,
        typedSearchAttributes: [
          { key: JOB_STATUS, value: 'probing' },
          { key: ATTEMPT, value: 3 },
        ],
      });
      try {
        let found: string[] = [];
        for (let i = 0; i < 50 && found.length === 0; i++) {
          found = [];
          for await (const wf of client.workflow.list({ query: `JobStatus = 'probing' AND Attempt = 3` })) {
            found.push(wf.workflowId);
          }
          if (found.length === 0) await new Promise((r) => setTimeout(r, 100));
        }
        expect(found).toContain(workflowId);
      } finally {
        await handle.terminate('infra test done');
      }
    } finally {
      await connection.close();
    }
  });

  test('TEST_TEMPORAL_CLI is the real binary, not a shim script', () => {
    const cli = testTemporalCli();
    expect(fs.readFileSync(cli).subarray(0, 2).toString('latin1')).not.toBe('#!');
    expect(() => findTemporalCli({ ...process.env, TEMPORAL_CLI: '/nonexistent/temporal' })).toThrow(/TEMPORAL_CLI/);
  });
});

describe('embedded Postgres', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('cyxwiz-pg-test-');
  });
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('keeps its data across a stop/start and a kill -9 of the postmaster', async () => {
    const dataDir = path.join(dir, 'data');
    const first = await startEmbeddedPostgres({ dataDir, port: await getFreePort(), database: 'keep', fast: true });
    try {
      await query(first.url, 'CREATE TABLE kept (v text)');
      await query(first.url, "INSERT INTO kept VALUES ('still here')");
    } finally {
      await first.stop();
    }
    expect(isProcessAlive(first.pid)).toBe(false);
    expect(await first.exited).toMatch(/^embedded Postgres exited with /); // asked to: no log tail

    const second = await startEmbeddedPostgres({ dataDir, port: await getFreePort(), database: 'keep', fast: true });
    try {
      expect(await query(second.url, 'SELECT v FROM kept')).toEqual([{ v: 'still here' }]);
    } finally {
      // A crash: postmaster.pid stays behind, and whoever started it hears of it (npm start then stops everything).
      process.kill(second.pid, 'SIGKILL');
      await waitForPidExit(second.pid, 5000);
      expect(await second.exited).toMatch(/^embedded Postgres .*SIGKILL[\s\S]*:\n/);
      await second.stop();
    }
    expect(fs.existsSync(path.join(dataDir, 'postmaster.pid'))).toBe(true);

    const third = await startEmbeddedPostgres({ dataDir, port: await getFreePort(), database: 'keep', fast: true });
    try {
      expect(await query(third.url, 'SELECT v FROM kept')).toEqual([{ v: 'still here' }]);
    } finally {
      await third.stop();
    }
  });

  const asRoot = process.getuid?.() === 0 ? test : test.skip;
  asRoot('as root, a data directory the postgres OS user cannot reach is refused, or kept where it can when a relocation is given (the same one each start)', async () => {
    const closed = path.join(dir, 'closed');
    fs.mkdirSync(closed, { mode: 0o700 });
    fs.chmodSync(closed, 0o700); // like /root
    const dataDir = path.join(closed, 'data', 'postgres');
    const port = await getFreePort();
    await expect(startEmbeddedPostgres({ dataDir, port, database: 'moved', fast: true })).rejects.toThrow(/cannot enter .*closed \(mode 700\)/);
    const relocate = path.join(dir, 'relocated');
    const first = await startEmbeddedPostgres({ dataDir, port, database: 'moved', fast: true, relocateWhenUnreachable: relocate });
    try {
      expect(first.dataDir.startsWith(`${relocate}${path.sep}`)).toBe(true);
      expect(fs.existsSync(path.join(first.dataDir, 'PG_VERSION'))).toBe(true);
      await query(first.url, 'CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)');
    } finally {
      await first.stop();
    }
    const second = await startEmbeddedPostgres({ dataDir, port, database: 'moved', fast: true, relocateWhenUnreachable: relocate });
    try {
      expect(second.dataDir).toBe(first.dataDir);
      expect(await query(second.url, 'SELECT n FROM kept')).toEqual([{ n: 7 }]);
    } finally {
      await second.stop();
    }
    // Made reachable later (chmod), it stays relocated: the next start must not begin an empty cluster.
    fs.chmodSync(closed, 0o755);
    const fourth = await startEmbeddedPostgres({ dataDir, port, database: 'moved', fast: true, relocateWhenUnreachable: relocate });
    try {
      expect(fourth.dataDir).toBe(first.dataDir);
      expect(await query(fourth.url, 'SELECT n FROM kept')).toEqual([{ n: 7 }]);
    } finally {
      await fourth.stop();
    }
    // A reachable one stays where it is.
    const open = path.join(dir, 'open', 'postgres');
    const third = await startEmbeddedPostgres({ dataDir: open, port, database: 'here', fast: true, relocateWhenUnreachable: relocate });
    try {
      expect(third.dataDir).toBe(open);
    } finally {
      await third.stop();
    }
  });

  test('dies with its Node process after a kill -9, and the next start works', async () => {
    const dataDir = path.join(dir, 'data');
    const port = await getFreePort();
    const script = path.join(dir, 'owner.ts');
    fs.writeFileSync(
      script,
      `import { startEmbeddedPostgres } from ${JSON.stringify(path.resolve(__dirname, '../../src/infra/embedded-postgres'))};\n` +
        `startEmbeddedPostgres({ dataDir: ${JSON.stringify(dataDir)}, port: ${port}, database: 'owned', fast: true })\n` +
        `  .then((pg) => { console.log('READY ' + pg.pid); setInterval(() => undefined, 1000); })\n` +
        `  .catch((err) => { console.error(err); process.exit(1); });\n`,
    );
    // One node process (tsx's require hook, not its CLI, which would add a parent process).
    const owner = spawn(process.execPath, ['--require', 'tsx/cjs', script], {
      cwd: path.resolve(__dirname, '../..'),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    owner.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    const postmaster = await new Promise<number>((resolve, reject) => {
      owner.stdout.on('data', (chunk: Buffer) => {
        output += chunk.toString();
        const match = /READY (\d+)/.exec(output);
        if (match) resolve(Number(match[1]));
      });
      owner.once('exit', (code) => reject(new Error(`owner exited with ${String(code)}: ${output}`)));
    });

    owner.kill('SIGKILL');
    expect(await waitForPidExit(postmaster, 15_000)).toBe(true);

    const again = await startEmbeddedPostgres({ dataDir, port, database: 'owned', fast: true });
    try {
      expect(await query(again.url, 'SELECT current_database() AS db')).toEqual([{ db: 'owned' }]);
    } finally {
      await again.stop();
    }
  });
});

describe('Temporal dev server with a db file', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('cyxwiz-temporal-test-');
  });
  afterEach(() => {
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('keeps workflow histories and search attributes across a restart', async () => {
    const dbFile = path.join(dir, 'temporal.db');
    const start = async () =>
      startTemporalDevServer({
        cli: testTemporalCli(),
        dbFile,
        port: await getFreePort(),
        namespace: 'cyxwiz-restart',
        headless: true,
        searchAttributes: TEST_SEARCH_ATTRIBUTES,
      });

    const first = await start();
    const workflowId = 'survives-restart';
    try {
      const connection = await Connection.connect({ address: first.address });
      try {
        const client = new TemporalClient({ connection, namespace: 'cyxwiz-restart' });
        await client.workflow.start('infraProbe', {
          taskQueue: 'infra-test',
          workflowId,
          typedSearchAttributes: [{ key: JOB_STATUS, value: 'persisted' }],
        });
      } finally {
        await connection.close();
      }
    } finally {
      await first.stop();
    }
    expect(isProcessAlive(first.pid)).toBe(false);

    const second = await start();
    try {
      const connection = await Connection.connect({ address: second.address });
      try {
        const client = new TemporalClient({ connection, namespace: 'cyxwiz-restart' });
        const description = await client.workflow.getHandle(workflowId).describe();
        expect(description.status.name).toBe('RUNNING');
        expect(description.typedSearchAttributes.get(JOB_STATUS)).toBe('persisted');
        expect(await listCustomSearchAttributes(connection, 'cyxwiz-restart')).toMatchObject(TEST_SEARCH_ATTRIBUTES);
      } finally {
        await connection.close();
      }
    } finally {
      await second.stop();
    }
  });

  test('fails clearly when the process exits early or the port is taken', async () => {
    await expect(
      startTemporalDevServer({
        cli: '/bin/false',
        port: await getFreePort(),
        namespace: 'default',
        headless: true,
        searchAttributes: {},
      }),
    ).rejects.toThrow(/exited with code 1 before it was ready/);

    const blocker = net.createServer();
    await new Promise<void>((resolve) => blocker.listen(0, '127.0.0.1', resolve));
    const { port } = blocker.address() as net.AddressInfo;
    try {
      await expect(
        startTemporalDevServer({ cli: testTemporalCli(), port, namespace: 'default', headless: true, searchAttributes: {} }),
      ).rejects.toThrow(/already in use/);
    } finally {
      await new Promise((resolve) => blocker.close(resolve));
    }
  });
});
