// SPDX-License-Identifier: GPL-2.0
/*
 * Guest tests of /dev/mm_template. Prints "PASS <name>" / "FAIL <name>: why" and
 * "METRIC <name> <value>" lines that kernel-modules/test/run-guest-tests.sh parses.
 *   mmt_test all        every test (the filesystem must be mounted at MMT_FS_DIR)
 *   mmt_test hold FILE  map a template, write FILE when mapped, sleep until killed (rmmod test)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "../mm_template/mm_template.h"

#define PG 4096UL
static int failures;
#define FAIL(name, ...) do { printf("FAIL %s: ", name); printf(__VA_ARGS__); printf("\n"); failures++; } while (0)
#define PASS(name) printf("PASS %s\n", name)

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int dev(void)
{
	int fd = open(MMT_DEVICE, O_RDWR | O_CLOEXEC);
	if (fd < 0) { perror("open " MMT_DEVICE); exit(2); }
	return fd;
}

/* a template of len bytes whose page i is filled with byte (seed + i) */
static uint32_t make_template(int fd, size_t len, int seed)
{
	unsigned char *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t i = 0; i < len / PG; i++) memset(buf + i * PG, (unsigned char)(seed + i), PG);
	struct mmt_create c = { .addr = (uintptr_t)buf, .len = len };
	int r = ioctl(fd, MMT_IOC_CREATE, &c);
	munmap(buf, len);
	if (r) { perror("MMT_IOC_CREATE"); return 0; }
	return c.id;
}

static void *map_tmpl(int fd, uint32_t id, size_t len, uint32_t flags, int prot)
{
	struct mmt_select s = { .id = id, .flags = flags };
	if (ioctl(fd, MMT_IOC_SELECT, &s)) return MAP_FAILED;
	return mmap(NULL, len, prot, MAP_PRIVATE, fd, 0);
}

static int check_pattern(const unsigned char *p, size_t len, int seed)
{
	for (size_t i = 0; i < len / PG; i++)
		for (size_t j = 0; j < PG; j += 512)
			if (p[i * PG + j] != (unsigned char)(seed + i)) return -1;
	return 0;
}

/* smaps fields (kB) of the mapping that starts at addr in /proc/self/smaps */
struct smaps { long rss, pss, shared_clean, private_dirty, anon; };
static struct smaps smaps_of(void *addr)
{
	struct smaps s = {0};
	char line[512], want[64];
	FILE *f = fopen("/proc/self/smaps", "r");
	int in = 0;
	snprintf(want, sizeof want, "%lx-", (unsigned long)addr);
	while (fgets(line, sizeof line, f)) {
		unsigned long a, b;
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2) in = 0;	/* the next mapping's header */
		if (!strncmp(line, want, strlen(want))) { in = 1; continue; }
		if (!in) continue;
		sscanf(line, "Rss: %ld", &s.rss); sscanf(line, "Pss: %ld", &s.pss);
		sscanf(line, "Shared_Clean: %ld", &s.shared_clean); sscanf(line, "Private_Dirty: %ld", &s.private_dirty);
		sscanf(line, "Anonymous: %ld", &s.anon);
	}
	fclose(f);
	return s;
}

static long meminfo(const char *key)
{
	char line[256]; long v = -1; size_t n = strlen(key);
	FILE *f = fopen("/proc/meminfo", "r");
	while (fgets(line, sizeof line, f)) if (!strncmp(line, key, n) && line[n] == ':') v = atol(line + n + 1);
	fclose(f);
	return v;
}

static long debugfs_stat(const char *key)
{
	char line[256]; long v = -1; size_t n = strlen(key);
	FILE *f = fopen("/sys/kernel/debug/mm_template/stats", "r");
	if (!f) return -1;
	while (fgets(line, sizeof line, f)) if (!strncmp(line, key, n) && line[n] == ' ') v = atol(line + n + 1);
	fclose(f);
	return v;
}

static void t_abi(int fd)
{
	uint32_t v = 0;
	if (ioctl(fd, MMT_IOC_VERSION, &v) || v != MMT_ABI_VERSION) FAIL("abi_version", "got %u errno %d", v, errno);
	else PASS("abi_version");
}

