// SPDX-License-Identifier: GPL-2.0
/*
 * trenv-mmt: the daemon's helper for the mm_template kernel module (runtime-daemon/template/mmTemplate.ts;
 * also used by the guest tests in kernel-modules/test). Node (or any runtime) instances through the
 * module, without changing the runtime:
 *
 *   trenv-mmt build PID MAPFILE         PID is stopped: copy its resident private anonymous memory
 *                                     (read through /proc/PID/mem) into one template; MAPFILE lists
 *                                     "addr len offset prot" runs for remap
 *   trenv-mmt remap MAPFILE PID [fault] PID is stopped and has the same layout (the template process
 *                                     itself, or a clone): map every run onto the template's file
 *                                     MMT_FS_DIR/<id> (MAP_PRIVATE|MAP_FIXED, prefaulted unless
 *                                     "fault"), replacing its private copies
 *   trenv-mmt delete MAPFILE          delete the template (freed when the last clone is gone)
 *
 * Which memory: writable private anonymous mappings (incl. [heap] and V8's heap spaces) with
 * their resident pages only; not [stack], not file mappings (already shared by the page cache).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include "../../kernel-modules/mm_template/mm_template.h"

#define PG 4096UL
#define MAX_RUNS 8192
#define GAP_PAGES 8	/* runs closer than this are merged (fewer VMAs; the gap is templated as zeros) */

struct run { unsigned long addr, len, off; int prot; };
static struct run runs[MAX_RUNS];
static int nruns;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void die(const char *msg)
{
	fprintf(stderr, "trenv-mmt: %s: %s\n", msg, strerror(errno));
	exit(1);
}

/* pages come in address order; merge only within one mapping (a gap between mappings is a hole) */
static void add_run(unsigned long region, unsigned long a, int prot)
{
	static unsigned long last_region = ~0UL;
	if (nruns && region == last_region) {
		struct run *r = &runs[nruns - 1];
		if (a - (r->addr + r->len) < GAP_PAGES * PG) { r->len = a + PG - r->addr; return; }
	}
	if (nruns == MAX_RUNS) { fprintf(stderr, "trenv-mmt: too many runs\n"); exit(1); }
	runs[nruns++] = (struct run){ a, PG, 0, prot };
	last_region = region;
}

static int build(int pid, const char *mapfile)
{
	char path[64], line[512];
	snprintf(path, sizeof path, "/proc/%d/maps", pid);
	FILE *maps = fopen(path, "r");
	if (!maps) die(path);
	snprintf(path, sizeof path, "/proc/%d/pagemap", pid);
	int pm = open(path, O_RDONLY);
	snprintf(path, sizeof path, "/proc/%d/mem", pid);
	int mem = open(path, O_RDONLY);
	if (pm < 0 || mem < 0) die("open pagemap/mem");
	unsigned long regions = 0, skipped = 0;
	while (fgets(line, sizeof line, maps)) {
		unsigned long a, e, off; char perms[8], dev[16]; unsigned long ino; char name[256] = "";
		if (sscanf(line, "%lx-%lx %7s %lx %15s %lu %255[^\n]", &a, &e, perms, &off, dev, &ino, name) < 6) continue;
		char *n = name; while (*n == ' ') n++;
		if (perms[0] != 'r' || perms[1] != 'w' || perms[3] != 'p' || ino != 0) continue;
		if (*n && strcmp(n, "[heap]")) { skipped++; continue; }	/* [stack], [vvar], ... */
		regions++;
		int prot = PROT_READ | PROT_WRITE | (perms[2] == 'x' ? PROT_EXEC : 0);
		/* resident pages only (pagemap bit 63 present, 62 swapped) */
		for (unsigned long p = a; p < e;) {
			uint64_t ent[512];
			size_t cnt = (e - p) / PG < 512 ? (e - p) / PG : 512;
			if (pread(pm, ent, cnt * 8, (p / PG) * 8) != (ssize_t)(cnt * 8)) die("pagemap");
			for (size_t i = 0; i < cnt; i++, p += PG) {
				if (!(ent[i] >> 62)) continue;
				add_run(regions, p, prot);
			}
		}
	}
	fclose(maps);
	unsigned long total = 0;
	for (int i = 0; i < nruns; i++) { runs[i].off = total; total += runs[i].len; }
	unsigned char *buf = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) die("mmap buffer");
	for (int i = 0; i < nruns; i++)
		if (pread(mem, buf + runs[i].off, runs[i].len, runs[i].addr) != (ssize_t)runs[i].len) die("read /proc/PID/mem");
	int fd = open(MMT_DEVICE, O_RDWR | O_CLOEXEC);
	if (fd < 0) die(MMT_DEVICE);
	uint32_t v = 0;
	if (ioctl(fd, MMT_IOC_VERSION, &v) || v != MMT_ABI_VERSION) { fprintf(stderr, "trenv-mmt: module ABI %u, want %d\n", v, MMT_ABI_VERSION); return 1; }
	struct mmt_create c = { .addr = (uintptr_t)buf, .len = total };
	double t0 = now_ms();
	if (ioctl(fd, MMT_IOC_CREATE, &c)) die("MMT_IOC_CREATE");
	double dt = now_ms() - t0;
	FILE *out = fopen(mapfile, "w");
	fprintf(out, "id %u runs %d bytes %lu\n", c.id, nruns, total);
	for (int i = 0; i < nruns; i++) fprintf(out, "%lx %lx %lx %d\n", runs[i].addr, runs[i].len, runs[i].off, runs[i].prot);
	fclose(out);
	printf("template %u: %lu KiB in %d runs from %lu regions (skipped %lu named), created in %.1f ms\n", c.id, total >> 10, nruns, regions, skipped, dt);
	return 0;
}

