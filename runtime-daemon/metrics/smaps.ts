/**
 * Memory of processes from /proc/<pid>/smaps_rollup: RSS, PSS, shared and private (kB).
 * PSS is what makes sharing visible: a page shared by N processes counts 1/N in each.
 */
import * as fs from 'node:fs';
import type { MemorySample } from '../protocol/messages';

export interface Rollup {
  rssKb: number;
  pssKb: number;
  sharedKb: number;
  privateKb: number;
}

const FIELDS: Record<string, keyof Rollup | 'sc' | 'sd' | 'pc' | 'pd'> = {
  Rss: 'rssKb',
  Pss: 'pssKb',
  Shared_Clean: 'sc',
  Shared_Dirty: 'sd',
  Private_Clean: 'pc',
  Private_Dirty: 'pd',
};

export function parseSmapsRollup(text: string): Rollup {
  const v: Record<string, number> = { rssKb: 0, pssKb: 0, sc: 0, sd: 0, pc: 0, pd: 0 };
  for (const line of text.split('\n')) {
    const m = /^(\w+):\s+(\d+) kB/.exec(line);
    if (!m) continue;
    const key = FIELDS[m[1]];
    if (key) v[key] = Number(m[2]);
  }
  return { rssKb: v.rssKb, pssKb: v.pssKb, sharedKb: v.sc + v.sd, privateKb: v.pc + v.pd };
}

export function readRollup(pid: number): Rollup | undefined {
  try {
    return parseSmapsRollup(fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
  } catch {
    return undefined; // exited between listing and reading
  }
}

/** Sums the rollups of `pids` into one sample. */
export function sampleProcesses(pids: number[], cgroupBytes?: number): MemorySample {
  const s: MemorySample = { t: Date.now(), rssKb: 0, pssKb: 0, sharedKb: 0, privateKb: 0, processes: 0, cgroupBytes };
  for (const pid of pids) {
    const r = readRollup(pid);
    if (!r) continue;
    s.rssKb += r.rssKb;
    s.pssKb += r.pssKb;
    s.sharedKb += r.sharedKb;
    s.privateKb += r.privateKb;
    s.processes++;
  }
  return s;
}

export function addSamples(a: MemorySample, b: MemorySample): MemorySample {
  return {
    t: Math.max(a.t, b.t),
    rssKb: a.rssKb + b.rssKb,
    pssKb: a.pssKb + b.pssKb,
    sharedKb: a.sharedKb + b.sharedKb,
    privateKb: a.privateKb + b.privateKb,
    processes: a.processes + b.processes,
    cgroupBytes: (a.cgroupBytes ?? 0) + (b.cgroupBytes ?? 0),
  };
}

export function emptySample(): MemorySample {
  return { t: Date.now(), rssKb: 0, pssKb: 0, sharedKb: 0, privateKb: 0, processes: 0, cgroupBytes: 0 };
}

/**
 * The fields of /proc/<pid>/stat after the command name, so index 0 is field 3 (state), 1 ppid,
 * 3 session, 11 utime, 12 stime (clock ticks); undefined when the process is gone. The name is
 * cut at the LAST ")": it may itself hold spaces and parentheses.
 */
export function procStatFields(pid: number | string): string[] | undefined {
  try {
    const st = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return st.slice(st.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}