/* N processes map one template and read all of it: PSS ~ size/N, all Shared_Clean, no anon */
static void t_share(int fd, int n, uint32_t flags, const char *name)
{
	size_t len = 16 << 20;
	uint32_t id = make_template(fd, len, 7);
	int up[2], go[2], go2[2], res[2];
	pipe(up); pipe(go); pipe(go2); pipe(res);
	for (int i = 0; i < n; i++) {
		if (fork() == 0) {
			unsigned char *p = map_tmpl(fd, id, len, flags, PROT_READ | PROT_WRITE);
			char c = 0;
			if (p == MAP_FAILED || check_pattern(p, len, 7)) c = 'E';
			write(up[1], &c, 1);
			read(go[0], &c, 1);	/* all mapped now */
			struct smaps s = smaps_of(p);
			write(res[1], &s, sizeof s);
			read(go2[0], &c, 1);
			_exit(0);
		}
	}
	int bad = 0; char c;
	for (int i = 0; i < n; i++) { read(up[0], &c, 1); if (c) bad++; }
	for (int i = 0; i < n; i++) write(go[1], "x", 1);
	long pss_sum = 0; struct smaps s = {0};
	for (int i = 0; i < n; i++) { read(res[0], &s, sizeof s); pss_sum += s.pss; if (s.shared_clean < (long)(len >> 10) || s.anon) bad++; }
	for (int i = 0; i < n; i++) write(go2[1], "x", 1);
	while (wait(NULL) > 0) {}
	struct mmt_query q = { .id = id };
	ioctl(fd, MMT_IOC_QUERY, &q);
	ioctl(fd, MMT_IOC_DELETE, &id);
	long want = (len >> 10) / n;
	printf("METRIC %s.pss_kb_per_process %ld\nMETRIC %s.shared_clean_kb %ld\n", name, pss_sum / n, name, s.shared_clean);
	if (bad || labs(pss_sum / n - want) > want / 20 + 8) FAIL(name, "bad=%d pss/proc=%ld kB want %ld shared_clean=%ld anon=%ld", bad, pss_sum / n, want, s.shared_clean, s.anon);
	else PASS(name);
}

/* a write in one mapper is private: the other mapper and the template keep the old bytes */
static void t_cow(int fd, uint32_t flags, const char *name)
{
	size_t len = 1 << 20;
	uint32_t id = make_template(fd, len, 40);
	unsigned char *a = map_tmpl(fd, id, len, flags, PROT_READ | PROT_WRITE);
	unsigned char *b = map_tmpl(fd, id, len, flags, PROT_READ | PROT_WRITE);
	int bad = (a == MAP_FAILED || b == MAP_FAILED);
	if (!bad) {
		volatile unsigned char x = b[5 * PG]; (void)x;
		a[5 * PG] = 0xEE;
		pid_t pid = fork();	/* fork: both sides COW again */
		if (pid == 0) { a[6 * PG] = 0xDD; _exit(a[5 * PG] == 0xEE && b[5 * PG] == 45 ? 0 : 1); }
		int st; waitpid(pid, &st, 0);
		if (!WIFEXITED(st) || WEXITSTATUS(st)) bad |= 2;
		if (b[5 * PG] != 45 || a[5 * PG] != 0xEE || a[6 * PG] != 46) bad |= 4;
		unsigned char *c = map_tmpl(fd, id, len, 0, PROT_READ);
		if (c == MAP_FAILED || check_pattern(c, len, 40)) bad |= 8;
		struct smaps s = smaps_of(a);
		if (s.private_dirty != 4) bad |= 16;	/* exactly one page copied */
		/* semantics the runtime meets: DONTNEED brings back TEMPLATE bytes, MADV_FREE is refused */
		madvise(a + 5 * PG, PG, MADV_DONTNEED);
		if (a[5 * PG] != 45) bad |= 32;
		if (madvise(a, PG, MADV_FREE) == 0 || errno != EINVAL) bad |= 64;
		munmap(c, len);
	}
	munmap(a, len); munmap(b, len);
	ioctl(fd, MMT_IOC_DELETE, &id);
	if (bad) FAIL(name, "bits %#x", bad); else PASS(name);
}

static int expect_err(const char *what, int r, int err)
{
	if (r != -1 || errno != err) { printf("  %s: got r=%d errno=%d want errno %d\n", what, r, errno, err); return 1; }
	return 0;
}

