// Apart from node.ts: workflow code reaches node.ts (through pricing), and a workflow may not import node:net.
import { isIP } from 'node:net';

/**
 * A node's host as registered (an IPv4 or IPv6 address, or a DNS name), normalized: brackets dropped, an
 * IPv4-mapped IPv6 address (what a dual-stack server sees of an IPv4 caller) as its IPv4. Undefined when it is
 * none of these.
 */
export function nodeHost(value: string): string | undefined {
  const v = value.startsWith('[') && value.endsWith(']') ? value.slice(1, -1) : value;
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(v);
  if (mapped && isIP(mapped[1]) === 4) return mapped[1];
  if (isIP(v) !== 0) return v;
  return v.length <= 253 && /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$/i.test(v) ? v : undefined;
}

/** `host:port` as gRPC and the Engine dial it: an IPv6 address in brackets. */
export function hostPort(host: string, port: number): string {
  return `${isIP(host) === 6 ? `[${host}]` : host}:${port}`;
}