static uint32_t read_map(const char *mapfile)
{
	FILE *f = fopen(mapfile, "r");
	if (!f) die(mapfile);
	uint32_t id; unsigned long bytes;
	if (fscanf(f, "id %u runs %d bytes %lu\n", &id, &nruns, &bytes) != 3 || nruns > MAX_RUNS) { fprintf(stderr, "trenv-mmt: bad map file\n"); exit(1); }
	for (int i = 0; i < nruns; i++)
		if (fscanf(f, "%lx %lx %lx %d\n", &runs[i].addr, &runs[i].len, &runs[i].off, &runs[i].prot) != 4) { fprintf(stderr, "trenv-mmt: bad map file\n"); exit(1); }
	fclose(f);
	return id;
}

/*
 * Map every run of MAPFILE onto the template in the stopped process PID, through the template's
 * file (MMT_FS_DIR/<id> inside PID's root), so its maps name that file: a CRIU checkpoint of it then records file
 * mappings instead of copying the pages, and a restore maps the file again.
 */
static int remap(const char *mapfile, int pid, int prefault)
{
	uint32_t id = read_map(mapfile);
	/*
	 * The file as the target sees it (through its root: a sandbox binds MMT_FS_DIR), so the mapping's
	 * mount is one in the target's mount namespace, where CRIU, dumping from inside, looks it up.
	 */
	char path[96];
	snprintf(path, sizeof path, "/proc/%d/root" MMT_FS_DIR "/%u", pid, id);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) die(path);
	double t0 = now_ms();
	for (int i = 0; i < nruns; i++) {
		struct mmt_map_pid mp = { .id = id, .flags = prefault ? MMT_MAP_PREFAULT : 0, .pid = pid, .prot = runs[i].prot,
					  .addr = runs[i].addr, .len = runs[i].len, .offset = runs[i].off };
		if (ioctl(fd, MMT_IOC_MAP_PID, &mp)) die("MMT_IOC_MAP_PID");
	}
	printf("remapped %d runs onto %s in %.1f ms\n", nruns, path, now_ms() - t0);
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 4 && !strcmp(argv[1], "build")) return build(atoi(argv[2]), argv[3]);
	if ((argc == 4 || argc == 5) && !strcmp(argv[1], "remap")) return remap(argv[2], atoi(argv[3]), !(argc == 5 && !strcmp(argv[4], "fault")));
	if (argc == 3 && !strcmp(argv[1], "delete")) {
		uint32_t id = read_map(argv[2]);
		int fd = open(MMT_DEVICE, O_RDWR | O_CLOEXEC);
		if (fd < 0 || ioctl(fd, MMT_IOC_DELETE, &id)) die("MMT_IOC_DELETE");
		return 0;
	}
	fprintf(stderr, "usage: trenv-mmt build PID MAPFILE | remap MAPFILE PID [fault] | delete MAPFILE\n");
	return 2;
}