static void t_validation(int fd)
{
	int bad = 0;
	uint32_t id = make_template(fd, 4 * PG, 1);
	unsigned char *buf = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct mmt_create c;
	c = (struct mmt_create){ .addr = (uintptr_t)buf, .len = 0 }; bad += expect_err("create len 0", ioctl(fd, MMT_IOC_CREATE, &c), EINVAL);
	c = (struct mmt_create){ .addr = (uintptr_t)buf + 1, .len = PG }; bad += expect_err("create unaligned addr", ioctl(fd, MMT_IOC_CREATE, &c), EINVAL);
	c = (struct mmt_create){ .addr = (uintptr_t)buf, .len = PG + 1 }; bad += expect_err("create unaligned len", ioctl(fd, MMT_IOC_CREATE, &c), EINVAL);
	c = (struct mmt_create){ .addr = (uintptr_t)buf, .len = 1ULL << 40 }; bad += expect_err("create 1 TiB", ioctl(fd, MMT_IOC_CREATE, &c), EINVAL);
	c = (struct mmt_create){ .addr = 0, .len = PG }; bad += expect_err("create NULL", ioctl(fd, MMT_IOC_CREATE, &c), EFAULT);
	c = (struct mmt_create){ .addr = 0xffff888000000000ULL, .len = PG }; bad += expect_err("create kernel addr", ioctl(fd, MMT_IOC_CREATE, &c), EFAULT);
	c = (struct mmt_create){ .addr = (uintptr_t)buf, .len = 8 * PG }; bad += expect_err("create partly unmapped", ioctl(fd, MMT_IOC_CREATE, &c), EFAULT);
	c = (struct mmt_create){ .addr = (uintptr_t)buf, .len = PG, .flags = 2 }; bad += expect_err("create flags", ioctl(fd, MMT_IOC_CREATE, &c), EINVAL);
	bad += expect_err("create bad ptr", ioctl(fd, MMT_IOC_CREATE, (void *)8), EFAULT);
	{	/* the id cannot be written back: the template is taken back, nothing stays */
		struct mmt_create *roc = mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		*roc = (struct mmt_create){ .addr = (uintptr_t)buf, .len = PG };
		mprotect(roc, PG, PROT_READ);
		long l0 = debugfs_stat("pages_live");
		bad += expect_err("create, result not writable", ioctl(fd, MMT_IOC_CREATE, roc), EFAULT);
		if (debugfs_stat("pages_live") != l0) { printf("  create with an unwritable result kept its pages\n"); bad++; }
		munmap(roc, PG);
	}
	struct mmt_select s;
	s = (struct mmt_select){ .id = 0 }; bad += expect_err("select id 0", ioctl(fd, MMT_IOC_SELECT, &s), EINVAL);
	s = (struct mmt_select){ .id = 999999 }; bad += expect_err("select unknown", ioctl(fd, MMT_IOC_SELECT, &s), ENOENT);
	s = (struct mmt_select){ .id = 0xffffffff }; bad += expect_err("select huge id", ioctl(fd, MMT_IOC_SELECT, &s), EINVAL);
	s = (struct mmt_select){ .id = id, .flags = 0x80 }; bad += expect_err("select flags", ioctl(fd, MMT_IOC_SELECT, &s), EINVAL);
	uint32_t nid = 424242; bad += expect_err("delete unknown", ioctl(fd, MMT_IOC_DELETE, &nid), ENOENT);
	struct mmt_query q = { .id = 424242 }; bad += expect_err("query unknown", ioctl(fd, MMT_IOC_QUERY, &q), ENOENT);
	bad += expect_err("unknown ioctl", ioctl(fd, _IO(MMT_IOC_MAGIC, 77), 0), ENOTTY);
	int fd2 = dev();
	bad += expect_err("mmap without select", mmap(NULL, PG, PROT_READ, MAP_PRIVATE, fd2, 0) == MAP_FAILED ? -1 : 0, ENXIO);
	s = (struct mmt_select){ .id = id }; ioctl(fd2, MMT_IOC_SELECT, &s);
	bad += expect_err("mmap past end", mmap(NULL, 8 * PG, PROT_READ, MAP_PRIVATE, fd2, 0) == MAP_FAILED ? -1 : 0, EINVAL);
	bad += expect_err("mmap offset past end", mmap(NULL, PG, PROT_READ, MAP_PRIVATE, fd2, 4 * PG) == MAP_FAILED ? -1 : 0, EINVAL);
	bad += expect_err("mmap shared writable", mmap(NULL, PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd2, 0) == MAP_FAILED ? -1 : 0, EACCES);
	unsigned char *ro = mmap(NULL, PG, PROT_READ, MAP_SHARED, fd2, 0);
	if (ro == MAP_FAILED) { printf("  shared read-only map refused\n"); bad++; }
	else { bad += expect_err("mprotect shared RW", mprotect(ro, PG, PROT_READ | PROT_WRITE), EACCES); munmap(ro, PG); }
	struct mmt_map_pid mp = { .id = id, .pid = getpid(), .prot = PROT_READ, .addr = (uintptr_t)buf, .len = PG };
	bad += expect_err("map_pid running task", ioctl(fd2, MMT_IOC_MAP_PID, &mp), EBUSY);
	mp.addr += 1; bad += expect_err("map_pid unaligned", ioctl(fd2, MMT_IOC_MAP_PID, &mp), EINVAL);
	mp.addr -= 1; mp.pid = 0; bad += expect_err("map_pid pid 0", ioctl(fd2, MMT_IOC_MAP_PID, &mp), EINVAL);
	mp.pid = 999999; bad += expect_err("map_pid no such pid", ioctl(fd2, MMT_IOC_MAP_PID, &mp), ESRCH);
	mp.pid = getpid(); mp.prot = 0x100; bad += expect_err("map_pid bad prot", ioctl(fd2, MMT_IOC_MAP_PID, &mp), EINVAL);
	close(fd2);
	/* templates of another user */
	pid_t pid = fork();
	if (pid == 0) {
		if (setuid(1000)) _exit(9);
		int b = 0, f = dev();
		struct mmt_select s2 = { .id = id }; b += expect_err("other user select", ioctl(f, MMT_IOC_SELECT, &s2), EPERM);
		struct mmt_query q2 = { .id = id }; b += expect_err("other user query", ioctl(f, MMT_IOC_QUERY, &q2), EPERM);
		uint32_t i2 = id; b += expect_err("other user delete", ioctl(f, MMT_IOC_DELETE, &i2), EPERM);
		_exit(b);
	}
	int st; waitpid(pid, &st, 0);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) { printf("  other-user checks failed (%d)\n", st); bad++; }
	ioctl(fd, MMT_IOC_DELETE, &id);
	munmap(buf, 4 * PG);
	if (bad) FAIL("validation", "%d checks failed", bad); else PASS("validation");
}

