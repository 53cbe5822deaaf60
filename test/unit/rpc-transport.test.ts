import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Connection } from '@solana/web3.js';
import { rpcFetch } from '../../src/chain/rpc-transport';

/** The chain's JSON-RPC transport against a plain HTTP server of the test's own. */
describe('rpcFetch: web3.js Connection over node:http', () => {
  let server: http.Server;
  let url: string;
  const seen: { method?: string; contentType?: string; body: string }[] = [];
  let reply: (req: { method: string; id: number }, res: http.ServerResponse) => void;

  beforeAll(async () => {
    server = http.createServer((req, res) => {
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        seen.push({ method: req.method, contentType: req.headers['content-type'], body });
        reply(JSON.parse(body), res);
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  it('carries a Connection call and its answer', async () => {
    reply = (req, res) => res.end(JSON.stringify({ jsonrpc: '2.0', id: req.id, result: 4242 }));
    const connection = new Connection(url, { commitment: 'confirmed', fetch: rpcFetch as unknown as typeof fetch });
    expect(await connection.getBlockHeight()).toBe(4242);
    const last = seen[seen.length - 1];
    expect(last).toMatchObject({ method: 'POST', contentType: 'application/json' });
    expect(JSON.parse(last.body)).toMatchObject({ method: 'getBlockHeight' });
  });

  it('answers an HTTP error as a failed response with its status and body', async () => {
    reply = (_req, res) => {
      res.statusCode = 503;
      res.statusMessage = 'Service Unavailable';
      res.end('node is behind');
    };
    const response = await rpcFetch(url, { method: 'POST', body: '{"jsonrpc":"2.0","id":1,"method":"getHealth"}' });
    expect(response).toMatchObject({ ok: false, status: 503, statusText: 'Service Unavailable' });
    expect(await response.text()).toBe('node is behind');
    const connection = new Connection(url, { fetch: rpcFetch as unknown as typeof fetch, disableRetryOnRateLimit: true });
    await expect(connection.getBlockHeight()).rejects.toThrow(/503/);
  });

  it('rejects when nothing listens there', async () => {
    const closed = http.createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    await expect(rpcFetch(`http://127.0.0.1:${port}`, { body: '{}' })).rejects.toThrow(/ECONNREFUSED/);
  });
});
