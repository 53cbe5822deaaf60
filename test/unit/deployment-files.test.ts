import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parse } from 'yaml';
import { loadConfig } from '../../src/config';
import { DEV_SERVER_DYNAMIC_CONFIG } from '../../src/infra/temporal-dev-server';

const root = path.resolve(__dirname, '../..');
const read = (f: string) => readFileSync(path.join(root, f), 'utf8');

/** docker-compose.yml cannot run here (no Docker engine), so it is checked statically. */
describe('docker-compose.yml', () => {
  const compose = parse(read('docker-compose.yml')) as { services: Record<string, any> };
  const scripts = (JSON.parse(read('package.json')) as { scripts: Record<string, string> }).scripts;

  it('runs migrations, the worker and the API as separate services against Postgres and Temporal', () => {
    expect(Object.keys(compose.services)).toEqual(expect.arrayContaining(['postgres', 'temporal', 'migrate', 'worker', 'api']));
    for (const name of ['migrate', 'worker', 'api']) {
      const svc = compose.services[name];
      const script = svc.command[svc.command.length - 1];
      expect(scripts[script]).toBeDefined();
      expect(svc.environment.DATABASE_URL).toMatch(/^postgres:\/\/\w+:\w+@postgres:5432\/\w+$/);
    }
    for (const name of ['worker', 'api']) {
      expect(compose.services[name].environment.TEMPORAL_ADDRESS).toBe('temporal:7233');
      for (const v of ['SOLANA_RPC_URL', 'CYXWIZ_MINT', 'PLATFORM_TREASURY', 'ESCROW_AUTHORITY_SECRET']) {
        expect(compose.services[name].environment[v]).toBeDefined();
      }
      expect(compose.services[name].depends_on.migrate.condition).toBe('service_completed_successfully');
    }
  });

  it('publishes gRPC and REST (its operator routes behind a token), the Web UI to the host only, Temporal not at all; every environment value parses as our config', () => {
    expect(compose.services.api.ports).toEqual(['50051:50051', '8080:8080']);
    expect(compose.services.api.environment.REST_OPERATOR_TOKEN).toMatch(/^\$\{REST_OPERATOR_TOKEN:\?/);
    // On a public cluster, calls are authenticated: no default that turns authentication off.
    expect(compose.services.api.environment.AUTH_JWT_SECRET).toMatch(/^\$\{AUTH_JWT_SECRET:\?/);
    expect(compose.services['temporal-ui'].ports).toEqual(['127.0.0.1:8233:8080']);
    expect(compose.services.temporal.ports).toBeUndefined();
    for (const name of ['migrate', 'worker', 'api']) {
      const env = Object.fromEntries(
        Object.entries(compose.services[name].environment as Record<string, string>).map(([k, v]) => [k, String(v).replace(/\$\{\w+:-([^}]*)\}/, '$1').replace(/\$\{\w+:\?[^}]*\}/, 'required-from-the-environment')]),
      );
      expect(() => loadConfig(env)).not.toThrow();
    }
  });

  it('gives its Temporal server the dynamic config the embedded dev server gets', () => {
    const temporal = compose.services.temporal;
    const mount = (temporal.volumes as string[]).find((v) => v.startsWith('./deploy/temporal-dynamicconfig.yaml:'));
    expect(mount).toBeDefined();
    expect(`/etc/temporal/${temporal.environment.DYNAMIC_CONFIG_FILE_PATH}`).toBe(mount!.split(':')[1]);
    const file = parse(read('deploy/temporal-dynamicconfig.yaml')) as Record<string, { value: unknown }[]>;
    expect(Object.fromEntries(Object.entries(file).map(([key, values]) => [key, values[0].value]))).toEqual(DEV_SERVER_DYNAMIC_CONFIG);
  });

  it('builds from a Dockerfile that ships the protos and migrations the code loads', () => {
    const dockerfile = read('Dockerfile');
    for (const dir of ['proto', 'drizzle', 'src']) expect(dockerfile).toContain(`COPY ${dir} ./${dir}`);
  });
});