/* delete while mapped: the mapping stays valid; pages go at the last munmap */
static void t_delete_mapped(int fd0)
{
	(void)fd0;
	int fd = dev();	/* its own fd: another fd's selection holds a template too */
	long live0 = debugfs_stat("pages_live");
	size_t len = 64 * PG;
	uint32_t id = make_template(fd, len, 3);
	unsigned char *p = map_tmpl(fd, id, len, 0, PROT_READ);
	int bad = 0;
	if (ioctl(fd, MMT_IOC_DELETE, &id)) bad |= 1;
	struct mmt_select s = { .id = id }; if (ioctl(fd, MMT_IOC_SELECT, &s) == 0) bad |= 2;
	if (check_pattern(p, len, 3)) bad |= 4;
	/* the fd's selection also holds it: select something else, unmap, it must be gone */
	uint32_t id2 = make_template(fd, PG, 1); s.id = id2; ioctl(fd, MMT_IOC_SELECT, &s); ioctl(fd, MMT_IOC_DELETE, &id2);
	if (debugfs_stat("pages_live") != live0 + 64 + 1) bad |= 8;
	munmap(p, len);
	if (debugfs_stat("pages_live") != live0 + 1) bad |= 16;
	close(fd);
	if (debugfs_stat("pages_live") != live0) bad |= 32;
	if (bad) FAIL("delete_while_mapped", "bits %#x", bad); else PASS("delete_while_mapped");
}

/* map into a stopped process at a fixed address, replacing its dirty anonymous memory */
static void t_map_pid(int fd, uint32_t flags, const char *name)
{
	size_t len = 32 * PG;
	uint32_t id = make_template(fd, len, 90);
	int pp[2]; pipe(pp);
	pid_t pid = fork();
	if (pid == 0) {
		unsigned char *r = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		memset(r, 0x11, len);
		write(pp[1], &r, sizeof r);
		raise(SIGSTOP);
		int ok = check_pattern(r, len, 90) == 0;
		r[0] = 1;	/* writable and private */
		_exit(ok ? 0 : 1);
	}
	unsigned char *r; read(pp[0], &r, sizeof r);
	int st; waitpid(pid, &st, WUNTRACED);
	struct mmt_map_pid mp = { .id = id, .flags = flags, .pid = pid, .prot = PROT_READ | PROT_WRITE, .addr = (uintptr_t)r, .len = len };
	int r1 = ioctl(fd, MMT_IOC_MAP_PID, &mp);
	int e = errno;
	struct mmt_query q = { .id = id }; ioctl(fd, MMT_IOC_QUERY, &q);
	kill(pid, SIGCONT);
	waitpid(pid, &st, 0);
	ioctl(fd, MMT_IOC_DELETE, &id);
	if (r1 || q.mappers != 1 || !WIFEXITED(st) || WEXITSTATUS(st)) FAIL(name, "ioctl %d errno %d mappers %llu status %#x", r1, e, (unsigned long long)q.mappers, st);
	else PASS(name);
}

/*
 * The mm_template filesystem (mounted at MMT_FS_DIR by guest-init.sh): a template's file has its
 * size, mode 0400 and owner; maps of it share the template's pages and COW on write; other users
 * cannot open it; only canonical names of live ids resolve; a deleted template's file is gone but
 * an open one still maps; the directory lists live ids; MAP_PID through the file names the file.
 */
