import http from 'node:http';
import https from 'node:https';

/** What web3.js's Connection reads of a fetch response. */
interface RpcResponse {
  ok: boolean;
  status: number;
  statusText: string;
  text(): Promise<string>;
}

interface RpcRequestInit {
  method?: string;
  body?: string;
  headers?: Record<string, string>;
  /** The keep-alive agent web3.js creates for the endpoint. */
  agent?: http.Agent;
}

/** An RPC call that has not answered in this long is abandoned (the caller's retries decide what next). */
const RPC_TIMEOUT_MS = 60_000;

/**
 * The JSON-RPC transport for web3.js's `Connection` (its `fetch` option): node:http(s) over the keep-alive
 * agent web3.js made for the endpoint, instead of the global fetch. Each settlement makes several RPC calls,
 * and the global fetch's streams machinery cost several times the CPU of the request itself.
 */
export function rpcFetch(url: string, init: RpcRequestInit = {}): Promise<RpcResponse> {
  const target = new URL(url);
  const request = target.protocol === 'https:' ? https.request : http.request;
  return new Promise((resolve, reject) => {
    const req = request(target, { method: init.method ?? 'POST', headers: init.headers, agent: init.agent }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('error', reject);
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString('utf8');
        const status = res.statusCode ?? 0;
        resolve({ ok: status >= 200 && status < 300, status, statusText: res.statusMessage ?? '', text: async () => body });
      });
    });
    req.setTimeout(RPC_TIMEOUT_MS, () => req.destroy(new Error(`RPC request to ${target.host} timed out after ${RPC_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end(init.body);
  });
}
