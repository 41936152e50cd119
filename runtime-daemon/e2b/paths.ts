/** Where the E2B API's files live in the state dir (shared by the daemon and the CLI). */
import * as path from 'node:path';

export interface E2bInfoFile {
  port: number;
  apiUrl: string;
  apiKeyFile: string;
}

export function e2bPaths(stateDir: string): { info: string; apiKey: string } {
  return { info: path.join(stateDir, 'e2b.json'), apiKey: path.join(stateDir, 'e2b-api-key') };
}
