import { readFileSync } from 'node:fs';
import type { TLSConfig } from '@temporalio/client';
import type { Config } from '../config';

/**
 * How the client and the worker reach the Temporal frontend: plain (the dev server, a cluster inside a private
 * network) or TLS, with a client certificate (mTLS) and/or an API key (Temporal Cloud). The PEM files are read
 * once, at start; a missing file stops the start naming its variable.
 */
export function temporalConnectionOptions(config: Config, address: string): { address: string; tls?: TLSConfig; apiKey?: string } {
  const t = config.temporal;
  if (!t.tls) return { address };
  const pem = (file: string, variable: string) => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new Error(`${variable}: cannot read ${file}: ${(err as Error).message}`);
    }
  };
  const tls: TLSConfig = {
    ...(t.tlsCert && t.tlsKey && { clientCertPair: { crt: pem(t.tlsCert, 'TEMPORAL_TLS_CERT'), key: pem(t.tlsKey, 'TEMPORAL_TLS_KEY') } }),
    ...(t.tlsCa && { serverRootCACertificate: pem(t.tlsCa, 'TEMPORAL_TLS_CA') }),
    ...(t.tlsServerName && { serverNameOverride: t.tlsServerName }),
  };
  return { address, tls, ...(t.apiKey && { apiKey: t.apiKey }) };
}