static void t_fs(int fd)
{
	size_t len = 64 * PG;
	uint32_t id = make_template(fd, len, 21);
	char path[64], bad_name[64];
	int bad = 0;
	snprintf(path, sizeof path, MMT_FS_DIR "/%u", id);
	struct stat st;
	if (stat(path, &st) || !S_ISREG(st.st_mode) || (st.st_mode & 07777) != 0400 || st.st_size != (off_t)len || st.st_uid != 0) bad |= 1;
	/* its mtime is the template's creation time (a new inode per lookup shows the same one): with
	 * the id, it tells this template from a later one that got the same id after a reload */
	struct stat st2;
	usleep(30000);
	if (stat(path, &st2) || st2.st_mtim.tv_sec != st.st_mtim.tv_sec || st2.st_mtim.tv_nsec != st.st_mtim.tv_nsec ||
	    st.st_mtim.tv_sec < time(NULL) - 60 || st.st_mtim.tv_sec > time(NULL)) bad |= 32768;
	int f = open(path, O_RDONLY | O_CLOEXEC);
	if (f < 0) { FAIL("fs_template_file", "open %s: %s", path, strerror(errno)); ioctl(fd, MMT_IOC_DELETE, &id); return; }
	/* two private maps share every page; a write COWs only in the writer */
	unsigned char *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, f, 0);
	unsigned char *b = mmap(NULL, len, PROT_READ, MAP_PRIVATE, f, 0);
	if (a == MAP_FAILED || b == MAP_FAILED || check_pattern(a, len, 21) || check_pattern(b, len, 21)) bad |= 2;
	else {
		struct smaps sa = smaps_of(a);
		if (sa.rss != (long)(len >> 10) || sa.anon != 0) bad |= 4;	/* prefaulted: every page resident, none private */
		a[5 * PG] = 0xee;
		if (b[5 * PG] != (unsigned char)(21 + 5) || smaps_of(a).anon != 4) bad |= 8;
	}
	/* a writable shared map is refused */
	if (mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0) != MAP_FAILED) bad |= 16;
	/* non-canonical and unknown names */
	snprintf(bad_name, sizeof bad_name, MMT_FS_DIR "/0%u", id); if (open(bad_name, O_RDONLY) >= 0 || errno != ENOENT) bad |= 32;
	snprintf(bad_name, sizeof bad_name, MMT_FS_DIR "/+%u", id); if (open(bad_name, O_RDONLY) >= 0 || errno != ENOENT) bad |= 32;
	if (open(MMT_FS_DIR "/999999", O_RDONLY) >= 0 || errno != ENOENT) bad |= 32;
	if (open(MMT_FS_DIR "/new", O_RDWR | O_CREAT, 0600) >= 0) bad |= 32;
	/* the directory lists it */
	char cmd[128]; snprintf(cmd, sizeof cmd, "ls " MMT_FS_DIR " | grep -qx %u", id);
	if (system(cmd) != 0) bad |= 64;
	/* another user cannot open it */
	pid_t pid = fork();
	if (pid == 0) {
		if (setuid(1000)) _exit(9);
		_exit(open(path, O_RDONLY) >= 0 ? 1 : errno == EACCES ? 0 : 2);
	}
	int wst; waitpid(pid, &wst, 0);
	if (!WIFEXITED(wst) || WEXITSTATUS(wst)) bad |= 128;
	/* MAP_PID through the file: the wrong id is refused, the right one maps the file */
	size_t rl = 8 * PG;
	int pp[2]; pipe(pp);
	pid = fork();
	if (pid == 0) {
		unsigned char *r = mmap(NULL, rl, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		memset(r, 0x33, rl);
		write(pp[1], &r, sizeof r);
		raise(SIGSTOP);
		char line[512], want[32]; int named = 0;
		snprintf(want, sizeof want, "%lx-", (unsigned long)r);
		FILE *m = fopen("/proc/self/maps", "r");
		while (fgets(line, sizeof line, m)) if (!strncmp(line, want, strlen(want)) && strstr(line, MMT_FS_DIR "/")) named = 1;
		fclose(m);
		_exit(named && check_pattern(r, rl, 21) == 0 ? 0 : 1);
	}
	unsigned char *r; read(pp[0], &r, sizeof r);
	waitpid(pid, &wst, WUNTRACED);
	struct mmt_map_pid mp = { .id = id + 1, .flags = MMT_MAP_PREFAULT, .pid = pid, .prot = PROT_READ | PROT_WRITE, .addr = (uintptr_t)r, .len = rl };
	if (ioctl(f, MMT_IOC_MAP_PID, &mp) == 0 || errno != EINVAL) bad |= 256;
	mp.id = id;
	if (ioctl(f, MMT_IOC_MAP_PID, &mp)) bad |= 512;
	kill(pid, SIGCONT); waitpid(pid, &wst, 0);
	if (!WIFEXITED(wst) || WEXITSTATUS(wst)) bad |= 1024;
	/* delete: the name goes, the open file and the maps stay valid; pages go with the last user */
	long live0 = debugfs_stat("pages_live");
	if (ioctl(fd, MMT_IOC_DELETE, &id)) bad |= 2048;
	if (stat(path, &st) == 0 || errno != ENOENT) bad |= 4096;
	unsigned char *c = mmap(NULL, len, PROT_READ, MAP_PRIVATE, f, 0);
	if (c == MAP_FAILED || check_pattern(c, len, 21)) bad |= 8192;
	if (c != MAP_FAILED) munmap(c, len);
	munmap(a, len); munmap(b, len); close(f);
	if (debugfs_stat("pages_live") != live0 - 64) bad |= 16384;
	if (bad) FAIL("fs_template_file", "bits %#x", bad); else PASS("fs_template_file");
}

