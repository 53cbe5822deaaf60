import { isGrpcServiceError, type Connection } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import { SEARCH_ATTRIBUTE_TYPES } from '../workflows/search-attributes';
import { sleep } from './process';

/** Search attribute types as spelled by the Temporal CLI (`--search-attribute Name=Type`). */
export type SearchAttributeTypeName = 'Keyword' | 'Text' | 'Int' | 'Double' | 'Bool' | 'Datetime' | 'KeywordList';

/** Custom search attributes by name. */
export type SearchAttributeDefinitions = Readonly<Record<string, SearchAttributeTypeName>>;

const IndexedValueType = temporal.api.enums.v1.IndexedValueType;

const INDEXED_VALUE_TYPES: Readonly<Record<SearchAttributeTypeName, temporal.api.enums.v1.IndexedValueType>> = {
  Keyword: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
  Text: IndexedValueType.INDEXED_VALUE_TYPE_TEXT,
  Int: IndexedValueType.INDEXED_VALUE_TYPE_INT,
  Double: IndexedValueType.INDEXED_VALUE_TYPE_DOUBLE,
  Bool: IndexedValueType.INDEXED_VALUE_TYPE_BOOL,
  Datetime: IndexedValueType.INDEXED_VALUE_TYPE_DATETIME,
  KeywordList: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
};

const GRPC_ALREADY_EXISTS = 6;

/** Maps a CLI type name to Temporal's `IndexedValueType`. */
export function toIndexedValueType(type: SearchAttributeTypeName): temporal.api.enums.v1.IndexedValueType {
  return INDEXED_VALUE_TYPES[type];
}

function typeName(value: temporal.api.enums.v1.IndexedValueType | null | undefined): string {
  const entry = Object.entries(INDEXED_VALUE_TYPES).find(([, v]) => v === value);
  return entry ? entry[0] : `IndexedValueType(${String(value)})`;
}

/** Custom search attributes currently registered in `namespace`, as CLI type names where known. */
export async function listCustomSearchAttributes(
  connection: Connection,
  namespace: string,
): Promise<Record<string, string>> {
  const response = await connection.operatorService.listSearchAttributes({ namespace });
  const result: Record<string, string> = {};
  for (const [name, type] of Object.entries(response.customAttributes ?? {})) result[name] = typeName(type);
  return result;
}

/**
 * Registers the missing custom search attributes on an external cluster (idempotent: existing ones with the
 * same type are left alone, a concurrent AlreadyExists is tolerated), then waits until all are listed.
 * @throws Error when an attribute already exists with another type, or the attributes do not appear within `timeoutMs`.
 */
export async function ensureSearchAttributes(
  connection: Connection,
  namespace: string,
  attrs: SearchAttributeDefinitions,
  opts: { timeoutMs?: number } = {},
): Promise<{ added: string[] }> {
  const existing = await listCustomSearchAttributes(connection, namespace);
  const conflicts = Object.entries(attrs)
    .filter(([name, type]) => existing[name] !== undefined && existing[name] !== type)
    .map(([name, type]) => `${name} is ${existing[name]}, wanted ${type}`);
  if (conflicts.length > 0) {
    throw new Error(`search attributes in namespace ${namespace} have conflicting types: ${conflicts.join('; ')}`);
  }

  const missing = Object.keys(attrs).filter((name) => existing[name] === undefined);
  if (missing.length === 0) return { added: [] };

  const searchAttributes: Record<string, temporal.api.enums.v1.IndexedValueType> = {};
  for (const name of missing) searchAttributes[name] = toIndexedValueType(attrs[name]!);
  try {
    await connection.operatorService.addSearchAttributes({ namespace, searchAttributes });
  } catch (err) {
    if (!(isGrpcServiceError(err) && err.code === GRPC_ALREADY_EXISTS)) throw err;
  }

  // Elasticsearch-backed visibility registers asynchronously; SQL visibility is immediate.
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  for (;;) {
    const now = await listCustomSearchAttributes(connection, namespace);
    const stillMissing = missing.filter((name) => now[name] === undefined);
    if (stillMissing.length === 0) return { added: missing };
    if (Date.now() >= deadline) {
      throw new Error(`search attributes not visible in namespace ${namespace} after adding: ${stillMissing.join(', ')}`);
    }
    await sleep(250);
  }
}

/** gRPC codes of a cluster that does not let this client manage search attributes (Temporal Cloud, a locked-down role). */
const GRPC_PERMISSION_DENIED = 7;
const GRPC_UNIMPLEMENTED = 12;

/**
 * Registers the job and reservation search attributes where they are missing, as `npm run start:worker` and
 * `start:api` do on an external cluster. A cluster that does not allow it (Temporal Cloud registers them with
 * `tcld`, a role without operator rights) gets a warning naming what to register, not a failed start.
 */
export async function registerSearchAttributes(
  connection: Connection,
  namespace: string,
  log: { info(obj: object, msg: string): void; warn(obj: object, msg: string): void },
): Promise<void> {
  try {
    const { added } = await ensureSearchAttributes(connection, namespace, SEARCH_ATTRIBUTE_TYPES);
    if (added.length > 0) log.info({ added }, 'registered search attributes');
  } catch (err) {
    if (!(isGrpcServiceError(err) && (err.code === GRPC_PERMISSION_DENIED || err.code === GRPC_UNIMPLEMENTED))) throw err;
    const wanted = Object.entries(SEARCH_ATTRIBUTE_TYPES).map(([name, type]) => `${name}=${type}`).join(' ');
    log.warn({ namespace, err: err.message }, `cannot register search attributes here; register them yourself: ${wanted}`);
  }
}
