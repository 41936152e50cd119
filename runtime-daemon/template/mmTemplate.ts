/**
 * The mm_template kernel module (kernel-modules/mm_template): is it loaded here, and which path do
 * restores take?
 *
 * The module gives true copy-on-write templates of any runtime (N instances share one copy of the
 * initialised memory). It cannot be loaded on the host this project is developed on (no module
 * support): there it is built and tested inside a QEMU guest (kernel-modules/test), where the Node
 * flow - CRIU restore, then remap the restored process's memory onto the template - runs with the
 * guest's own driver. The daemon itself restores through the userspace paths (fork zygote, CRIU
 * private copies, VM memory files); it says once which it is and tags every restore span with it.
 */
import * as fs from 'node:fs';

export const MMT_DEVICE = '/dev/mm_template';
/** must match MMT_ABI_VERSION in kernel-modules/mm_template/mm_template.h */
export const MMT_ABI_VERSION = 1;

export type MemPath = 'kernel-module' | 'userspace';

export interface MmTemplateStatus {
  /** /dev/mm_template exists (a character device) */
  loaded: boolean;
  /** the path restores take in this daemon */
  path: MemPath;
  /** one line for the log */
  message: string;
}

export function detectMmTemplate(device = MMT_DEVICE): MmTemplateStatus {
  let loaded = false;
  try {
    loaded = fs.statSync(device).isCharacterDevice();
  } catch {
    /* absent */
  }
  return loaded
    ? {
        loaded,
        path: 'userspace',
        message: `kernel module mm_template is loaded (${device}), but the daemon's restores do not use it yet: using userspace templates (the module path runs in kernel-modules/test)`,
      }
    : { loaded, path: 'userspace', message: 'kernel module not loaded; using userspace templates' };
}

let cached: MmTemplateStatus | undefined;

/** The status, detected once per process; `log` gets the message the first time only. */
export function mmTemplateStatus(log?: (message: string) => void): MmTemplateStatus {
  if (!cached) {
    cached = detectMmTemplate();
    log?.(cached.message);
  }
  return cached;
}