/* random arguments: nothing may crash (dmesg is checked by the host script) */
static void t_fuzz(int fd)
{
	srand(12345);
	unsigned long cmds[] = { MMT_IOC_VERSION, MMT_IOC_CREATE, MMT_IOC_SELECT, MMT_IOC_QUERY, MMT_IOC_DELETE, MMT_IOC_MAP_PID };
	unsigned long ptrs[] = { 0, 1, 8, 4095, 0xffff888000000000UL, 0xffffffffffffffffUL, 0x7ffffffff000UL };
	uint64_t blob[8];
	uint32_t id = make_template(fd, 4 * PG, 5);
	for (int i = 0; i < 20000; i++) {
		for (int k = 0; k < 8; k++) {
			uint64_t v = ((uint64_t)rand() << 32) ^ rand();
			switch (rand() % 6) { case 0: v &= 0xff; break; case 1: v &= ~0xfffUL; break; case 2: v = id; break; case 3: v = (uint64_t)PG << (rand() % 40); break; default: break; }
			blob[k] = v;
		}
		if (rand() % 3 == 0) blob[0] = (uintptr_t)blob & ~0xfffUL;	/* a real user address */
		blob[2] &= 0xffffffff00000000ULL | (rand() % 3 ? 0 : 0xffffffff);	/* create: flags 0 most of the time */
		unsigned long cmd = rand() % 5 ? cmds[rand() % 6] : (unsigned long)rand();
		void *arg = rand() % 4 ? (void *)blob : (void *)ptrs[rand() % 7];
		uint32_t before = blob[0] & 0xffffffff;
		int r = ioctl(fd, cmd, arg);
		if (r == 0 && cmd == MMT_IOC_CREATE && arg == blob) { uint32_t nid = blob[2] >> 32; ioctl(fd, MMT_IOC_DELETE, &nid); }
		if (r == 0 && cmd == MMT_IOC_DELETE && before == id) id = make_template(fd, 4 * PG, 5);
		if (i % 8 == 0) {
			int prot = rand() % 8;
			void *m = mmap((void *)(blob[3] & ~0xfffUL), blob[4] % (16 * PG), prot, (rand() % 2 ? MAP_PRIVATE : MAP_SHARED) | (rand() % 4 ? 0 : MAP_FIXED_NOREPLACE), fd, (blob[5] % 8) * PG);
			if (m != MAP_FAILED) { volatile unsigned char x; if ((blob[6] & 1) && (prot & PROT_READ)) x = *(unsigned char *)m; (void)x; munmap(m, blob[4] % (16 * PG)); }
		}
	}
	/* the same on a template file (its ioctls and mmap) */
	char path[64]; snprintf(path, sizeof path, MMT_FS_DIR "/%u", id);
	int tf = open(path, O_RDONLY | O_CLOEXEC);
	for (int i = 0; tf >= 0 && i < 5000; i++) {
		for (int k = 0; k < 8; k++) blob[k] = rand() % 2 ? (((uint64_t)rand() << 32) ^ rand()) : (rand() % 3 ? id : (uint64_t)PG << (rand() % 40));
		blob[1] = (blob[1] & ~0xffffffffULL) | (uint32_t)(rand() % 2 ? getpid() : rand());	/* map_pid: pid, prot */
		unsigned long cmd = rand() % 4 ? cmds[rand() % 6] : (unsigned long)rand();
		ioctl(tf, cmd, rand() % 4 ? (void *)blob : (void *)ptrs[rand() % 7]);
		void *m = mmap(NULL, blob[4] % (8 * PG), rand() % 8, rand() % 2 ? MAP_PRIVATE : MAP_SHARED, tf, (blob[5] % 6) * PG);
		if (m != MAP_FAILED) munmap(m, blob[4] % (8 * PG));
	}
	if (tf < 0) FAIL("fuzz_ioctl_mmap", "open %s: %s", path, strerror(errno));
	else close(tf);
	ioctl(fd, MMT_IOC_DELETE, &id);
	PASS("fuzz_ioctl_mmap");
}

