// Unit tests touch no server: a slow one is a bug, not a cold start (jest 30 reads testTimeout only globally).
jest.setTimeout(10_000);
