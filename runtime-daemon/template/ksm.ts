/**
 * Optional KSM for CRIU-restored instances (TRENV_KSM=1). CRIU gives every instance a private copy
 * of its template's memory; on a stock kernel the only way to share those identical pages again is
 * KSM: the restore runs under `trenv-enter ksm` (prctl PR_SET_MEMORY_MERGE, inherited by the
 * restored task), and ksmd merges equal pages of all instances in the background. The cost is
 * ksmd's CPU and the delay until it has scanned them (measured by `npm run bench -- ksm`); merged
 * pages are write-protected and copied again on the next write.
 *
 * KSM is host-wide: the daemon switches ksmd on (`/sys/kernel/mm/ksm/run` = 1) only when asked,
 * only marks its own restored instances, and puts the previous value back when it stops.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { procStatFields } from '../metrics/smaps';

const KSM = '/sys/kernel/mm/ksm';

export interface KsmCounters {
  /** KSM pages in use (each backs many mappings) */
  pagesShared: number;
  /** mappings served by those pages: how many pages are saved */
  pagesSharing: number;
  fullScans: number;
  /** bytes saved minus KSM's own metadata (Linux 6.1+) */
  generalProfit: number;
}

function readNum(name: string): number {
  try {
    return Number(fs.readFileSync(path.join(KSM, name), 'utf8').trim());
  } catch {
    return NaN;
  }
}

export function ksmCounters(): KsmCounters {
  return { pagesShared: readNum('pages_shared'), pagesSharing: readNum('pages_sharing'), fullScans: readNum('full_scans'), generalProfit: readNum('general_profit') };
}

/** The ksmd kernel thread's CPU time so far (ms), for the cost of merging. */
export function ksmdCpuMs(): number {
  for (const p of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(p)) continue;
    try {
      if (fs.readFileSync(`/proc/${p}/comm`, 'utf8').trim() !== 'ksmd') continue;
    } catch {
      continue; // gone
    }
    const f = procStatFields(p);
    if (f) return ((Number(f[11]) + Number(f[12])) * 1000) / 100; // utime + stime, USER_HZ = 100
  }
  return NaN;
}

export class KsmControl {
  private constructor(
    private readonly previousRun: string,
    private readonly previousPages: string,
    /** argv prefix that makes a process (and what it execs and forks) mergeable */
    readonly prefix: string[],
  ) {}

  /**
   * Switches ksmd on for this daemon's life. Throws with the reason when this kernel cannot
   * (no /sys/kernel/mm/ksm, prctl refused). `pagesToScan` sets ksmd's pages per 20 ms wake-up.
   */
  static enable(enterPath: string, pagesToScan?: number): KsmControl {
    if (!fs.existsSync(path.join(KSM, 'run'))) throw new Error('this kernel has no KSM (/sys/kernel/mm/ksm is missing)');
    const probe = spawnSync(enterPath, ['ksm', '--', '/bin/true'], { encoding: 'utf8', timeout: 5000 });
    if (probe.status !== 0) throw new Error(`PR_SET_MEMORY_MERGE is refused here: ${(probe.stderr || probe.error?.message || '').trim()}`);
    const previousRun = fs.readFileSync(path.join(KSM, 'run'), 'utf8').trim();
    const previousPages = fs.readFileSync(path.join(KSM, 'pages_to_scan'), 'utf8').trim();
    fs.writeFileSync(path.join(KSM, 'run'), '1');
    if (pagesToScan && pagesToScan > 0) fs.writeFileSync(path.join(KSM, 'pages_to_scan'), String(Math.round(pagesToScan)));
    return new KsmControl(previousRun, previousPages, [enterPath, 'ksm', '--']);
  }

  /** Puts ksmd back as it was (merged pages stay merged until they are written or freed). */
  disable(): void {
    try {
      fs.writeFileSync(path.join(KSM, 'pages_to_scan'), this.previousPages);
      fs.writeFileSync(path.join(KSM, 'run'), this.previousRun === '1' ? '1' : '0');
    } catch {
      /* not ours to fix */
    }
  }
}