/* create/map/write/unmap/delete in a loop: memory and slab come back */
static void t_leak(int fd0)
{
	(void)fd0;
	int fd = dev();	/* its own fd: the selection of another fd holds a template too */
	long live0 = debugfs_stat("pages_live");
	for (int w = 0; w < 20; w++) { uint32_t id = make_template(fd, 256 * PG, w); ioctl(fd, MMT_IOC_DELETE, &id); }
	long free0 = meminfo("MemFree"), slab0 = meminfo("Slab");
	for (int i = 0; i < 300; i++) {
		uint32_t id = make_template(fd, 256 * PG, i);
		unsigned char *p = map_tmpl(fd, id, 256 * PG, i % 2 ? MMT_MAP_PREFAULT : 0, PROT_READ | PROT_WRITE);
		if (p != MAP_FAILED) { p[0] = 1; p[PG * 100] = 2; volatile unsigned char x = p[PG * 200]; (void)x; }
		if (i % 3 == 0) { ioctl(fd, MMT_IOC_DELETE, &id); munmap(p, 256 * PG); }
		else { munmap(p, 256 * PG); ioctl(fd, MMT_IOC_DELETE, &id); }
	}
	close(fd);
	long free1 = meminfo("MemFree"), slab1 = meminfo("Slab");
	printf("METRIC leak.memfree_before_kb %ld\nMETRIC leak.memfree_delta_kb %ld\nMETRIC leak.slab_delta_kb %ld\n", free0, free1 - free0, slab1 - slab0);
	long live1 = debugfs_stat("pages_live");
	/* 300 x 1 MiB went through; allow 2 MiB of MemFree noise (per-cpu page lists); pages_live is exact */
	if (free0 - free1 > 2048 || slab1 - slab0 > 1024 || live1 != live0) FAIL("leak_loop", "MemFree %ld->%ld kB, Slab %ld->%ld kB, pages_live %ld->%ld", free0, free1, slab0, slab1, live0, live1);
	else PASS("leak_loop");
}

/* the numbers behind the fault-per-page vs prefault choice: mmap + read every page of 64 MiB */
static void t_timing(int fd)
{
	size_t len = 64 << 20;
	uint32_t id = make_template(fd, len, 9);
	const char *names[] = { "fault", "prefault", "private_copy" };
	for (int m = 0; m < 3; m++) {
		double best = 1e9;
		for (int rep = 0; rep < 3; rep++) {
			double t0 = now_ms();
			unsigned char *p;
			if (m < 2) p = map_tmpl(fd, id, len, m ? MMT_MAP_PREFAULT : 0, PROT_READ | PROT_WRITE);
			else {	/* what a restore without the module does: copy into fresh anonymous memory */
				unsigned char *src = map_tmpl(fd, id, len, MMT_MAP_PREFAULT, PROT_READ);
				t0 = now_ms();
				p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
				memcpy(p, src, len);
				munmap(src, len);
			}
			unsigned long sum = 0;
			for (size_t i = 0; i < len; i += PG) sum += p[i];
			double dt = now_ms() - t0;
			if (dt < best) best = dt;
			if (sum == 1) printf(" ");
			munmap(p, len);
		}
		printf("METRIC map64m_read.%s_ms %.2f\n", names[m], best);
	}
	ioctl(fd, MMT_IOC_DELETE, &id);
	PASS("timing");
}

