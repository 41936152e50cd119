/** The agent folder (the one with a trenv.json) that owns a file: its folder or up to 3 parents. */
import * as fs from 'node:fs';
import * as path from 'node:path';

export function agentDirOf(file: string): string | undefined {
  let d = path.dirname(file);
  for (let i = 0; i < 4; i++) {
    if (fs.existsSync(path.join(d, 'trenv.json'))) return d;
    const up = path.dirname(d);
    if (up === d) break;
    d = up;
  }
  return undefined;
}