/* DELETE, SELECT, mmap, read, munmap and QUERY racing from several processes */
static void t_race(int fd)
{
	long live0 = debugfs_stat("pages_live");
	int p2[2]; pipe2(p2, O_NONBLOCK);	/* readers must never block: the writer stops first */
	uint32_t id = make_template(fd, 16 * PG, 4);
	for (int k = 0; k < 3; k++) {
		if (fork() == 0) {
			int f = dev();
			uint32_t cur = id;
			double end = now_ms() + 1500;
			while (now_ms() < end) {
				if (k == 0) {	/* replace the template under the others' feet */
					uint32_t nid = make_template(f, 16 * PG, 4);
					ioctl(f, MMT_IOC_DELETE, &cur);
					cur = nid;
					write(p2[1], &cur, sizeof cur);
				} else {
					struct mmt_select s = { .id = cur, .flags = (k == 2) ? MMT_MAP_PREFAULT : 0 };
					uint32_t next;
					if (read(p2[0], &next, sizeof next) == sizeof next) cur = next;
					s.id = cur;
					if (ioctl(f, MMT_IOC_SELECT, &s)) continue;
					unsigned char *m = mmap(NULL, 16 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, f, 0);
					if (m == MAP_FAILED) continue;
					if (check_pattern(m, 16 * PG, 4)) _exit(3);
					m[PG] = 1;
					struct mmt_query q = { .id = cur }; ioctl(f, MMT_IOC_QUERY, &q);
					munmap(m, 16 * PG);
				}
			}
			if (k == 0) ioctl(f, MMT_IOC_DELETE, &cur);
			close(f);
			_exit(0);
		}
	}
	int bad = 0, st;
	while (wait(&st) > 0) if (!WIFEXITED(st) || WEXITSTATUS(st)) bad++;
	long live1 = debugfs_stat("pages_live");
	if (bad || live1 != live0) FAIL("race_delete_map", "bad children %d pages_live %ld -> %ld", bad, live0, live1);
	else PASS("race_delete_map");
}

/* template pages are charged to the creator's memory cgroup (cgroup v2) and uncharged when freed */
static void t_memcg(void)
{
	const char *cg = "/sys/fs/cgroup/mmt";
	char path[128];
	if (mkdir(cg, 0755) && errno != EEXIST) { FAIL("memcg_charged", "mkdir %s: %s", cg, strerror(errno)); return; }
	int pp[2]; pipe(pp);
	pid_t pid = fork();
	if (pid == 0) {
		snprintf(path, sizeof path, "%s/cgroup.procs", cg);
		FILE *f = fopen(path, "w"); if (!f) _exit(2); fprintf(f, "%d\n", getpid()); fclose(f);
		snprintf(path, sizeof path, "%s/memory.current", cg);
		long c[3];
		int fd = dev();
		for (int i = 0; i < 3; i++) {
			if (i == 1) { uint32_t id = make_template(fd, 8 << 20, 1); write(pp[1], &id, sizeof id); }
			if (i == 2) { uint32_t id; read(pp[0], &id, sizeof id); ioctl(fd, MMT_IOC_DELETE, &id); }
			f = fopen(path, "r"); fscanf(f, "%ld", &c[i]); fclose(f);
		}
		printf("METRIC memcg.charged_kb %ld\nMETRIC memcg.after_delete_kb %ld\n", (c[1] - c[0]) >> 10, (c[2] - c[0]) >> 10);
		/* 8 MiB (memcg charges are batched per cpu: +-512 KiB), and back within 1 MiB */
		_exit(c[1] - c[0] >= (8 << 20) - (512 << 10) && c[1] - c[0] < (10 << 20) && c[2] - c[0] < (1 << 20) ? 0 : 1);
	}
	int st; waitpid(pid, &st, 0);
	rmdir(cg);
	if (!WIFEXITED(st) || WEXITSTATUS(st)) FAIL("memcg_charged", "status %#x", st); else PASS("memcg_charged");
}

static int hold(const char *file)
{
	int fd = dev();
	uint32_t id = make_template(fd, 4 * PG, 2);
	unsigned char *p = map_tmpl(fd, id, 4 * PG, 0, PROT_READ);
	ioctl(fd, MMT_IOC_DELETE, &id);
	close(fd);	/* the mapping alone keeps the module busy */
	if (p == MAP_FAILED) return 1;
	FILE *f = fopen(file, "w"); fprintf(f, "%d\n", p[0]); fclose(f);
	for (;;) pause();
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc > 2 && !strcmp(argv[1], "hold")) return hold(argv[2]);
	int fd = dev();
	t_abi(fd);
	t_validation(fd);
	t_share(fd, 4, 0, "share4_fault");
	t_share(fd, 8, MMT_MAP_PREFAULT, "share8_prefault");
	t_cow(fd, 0, "cow_fault");
	t_cow(fd, MMT_MAP_PREFAULT, "cow_prefault");
	t_delete_mapped(fd);
	t_map_pid(fd, 0, "map_pid_fault");
	t_map_pid(fd, MMT_MAP_PREFAULT, "map_pid_prefault");
	t_fs(fd);
	t_fuzz(fd);
	t_race(fd);
	t_memcg();
	t_leak(fd);
	t_timing(fd);
	close(fd);
	printf("DONE mmt_test failures=%d\n", failures);
	return failures != 0;
}
