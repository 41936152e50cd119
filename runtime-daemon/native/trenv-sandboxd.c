/*
 * trenv-sandboxd: the native sandbox manager spawned by trenvd.
 *
 * The exact wire protocol and the mount layout are specified in PROTOCOL.md (same directory);
 * this file implements it. Node cannot clone into namespaces, pivot_root, pass fds or move
 * mounts, so this process does exactly those things and nothing else: every decision (limits,
 * uids, which app, when to reset) is made by trenvd.
 *
 * Process structure:
 *   trenv-sandboxd (host side, single-threaded poll() loop over stdin, signalfd, every
 *   sandbox's control socket and every active run's pipes)
 *     └─ init (PID 1 of one sandbox; same binary, reached by clone() without exec)
 *          └─ the run'd process (fork + chroot("/root") + setuid + execve)
 *     └─ slirp4netns (only for net=slirp)
 *
 * Host and init talk over a SOCK_SEQPACKET socketpair: message boundaries are kept and fds travel
 * with SCM_RIGHTS. Host-side requests that need an answer (create, run start, reset) are
 * synchronous with a timeout: they take a few milliseconds, and doing them inline keeps the host
 * state machine trivial. The only asynchronous init->host message is EXIT (a run ended).
 *
 * Sections: utilities, framing, host<->init channel, init side, sandbox table, host side
 * commands, event loop + main.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* New mount API: glibc 2.36's <sys/mount.h> has most of these, but we call the syscalls raw
 * (older glibc has no wrappers) and only fill in what a given header lacks. */
#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#ifndef SYS_close_range
#define SYS_close_range 436
#endif
#ifndef OPEN_TREE_CLONE
#define OPEN_TREE_CLONE 1
#endif
#ifndef OPEN_TREE_CLOEXEC
#define OPEN_TREE_CLOEXEC O_CLOEXEC
#endif
#ifndef AT_RECURSIVE
#define AT_RECURSIVE 0x8000
#endif
#ifndef MOVE_MOUNT_F_EMPTY_PATH
#define MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#endif
#ifndef MOUNT_ATTR_RDONLY
#define MOUNT_ATTR_RDONLY 0x00000001
#endif
#ifndef MOUNT_ATTR_NOSUID
#define MOUNT_ATTR_NOSUID 0x00000002
#endif
#ifndef MOUNT_ATTR_NODEV
#define MOUNT_ATTR_NODEV 0x00000004
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

/* Our own copy of the kernel's struct mount_attr (v0 layout), so we never depend on which header
 * (glibc's or linux/mount.h, which conflict) declares it. */
struct trenv_mount_attr {
	uint64_t attr_set, attr_clr, propagation, userns_fd;
};

#define MAX_FRAME (16u << 20) /* PROTOCOL.md: N <= 16 MiB */
#define CHUNK (64u << 10)     /* data chunks are at most 64 KiB */
#define INIT_TIMEOUT_MS 10000 /* upper bound for any synchronous host<->init exchange */
#define RO_ATTRS (MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV)
/* Unix datagrams are limited to a few MB of kernel memory (and sndbuf); run specs larger than
 * this travel in a memfd instead of inline. */
#define SPEC_INLINE_MAX (64u << 10)

/* ======================================================================================
 * Utilities
 * ====================================================================================== */

static void logmsg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* One write() per line so lines from sandboxd and its inits never interleave mid-line. */
static void logmsg(const char *fmt, ...)
{
	char buf[2048];
	int n = snprintf(buf, sizeof buf, "trenv-sandboxd: ");
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(buf + n, sizeof buf - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	n += m;
	if ((size_t)n > sizeof buf - 2)
		n = sizeof buf - 2;
	buf[n++] = '\n';
	ssize_t r = write(2, buf, (size_t)n);
	(void)r;
}

static uint64_t mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	if (!p) {
		logmsg("out of memory");
		exit(3);
	}
	return p;
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (!p) {
		logmsg("out of memory");
		exit(3);
	}
	return p;
}

static char *xstrdup(const char *s)
{
	size_t n = strlen(s) + 1;
	return memcpy(xmalloc(n), s, n);
}

static int write_all(int fd, const void *p, size_t n)
{
	const char *c = p;
	while (n) {
		ssize_t w = write(fd, c, n);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

static int write_file(const char *path, const char *s)
{
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	int r = write_all(fd, s, strlen(s));
	int e = errno;
	close(fd);
	errno = e;
	return r;
}

/* mkdir -p; existing components are fine. */
static int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	size_t n = strlen(path);
	if (n == 0 || n >= sizeof buf) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(buf, path, n + 1);
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || *p == 0) {
			char c = *p;
			*p = 0;
			if (mkdir(buf, mode) < 0 && errno != EEXIST)
				return -1;
			*p = c;
			if (!c)
				break;
		}
	}
	return 0;
}

static int set_cloexec(int fd, bool on)
{
	int f = fcntl(fd, F_GETFD);
	if (f < 0)
		return -1;
	return fcntl(fd, F_SETFD, on ? (f | FD_CLOEXEC) : (f & ~FD_CLOEXEC));
}

static int set_nonblock(int fd)
{
	int f = fcntl(fd, F_GETFL);
	if (f < 0)
		return -1;
	return fcntl(fd, F_SETFL, f | O_NONBLOCK);
}

static void xclose(int *fd)
{
	if (*fd >= 0)
		close(*fd);
	*fd = -1;
}

/* "exited:N" / "signaled:N", the status format of PROTOCOL.md. */
static void fmt_status(char *buf, size_t n, int st)
{
	if (WIFSIGNALED(st))
		snprintf(buf, n, "signaled:%d", WTERMSIG(st));
	else
		snprintf(buf, n, "exited:%d", WEXITSTATUS(st));
}

/* Recursively apply ro,nosuid,nodev to the mount tree at path (MS_REMOUNT|MS_BIND|MS_RDONLY only
 * changes the top mount; mount_setattr with AT_RECURSIVE covers submounts too). */
static int set_ro_tree(int dfd, const char *path, unsigned flags)
{
	struct trenv_mount_attr a = {.attr_set = RO_ATTRS};
	return (int)syscall(SYS_mount_setattr, dfd, path, flags | AT_RECURSIVE, &a, sizeof a);
}

/* ======================================================================================
 * Framing (PROTOCOL.md "Framing"): u32le length, then fields separated by NUL; the last field
 * runs to the end of the frame.
 * ====================================================================================== */

/* ---- output ---- */

static struct {
	uint8_t *b;
	size_t len, cap;
	int nfields;
} ob;

static void cleanup_all(void);

static void ob_put(const void *p, size_t n)
{
	if (ob.len + n > ob.cap) {
		while (ob.len + n > ob.cap)
			ob.cap = ob.cap ? ob.cap * 2 : 4096;
		ob.b = xrealloc(ob.b, ob.cap);
	}
	memcpy(ob.b + ob.len, p, n);
	ob.len += n;
}

static void ob_begin(const char *cmd)
{
	ob.len = 0;
	ob.nfields = 0;
	ob_put("\0\0\0\0", 4); /* length, patched in ob_send() */
	ob_put(cmd, strlen(cmd));
	ob.nfields = 1;
}

static void ob_field(const void *p, size_t n)
{
	ob_put("", 1); /* the separating NUL */
	ob_put(p, n);
	ob.nfields++;
}

static void ob_str(const char *s) { ob_field(s, strlen(s)); }

static void ob_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void ob_fmt(const char *fmt, ...)
{
	char buf[4096];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof buf)
		n = sizeof buf - 1;
	ob_field(buf, (size_t)n);
}

static void ob_u64(uint64_t v) { ob_fmt("%" PRIu64, v); }

/* stdout stays blocking: if trenvd stops reading we stall rather than drop or reorder events.
 * A failed write means trenvd is gone, so clean up and leave. */
static void ob_send(void)
{
	uint32_t n = (uint32_t)(ob.len - 4);
	ob.b[0] = n & 0xff;
	ob.b[1] = (n >> 8) & 0xff;
	ob.b[2] = (n >> 16) & 0xff;
	ob.b[3] = (n >> 24) & 0xff;
	if (write_all(1, ob.b, ob.len) < 0) {
		logmsg("stdout write failed (%s); cleaning up and exiting", strerror(errno));
		cleanup_all();
		exit(1);
	}
}

static void emit_error(const char *sbx, const char *run, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void emit_error(const char *sbx, const char *run, const char *fmt, ...)
{
	char buf[2048];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof buf)
		n = sizeof buf - 1;
	ob_begin("error");
	ob_str(sbx ? sbx : "-");
	ob_str(run ? run : "-");
	ob_field(buf, (size_t)n);
	ob_send();
}

/* ---- input ---- */

struct field {
	const char *p; /* NUL-terminated (the frame copy has a NUL appended) */
	size_t len;
};

/* Is this field usable as a C string (no embedded NUL, which only the last field may have)? */
static bool field_is_str(const struct field *f) { return strlen(f->p) == f->len; }

/*
 * Split a frame body (which has an extra NUL appended at body[len]) into fields.
 * maxf > 0: at most maxf fields, the last one taking the rest of the frame.
 * rest_prefix: a field starting with this prefix (at index >= min_rest_idx) takes the rest of the
 * frame; that is how `run`'s final `stdin=` field may contain NUL bytes.
 */
static size_t split_fields(char *body, size_t len, size_t maxf, const char *rest_prefix,
			   size_t min_rest_idx, struct field **out)
{
	size_t cap = 8, n = 0, i = 0;
	struct field *f = xmalloc(cap * sizeof *f);
	size_t plen = rest_prefix ? strlen(rest_prefix) : 0;
	for (;;) {
		if (n == cap) {
			cap *= 2;
			f = xrealloc(f, cap * sizeof *f);
		}
		bool rest = (maxf && n + 1 == maxf) ||
			    (rest_prefix && n >= min_rest_idx && len - i >= plen &&
			     memcmp(body + i, rest_prefix, plen) == 0);
		size_t end = len;
		if (!rest) {
			char *z = memchr(body + i, 0, len - i);
			if (z)
				end = (size_t)(z - body);
		}
		f[n].p = body + i;
		f[n].len = end - i;
		n++;
		if (end >= len)
			break;
		i = end + 1;
	}
	*out = f;
	return n;
}

/* ======================================================================================
 * Host <-> init channel: SOCK_SEQPACKET messages = struct imsg + optional payload + fds.
 * ====================================================================================== */

enum {
	M_GO = 1,     /* host->init: cgroups are joined, build the sandbox */
	M_READY,      /* init->host: ts = mounts, net, pivot spans */
	M_ERROR,      /* init->host: payload = message */
	M_RUN,        /* host->init: payload = run spec, fds = stdin, stdout, stderr, chan
		       * (+ a memfd holding the spec when it is too big for one datagram) */
	M_STARTED,    /* init->host: val = pid in sandbox, ts[0] = when exec succeeded */
	M_EXIT,       /* init->host: val = wait status; all processes are gone */
	M_KILL,       /* host->init: kill everything but init */
	M_RESET,      /* host->init: payload = new hostname (may be empty) */
	M_RESET_DONE, /* init->host: ts = kill, rw spans */
	M_APP,        /* host->init: fd = detached app tree from open_tree() */
	M_APP_DONE,   /* init->host */
	M_KILLALL,    /* host->init: kill everything but init and reap (a spawned run ended) */
	M_KILLED,     /* init->host: reply to M_KILLALL (asynchronous) */
};

struct imsg {
	uint32_t type;
	int32_t val;
	uint64_t ts[6];
};

struct rmsg {
	struct imsg h;
	char *payload; /* NUL-terminated copy */
	size_t plen;
	int fds[5];
	int nfds;
};

static void rmsg_free(struct rmsg *m)
{
	for (int i = 0; i < m->nfds; i++)
		xclose(&m->fds[i]);
	m->nfds = 0;
	free(m->payload);
	m->payload = NULL;
}

static int imsg_send(int sock, uint32_t type, int32_t val, const uint64_t *ts, int nts,
		     const void *payload, size_t plen, const int *fds, int nfds)
{
	struct imsg h = {.type = type, .val = val};
	for (int i = 0; i < nts && i < 6; i++)
		h.ts[i] = ts[i];
	struct iovec iov[2] = {{&h, sizeof h}, {(void *)payload, plen}};
	union {
		char buf[CMSG_SPACE(sizeof(int) * 5)];
		struct cmsghdr align;
	} cm;
	struct msghdr mh = {.msg_iov = iov, .msg_iovlen = plen ? 2 : 1};
	if (nfds > 0) {
		memset(&cm, 0, sizeof cm);
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
	}
	for (;;) {
		ssize_t r = sendmsg(sock, &mh, MSG_NOSIGNAL);
		if (r >= 0)
			return 0;
		if (errno != EINTR)
			return -1;
	}
}

/* Blocking receive of one message. Returns 1 on success, 0 on EOF, -1 on error. */
static int imsg_recv(int sock, struct rmsg *m)
{
	memset(m, 0, sizeof *m);
	/* MSG_PEEK|MSG_TRUNC returns the real size of the next datagram without consuming it
	 * (and without installing fds, since we pass no control buffer). */
	ssize_t sz;
	do
		sz = recv(sock, NULL, 0, MSG_PEEK | MSG_TRUNC);
	while (sz < 0 && errno == EINTR);
	if (sz < 0)
		return -1;
	if (sz == 0)
		return 0;
	if ((size_t)sz < sizeof(struct imsg)) {
		char junk;
		ssize_t r = recv(sock, &junk, 1, 0); /* drop it */
		(void)r;
		errno = EPROTO;
		return -1;
	}
	size_t plen = (size_t)sz - sizeof(struct imsg);
	m->payload = xmalloc(plen + 1);
	struct iovec iov[2] = {{&m->h, sizeof m->h}, {m->payload, plen}};
	union {
		char buf[CMSG_SPACE(sizeof(int) * 5)];
		struct cmsghdr align;
	} cm;
	struct msghdr mh = {.msg_iov = iov,
			    .msg_iovlen = 2,
			    .msg_control = cm.buf,
			    .msg_controllen = sizeof cm.buf};
	ssize_t r;
	do
		r = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	while (r < 0 && errno == EINTR);
	if (r <= 0) {
		free(m->payload);
		m->payload = NULL;
		return r == 0 ? 0 : -1;
	}
	m->payload[plen] = 0;
	m->plen = plen;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		int *p = (int *)CMSG_DATA(c);
		for (int i = 0; i < n; i++) {
			if (m->nfds < 5)
				m->fds[m->nfds++] = p[i];
			else
				close(p[i]);
		}
	}
	return 1;
}

/* Fixed-size head of a M_RUN payload; followed by cwd, argv[], env[] as NUL-terminated strings. */
struct run_spec {
	uint32_t uid, gid, argc, envc;
};

/* ======================================================================================
 * Init side: PID 1 of a sandbox. Entered in the child of clone(); never returns.
 * ====================================================================================== */

struct create_cfg {
	const char *hostname, *lower, *mnt, *app;
	uint64_t rwsize;
	int nrbind;
	const char **rb_src, **rb_dst;
};

static struct {
	int sock, sigfd;
	pid_t run_pid;
	bool oom_protected; /* our oom_score_adj is -1000 (children must not inherit it) */
	const struct create_cfg *cfg; /* still valid: our copy of the host's memory at clone time */
} in;

static void init_fail(const char *what, const char *path) __attribute__((noreturn));
/* Report a fatal setup error to the host and die: the host replies `error` and reaps us. */
static void init_fail(const char *what, const char *path)
{
	char buf[PATH_MAX + 256];
	int n = snprintf(buf, sizeof buf, "%s%s%s: %s", what, path ? " " : "", path ? path : "",
			 strerror(errno));
	logmsg("sandbox init %d: %s", (int)getpid(), buf);
	imsg_send(in.sock, M_ERROR, 0, NULL, 0, buf, n > 0 ? (size_t)n : 0, NULL, 0);
	_exit(1);
}

/* SIGKILL everything in the pid namespace except ourselves, then reap until nothing is left.
 * Re-killing each round closes the race with processes that were mid-fork, and orphans of
 * killed parents are reparented to us, so ECHILD really means the namespace is empty. */
static void init_killall(void)
{
	for (;;) {
		kill(-1, SIGKILL);
		pid_t p = waitpid(-1, NULL, 0);
		if (p < 0 && errno == ECHILD)
			break;
		if (p == in.run_pid)
			in.run_pid = 0;
	}
}

/* Bind `src` (a tree) at `dst`, creating dst, then make the whole tree ro,nosuid,nodev. */
static void init_ro_bind(const char *src, const char *dst)
{
	if (mkdir_p(dst, 0755) < 0)
		init_fail("mkdir", dst);
	if (mount(src, dst, NULL, MS_BIND | MS_REC, NULL) < 0)
		init_fail("bind", src);
	if (set_ro_tree(AT_FDCWD, dst, 0) < 0)
		init_fail("mount_setattr", dst);
}

/*
 * Build the sandbox root under prefix S (the `mnt` dir before pivot_root, "" after): fresh rw
 * tmpfs, overlay at S/root, the rbinds (from the kept copies in S/src/N), /dev and /dev/shm.
 * Shared by create and reset so both produce the same tree. /proc and /app are done by callers.
 */
static void init_build_root(const char *S)
{
	const struct create_cfg *c = in.cfg;
	char p[PATH_MAX], q[PATH_MAX], opts[3 * PATH_MAX + 64];

	snprintf(p, sizeof p, "%s/rw", S);
	snprintf(opts, sizeof opts, "mode=0755,size=%" PRIu64, c->rwsize);
	if (mount("trenv-rw", p, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
		init_fail("mount tmpfs", p);
	snprintf(p, sizeof p, "%s/rw/upper", S);
	if (mkdir(p, 0755) < 0)
		init_fail("mkdir", p);
	snprintf(p, sizeof p, "%s/rw/work", S);
	if (mkdir(p, 0755) < 0)
		init_fail("mkdir", p);

	snprintf(p, sizeof p, "%s/root", S);
	snprintf(opts, sizeof opts, "lowerdir=%s/lower,upperdir=%s/rw/upper,workdir=%s/rw/work", S,
		 S, S);
	if (mount("trenv-root", p, "overlay", MS_NOSUID | MS_NODEV, opts) < 0)
		init_fail("mount overlay", p);

	for (int i = 0; i < c->nrbind; i++) {
		snprintf(p, sizeof p, "%s/src/%d", S, i);
		snprintf(q, sizeof q, "%s/root%s", S, c->rb_dst[i]);
		init_ro_bind(p, q);
	}

	/* /dev: bind of the sandbox's own device tmpfs (kept across resets); not nodev. */
	snprintf(p, sizeof p, "%s/dev", S);
	snprintf(q, sizeof q, "%s/root/dev", S);
	if (mkdir_p(q, 0755) < 0)
		init_fail("mkdir", q);
	if (mount(p, q, NULL, MS_BIND | MS_REC, NULL) < 0)
		init_fail("bind", q);
	snprintf(q, sizeof q, "%s/root/dev/shm", S);
	snprintf(opts, sizeof opts, "mode=1777,size=%" PRIu64, c->rwsize);
	if (mount("shm", q, "tmpfs", MS_NOSUID | MS_NODEV, opts) < 0)
		init_fail("mount shm", q);
}

/* /proc for the sandbox: mounted by init (after pivot) so it shows init's pid namespace. */
static void init_mount_proc(void)
{
	if (mkdir_p("/root/proc", 0555) < 0)
		init_fail("mkdir", "/root/proc");
	if (mount("proc", "/root/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
		init_fail("mount proc", "/root/proc");
}

static void init_set_hostname(const char *h)
{
	if (h && *h && sethostname(h, strlen(h)) < 0)
		init_fail("sethostname", h);
}

static void init_lo_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		init_fail("socket", NULL);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof ifr);
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		init_fail("SIOCGIFFLAGS", "lo");
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		init_fail("SIOCSIFFLAGS", "lo");
	close(s);
}

/* The create steps (PROTOCOL.md "create"), run between GO and READY. */
static void init_create(void)
{
	const struct create_cfg *c = in.cfg;
	const char *S = c->mnt;
	char p[PATH_MAX], q[PATH_MAX];
	uint64_t ts[6];

	ts[0] = mono_ns();
	/* Our mount namespace is a copy of the host's and still shares its propagation peers:
	 * make everything private first so nothing we mount can ever leak to the host. */
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		init_fail("make / rprivate", NULL);
	if (mount("trenv-shell", S, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700,size=1m") < 0)
		init_fail("mount shell tmpfs", S);
	static const char *const dirs[] = {"lower", "rw", "root", "dev", "src", ".old"};
	for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) {
		snprintf(p, sizeof p, "%s/%s", S, dirs[i]);
		if (mkdir(p, 0755) < 0)
			init_fail("mkdir", p);
	}
	snprintf(p, sizeof p, "%s/lower", S);
	init_ro_bind(c->lower, p);
	/* Keep a read-only copy of every rbind source inside the shell (outside the root the
	 * process sees), because after pivot_root the host paths are unreachable and reset must
	 * re-apply them. */
	for (int i = 0; i < c->nrbind; i++) {
		snprintf(p, sizeof p, "%s/src/%d", S, i);
		init_ro_bind(c->rb_src[i], p);
	}
	/* The device tmpfs: created once, bound into every incarnation of the root. */
	snprintf(p, sizeof p, "%s/dev", S);
	if (mount("trenv-dev", p, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k") < 0)
		init_fail("mount dev tmpfs", p);
	static const struct {
		const char *name;
		unsigned maj, min;
	} devs[] = {{"null", 1, 3},   {"zero", 1, 5},    {"full", 1, 7},
		    {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
	for (size_t i = 0; i < sizeof devs / sizeof *devs; i++) {
		snprintf(q, sizeof q, "%s/dev/%s", S, devs[i].name);
		if (mknod(q, S_IFCHR | 0666, makedev(devs[i].maj, devs[i].min)) < 0)
			init_fail("mknod", q);
	}
	snprintf(q, sizeof q, "%s/dev/shm", S);
	if (mkdir(q, 01777) < 0)
		init_fail("mkdir", q);
	/* Conventional /dev/fd and /dev/std* links (shells and Python use /dev/stdin etc.). */
	static const char *const links[][2] = {{"/proc/self/fd", "fd"},
					       {"/proc/self/fd/0", "stdin"},
					       {"/proc/self/fd/1", "stdout"},
					       {"/proc/self/fd/2", "stderr"}};
	for (size_t i = 0; i < sizeof links / sizeof *links; i++) {
		snprintf(q, sizeof q, "%s/dev/%s", S, links[i][1]);
		if (symlink(links[i][0], q) < 0)
			init_fail("symlink", q);
	}

	init_build_root(S);
	if (c->app) {
		snprintf(q, sizeof q, "%s/root/app", S);
		init_ro_bind(c->app, q);
	}
	init_set_hostname(c->hostname);
	ts[1] = mono_ns();

	ts[2] = mono_ns();
	init_lo_up();
	ts[3] = mono_ns();

	ts[4] = mono_ns();
	if (chdir(S) < 0)
		init_fail("chdir", S);
	if (syscall(SYS_pivot_root, ".", ".old") < 0)
		init_fail("pivot_root", S);
	if (chdir("/") < 0)
		init_fail("chdir", "/");
	/* Detach the host's tree: after this, nothing of the host's filesystem is reachable. */
	if (umount2("/.old", MNT_DETACH) < 0)
		init_fail("umount", "/.old");
	rmdir("/.old");
	init_mount_proc();
	ts[5] = mono_ns();

	imsg_send(in.sock, M_READY, in.oom_protected ? 0 : 1, ts, 6, NULL, 0, NULL, 0);
}

/* Child of init: becomes the run'd process. Errors go to errfd (CLOEXEC, so EOF = exec worked). */
static void init_exec_child(int fds[4], int errfd, uint32_t uid, uint32_t gid, const char *cwd,
			    char **argv, char **envp) __attribute__((noreturn));
static void init_exec_child(int fds[4], int errfd, uint32_t uid, uint32_t gid, const char *cwd,
			    char **argv, char **envp)
{
	const char *stage = "setsid";
	if (setsid() < 0)
		goto fail;
	/* Move the pipes out of the 0..3 range first so dup2 cannot clobber one with another. */
	stage = "dup";
	int tmp[4];
	for (int i = 0; i < 4; i++)
		if ((tmp[i] = fcntl(fds[i], F_DUPFD_CLOEXEC, 16)) < 0)
			goto fail;
	for (int i = 0; i < 4; i++)
		if (dup2(tmp[i], i) < 0)
			goto fail;
	/* Everything else (control socket, signalfd, ...) must not survive exec. Mark rather than
	 * close so errfd still works until execve. */
	if (syscall(SYS_close_range, 4u, ~0u, CLOSE_RANGE_CLOEXEC) < 0)
		goto fail;
	umask(022); /* init runs with umask 0 to get exact modes on its mounts */
	/* Init is oom_score_adj -1000; that is inherited and must not be. Done as root, before
	 * setuid makes /proc/self root-owned. */
	stage = "oom_score_adj";
	if (in.oom_protected && write_file("/root/proc/self/oom_score_adj", "0") < 0)
		goto fail;
	signal(SIGPIPE, SIG_DFL); /* SIG_IGN survives exec; sandboxd ignores SIGPIPE */
	sigset_t all;
	sigemptyset(&all);
	sigprocmask(SIG_SETMASK, &all, NULL);
	stage = "chroot";
	if (chroot("/root") < 0)
		goto fail;
	stage = "chdir";
	if (chdir(cwd) < 0)
		goto fail;
	stage = "setgroups";
	if (setgroups(0, NULL) < 0)
		goto fail;
	stage = "setgid";
	if (setgid(gid) < 0)
		goto fail;
	stage = "setuid";
	if (setuid(uid) < 0)
		goto fail;
	stage = "no_new_privs";
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		goto fail;
	stage = "execve";
	execve(argv[0], argv, envp);
fail:;
	char buf[512];
	int n = snprintf(buf, sizeof buf, "%s %s: %s", stage, stage[0] == 'e' ? argv[0] : "",
			 strerror(errno));
	if (n > 0) {
		ssize_t r = write(errfd, buf, (size_t)n);
		(void)r;
	}
	_exit(127);
}

static void init_reply_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void init_reply_error(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof buf)
		n = sizeof buf - 1;
	imsg_send(in.sock, M_ERROR, 0, NULL, 0, buf, (size_t)n, NULL, 0);
}

static void init_handle_run(struct rmsg *m)
{
	struct run_spec rs;
	if (in.run_pid) {
		init_reply_error("a run is already active");
		return;
	}
	if (m->nfds == 5) {
		/* Big spec: it came in a memfd (see SPEC_INLINE_MAX). */
		struct stat st;
		if (fstat(m->fds[4], &st) < 0 || st.st_size < (off_t)sizeof rs ||
		    st.st_size > (off_t)MAX_FRAME) {
			init_reply_error("bad run spec memfd");
			return;
		}
		free(m->payload);
		m->plen = (size_t)st.st_size;
		m->payload = xmalloc(m->plen + 1);
		if (pread(m->fds[4], m->payload, m->plen, 0) != (ssize_t)m->plen) {
			init_reply_error("read run spec memfd: %s", strerror(errno));
			return;
		}
		m->payload[m->plen] = 0;
		xclose(&m->fds[4]);
		m->nfds = 4;
	}
	if (m->nfds != 4 || m->plen < sizeof rs) {
		init_reply_error("malformed run message");
		return;
	}
	memcpy(&rs, m->payload, sizeof rs);
	/* Unpack cwd, argv, env (the host built it, but still never read past the payload). */
	size_t nstr = 1 + (size_t)rs.argc + (size_t)rs.envc;
	if (rs.argc == 0 || nstr > m->plen) {
		init_reply_error("malformed run spec");
		return;
	}
	char **strs = xmalloc((nstr + 2) * sizeof *strs);
	char *p = m->payload + sizeof rs, *end = m->payload + m->plen;
	for (size_t i = 0; i < nstr; i++) {
		char *z = memchr(p, 0, (size_t)(end - p));
		if (!z) {
			free(strs);
			init_reply_error("malformed run spec");
			return;
		}
		strs[i] = p;
		p = z + 1;
	}
	/* Layout: strs = cwd, argv[0..argc-1], NULL, env[0..envc-1], NULL */
	char *cwd = strs[0];
	char **argv = xmalloc((rs.argc + 1) * sizeof *argv);
	char **envp = xmalloc((rs.envc + 1) * sizeof *envp);
	for (uint32_t i = 0; i < rs.argc; i++)
		argv[i] = strs[1 + i];
	argv[rs.argc] = NULL;
	for (uint32_t i = 0; i < rs.envc; i++)
		envp[i] = strs[1 + rs.argc + i];
	envp[rs.envc] = NULL;

	int ep[2];
	if (pipe2(ep, O_CLOEXEC) < 0) {
		init_reply_error("pipe: %s", strerror(errno));
		goto out;
	}
	pid_t pid = fork();
	if (pid == 0) {
		close(ep[0]);
		init_exec_child(m->fds, ep[1], rs.uid, rs.gid, cwd, argv, envp);
	}
	close(ep[1]);
	if (pid < 0) {
		close(ep[0]);
		init_reply_error("fork: %s", strerror(errno));
		goto out;
	}
	/* Only the child may hold the child ends of the pipes, or they never reach EOF. */
	rmsg_free(m);
	char err[512];
	ssize_t n;
	do
		n = read(ep[0], err, sizeof err - 1);
	while (n < 0 && errno == EINTR);
	uint64_t t = mono_ns();
	close(ep[0]);
	if (n > 0) {
		err[n] = 0;
		waitpid(pid, NULL, 0);
		init_reply_error("%s", err);
		goto out;
	}
	in.run_pid = pid;
	imsg_send(in.sock, M_STARTED, pid, &t, 1, NULL, 0, NULL, 0);
out:
	free(strs);
	free(argv);
	free(envp);
}

static void init_handle_reset(struct rmsg *m)
{
	uint64_t ts[4];
	ts[0] = mono_ns();
	init_killall();
	in.run_pid = 0;
	ts[1] = mono_ns();

	ts[2] = mono_ns();
	/* Drop the whole old root (overlay and everything mounted under it), then the rw layer
	 * under it; the lower bind, the rbind sources and the device tmpfs are kept. */
	if (umount2("/root", MNT_DETACH) < 0)
		init_fail("umount", "/root");
	if (umount2("/rw", MNT_DETACH) < 0)
		init_fail("umount", "/rw");
	init_build_root("");
	init_mount_proc();
	if (m->plen)
		init_set_hostname(m->payload);
	ts[3] = mono_ns();
	imsg_send(in.sock, M_RESET_DONE, 0, ts, 4, NULL, 0, NULL, 0);
}

static void init_handle_app(struct rmsg *m)
{
	if (m->nfds != 1) {
		init_reply_error("app message without fd");
		return;
	}
	if (mkdir_p("/root/app", 0755) < 0) {
		init_reply_error("mkdir /root/app: %s", strerror(errno));
		return;
	}
	if (syscall(SYS_move_mount, m->fds[0], "", AT_FDCWD, "/root/app", MOVE_MOUNT_F_EMPTY_PATH) <
	    0) {
		init_reply_error("move_mount /root/app: %s", strerror(errno));
		return;
	}
	imsg_send(in.sock, M_APP_DONE, 0, NULL, 0, NULL, 0, NULL, 0);
}

static void init_reap(void)
{
	for (;;) {
		int st;
		pid_t p = waitpid(-1, &st, WNOHANG);
		if (p <= 0)
			break;
		if (p == in.run_pid) {
			in.run_pid = 0;
			/* PROTOCOL.md: exit only after every other process is gone. */
			init_killall();
			imsg_send(in.sock, M_EXIT, st, NULL, 0, NULL, 0, NULL, 0);
		}
	}
}

static void init_main(int sock, const struct create_cfg *cfg) __attribute__((noreturn));
static void init_main(int sock, const struct create_cfg *cfg)
{
	/* If sandboxd dies, we die, and with us (PID 1) the whole pid namespace. */
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	in.cfg = cfg;
	/* We inherited every host fd, including other sandboxes' run pipes: holding one of those
	 * would keep another run's pipes from ever reaching EOF. Keep only fd 2 and the socket. */
	if (sock != 3) {
		if (dup2(sock, 3) < 0)
			_exit(1);
		sock = 3;
	}
	set_cloexec(sock, true);
	syscall(SYS_close_range, 4u, ~0u, 0u);
	int nul = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nul >= 0) {
		dup2(nul, 0);
		dup2(nul, 1); /* never the protocol stream */
		close(nul);
	}
	in.sock = sock;
	umask(0);
	/* The OOM killer must pick the sandbox's processes, never the init that reports on them.
	 * The host /proc is still mounted here (we share the host's tree until pivot). Lowering
	 * below 0 needs CAP_SYS_RESOURCE; without it (e.g. a container that drops it) we carry on
	 * with the inherited value and the host warns once (READY.val bit 0). */
	if (write_file("/proc/self/oom_score_adj", "-1000") == 0)
		in.oom_protected = true;
	else if (errno != EACCES && errno != EPERM)
		init_fail("write", "/proc/self/oom_score_adj");
	sigset_t ss;
	sigemptyset(&ss);
	sigaddset(&ss, SIGCHLD);
	sigprocmask(SIG_BLOCK, &ss, NULL);
	in.sigfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
	if (in.sigfd < 0)
		init_fail("signalfd", NULL);

	struct rmsg m;
	int r = imsg_recv(sock, &m);
	if (r <= 0 || m.h.type != M_GO)
		_exit(1);
	rmsg_free(&m);
	init_create();

	for (;;) {
		struct pollfd pf[2] = {{.fd = in.sigfd, .events = POLLIN},
				       {.fd = sock, .events = POLLIN}};
		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			_exit(1);
		}
		if (pf[0].revents) {
			struct signalfd_siginfo si;
			while (read(in.sigfd, &si, sizeof si) > 0)
				;
			init_reap();
		}
		if (pf[1].revents) {
			r = imsg_recv(sock, &m);
			if (r <= 0)
				_exit(0); /* host gone: exiting tears the namespace down */
			switch (m.h.type) {
			case M_RUN:
				init_handle_run(&m);
				break;
			case M_KILL:
				kill(-1, SIGKILL); /* init_reap() collects them and reports EXIT */
				break;
			case M_KILLALL:
				init_killall();
				imsg_send(in.sock, M_KILLED, 0, NULL, 0, NULL, 0, NULL, 0);
				break;
			case M_RESET:
				init_handle_reset(&m);
				break;
			case M_APP:
				init_handle_app(&m);
				break;
			default:
				init_reply_error("unknown message %u", m.h.type);
			}
			rmsg_free(&m);
		}
	}
}

/* ======================================================================================
 * Sandbox table (host side)
 * ====================================================================================== */

enum { FD_IN, FD_OUT, FD_ERR, FD_CHAN };
static const char *const stream_name[] = {"in", "out", "err", "chan"};

struct run {
	char *id;
	int fd[4];      /* host ends: stdin write end, stdout/stderr/chan read ends */
	uint8_t *inbuf; /* stdin bytes still to write */
	size_t inlen, inoff;
	bool exited; /* init reported EXIT (or init died) */
	int status;
	/* `spawn` (zygote) runs; for `run`, started is true from the start and zfd is -1. */
	bool started;         /* `started` was emitted; output pipes are polled only after it */
	int zfd;              /* connection to the zygote's C1 (-1 once closed) */
	bool kill_pending;    /* `kill` arrived before `started`: send M_KILL when it comes */
	bool killall_pending; /* M_KILLALL sent, waiting for M_KILLED */
	char zstatus[40];     /* status text reported by C1 (or "lost"); wins over status */
	char *err;            /* spawn failed before start: emit `error` (not `exit`) with this */
};

struct sandbox {
	char *name;
	pid_t init;
	int ctl; /* host end of the socketpair; -1 once init is gone */
	pid_t slirp;
	int slirp_exit; /* write end of slirp4netns --exit-fd; closing it stops slirp */
	struct run *run;
	bool died; /* init died on its own: send `died` after the run's `exit` */
	int died_status;
	bool gone; /* removed from the table; freed at the end of the loop iteration */
	char **cg; /* the cgroup.procs paths given at create (spawn passes them to the zygote) */
	int ncg;
	/* `prepare`: a zygote C1 that joined the sandbox and waits on this connection for `go`
	 * (PROTOCOL.md). At most one; -1 if none. prep_ready once its `prepared` arrived. */
	int prep_fd;
	char *prep_zyg; /* the zygote socket path it came from (spawn uses it only if equal) */
	bool prep_ready;
	long prep_pid; /* the waiter's host pid (from `prepared`; diagnostics only) */
};

static struct sandbox **sbs;
static size_t nsbs;
static struct sandbox **graveyard;
static size_t ngrave;
static pid_t host_pid;

static struct sandbox *sb_find(const char *name)
{
	for (size_t i = 0; i < nsbs; i++)
		if (strcmp(sbs[i]->name, name) == 0)
			return sbs[i];
	return NULL;
}

static struct sandbox *sb_find_init(pid_t pid)
{
	for (size_t i = 0; i < nsbs; i++)
		if (sbs[i]->init == pid)
			return sbs[i];
	return NULL;
}

static void sb_add(struct sandbox *sb)
{
	sbs = xrealloc(sbs, (nsbs + 1) * sizeof *sbs);
	sbs[nsbs++] = sb;
}

static void run_free(struct run *r)
{
	if (!r)
		return;
	for (int i = 0; i < 4; i++)
		xclose(&r->fd[i]);
	xclose(&r->zfd);
	free(r->inbuf);
	free(r->err);
	free(r->id);
	free(r);
}

/* Stop slirp4netns: closing its exit fd asks it to leave; SIGKILL makes sure. Reaped by caller
 * (synchronously) or by the SIGCHLD loop. */
static void sb_stop_slirp(struct sandbox *sb, bool wait)
{
	xclose(&sb->slirp_exit);
	if (sb->slirp > 0) {
		kill(sb->slirp, SIGKILL);
		if (wait)
			while (waitpid(sb->slirp, NULL, 0) < 0 && errno == EINTR)
				;
		sb->slirp = 0;
	}
}

#define PREP_WAIT_MS 1000 /* bound for a discarded waiter to close its end (it exits on EOF) */

/*
 * Drop the sandbox's prepared waiter (if any). A waiter still joining gets its `prepare`
 * answered with `error <sbx> - <why>` (unless why is NULL). We only shut down our sending side:
 * the waiter sees EOF and exits, and its exit closes its end, which we see as EOF. With wait,
 * block (bounded) until then, so that nothing of it is left (its root pins the sandbox's old
 * root, which matters for reset).
 */
static void prep_discard(struct sandbox *sb, const char *why, bool wait)
{
	if (sb->prep_fd < 0)
		return;
	if (!sb->prep_ready && why)
		emit_error(sb->name, NULL, "prepare: %s", why);
	shutdown(sb->prep_fd, SHUT_WR);
	if (wait) {
		uint64_t deadline = mono_ns() + (uint64_t)PREP_WAIT_MS * 1000000ull;
		char buf[512];
		for (;;) {
			ssize_t n = recv(sb->prep_fd, buf, sizeof buf, MSG_DONTWAIT);
			if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
				break; /* EOF (or reset): the waiter is gone */
			if (n > 0)
				continue; /* a late `prepared`/`error`: drop it */
			uint64_t now = mono_ns();
			if (now >= deadline) {
				logmsg("sandbox %s: prepared waiter %ld did not exit within %d ms",
				       sb->name, sb->prep_pid, PREP_WAIT_MS);
				break;
			}
			struct pollfd pf = {.fd = sb->prep_fd, .events = POLLIN};
			poll(&pf, 1, (int)((deadline - now) / 1000000ull) + 1);
		}
	}
	xclose(&sb->prep_fd);
	free(sb->prep_zyg);
	sb->prep_zyg = NULL;
	sb->prep_ready = false;
	sb->prep_pid = 0;
}

/* The waiter's connection is readable: its `prepared` (or `error`), or it went away. */
static void prep_readable(struct sandbox *sb)
{
	char buf[4096];
	ssize_t n = recv(sb->prep_fd, buf, sizeof buf - 1, MSG_DONTWAIT);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		if (sb->prep_ready)
			logmsg("sandbox %s: prepared waiter %ld went away", sb->name, sb->prep_pid);
		prep_discard(sb, "the zygote closed the connection before the waiter was ready",
			     false);
		return;
	}
	buf[n] = 0;
	const char *fld[4] = {buf, "", "", ""};
	int nf = 1;
	for (char *p = buf; nf < 4 && (p = memchr(p, 0, (size_t)(buf + n - p))) != NULL;) {
		p++;
		fld[nf++] = p;
		if (p >= buf + n)
			break;
	}
	if (!sb->prep_ready && !strcmp(fld[0], "prepared") && nf >= 4) {
		sb->prep_ready = true;
		sb->prep_pid = strtol(fld[1], NULL, 10);
		ob_begin("prepared");
		ob_str(sb->name);
		ob_str(fld[3]); /* spans=fork,request,cgroup,setns,warm */
		ob_send();
	} else if (!sb->prep_ready && !strcmp(fld[0], "error")) {
		emit_error(sb->name, NULL, "prepare: %s", nf >= 2 ? fld[1] : "zygote error");
		prep_discard(sb, NULL, false);
	} else {
		logmsg("sandbox %s: unexpected message '%.40s' from the prepared waiter; dropping it",
		       sb->name, fld[0]);
		prep_discard(sb, "unexpected reply from the zygote", false);
	}
}

/* Take the sandbox out of the table. Its memory lives until the end of the loop iteration,
 * because pollfd bookkeeping for this iteration may still point at it. */
static void sb_remove(struct sandbox *sb)
{
	for (size_t i = 0; i < nsbs; i++)
		if (sbs[i] == sb) {
			sbs[i] = sbs[--nsbs];
			break;
		}
	xclose(&sb->ctl);
	sb_stop_slirp(sb, false);
	prep_discard(sb, "the sandbox went away", false);
	run_free(sb->run);
	sb->run = NULL;
	sb->gone = true;
	graveyard = xrealloc(graveyard, (ngrave + 1) * sizeof *graveyard);
	graveyard[ngrave++] = sb;
}

static void graveyard_sweep(void)
{
	for (size_t i = 0; i < ngrave; i++) {
		for (int j = 0; j < graveyard[i]->ncg; j++)
			free(graveyard[i]->cg[j]);
		free(graveyard[i]->cg);
		free(graveyard[i]->name);
		free(graveyard[i]);
	}
	ngrave = 0;
}

/* Emit `exit` once the run has ended AND all output pipes reached EOF (PROTOCOL.md order). */
static void run_maybe_finish(struct sandbox *sb)
{
	struct run *r = sb->run;
	if (r && r->exited && !r->started)
		for (int k = 0; k < 4; k++)
			xclose(&r->fd[k]); /* never started: its output is not reported */
	if (!r || !r->exited || r->fd[FD_OUT] >= 0 || r->fd[FD_ERR] >= 0 || r->fd[FD_CHAN] >= 0)
		return;
	char st[64];
	if (!r->started) {
		/* A spawn that never started (zygote error, or the sandbox went away first):
		 * `error`, never `exit`. */
		emit_error(sb->name, r->id, "%s",
			   r->err ? r->err : "the sandbox went away before the instance started");
	} else {
		if (r->zstatus[0])
			snprintf(st, sizeof st, "%s", r->zstatus);
		else
			fmt_status(st, sizeof st, r->status);
		ob_begin("exit");
		ob_str(sb->name);
		ob_str(r->id);
		ob_str(st);
		ob_u64(mono_ns());
		ob_send();
	}
	run_free(r);
	sb->run = NULL;
	if (sb->died) {
		fmt_status(st, sizeof st, sb->died_status);
		ob_begin("died");
		ob_str(sb->name);
		ob_str(st);
		ob_send();
		sb_remove(sb);
	}
}

/* Read one chunk from an output pipe and emit it; EOF closes the pipe. */
static void run_read(struct sandbox *sb, int k)
{
	struct run *r = sb->run;
	static uint8_t buf[CHUNK];
	ssize_t n = read(r->fd[k], buf, sizeof buf);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		xclose(&r->fd[k]);
		run_maybe_finish(sb);
		return;
	}
	ob_begin("data");
	ob_str(sb->name);
	ob_str(r->id);
	ob_str(stream_name[k]);
	ob_u64(mono_ns());
	ob_field(buf, (size_t)n);
	ob_send();
}

static void run_write_stdin(struct run *r)
{
	while (r->inoff < r->inlen) {
		ssize_t w = write(r->fd[FD_IN], r->inbuf + r->inoff, r->inlen - r->inoff);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN)
				return;
			break; /* EPIPE: the reader is gone; the rest is discarded */
		}
		r->inoff += (size_t)w;
	}
	xclose(&r->fd[FD_IN]); /* all written (or reader gone): the process sees EOF */
	free(r->inbuf);
	r->inbuf = NULL;
}

/* Asynchronous messages from init (only EXIT is expected outside a synchronous exchange). */
static void sb_handle_async(struct sandbox *sb, struct rmsg *m)
{
	if (m->h.type == M_EXIT && sb->run && !sb->run->exited) {
		sb->run->exited = true;
		sb->run->status = m->h.val;
		run_maybe_finish(sb);
	} else if (m->h.type == M_KILLED) {
		/* A spawned run's instance ended and init has killed and reaped everything else:
		 * the run is over once its pipes are drained. */
		struct run *r = sb->run;
		if (r && r->killall_pending) {
			r->killall_pending = false;
			r->exited = true;
			run_maybe_finish(sb);
		}
	} else {
		logmsg("sandbox %s: unexpected message %u from init", sb->name, m->h.type);
	}
}

/* Read whatever init sent (when poll says the control socket is readable). */
static void sb_ctl_readable(struct sandbox *sb)
{
	struct rmsg m;
	int r = imsg_recv(sb->ctl, &m);
	if (r <= 0) {
		/* init is gone (or going): stop polling; SIGCHLD will report the death. */
		xclose(&sb->ctl);
		return;
	}
	sb_handle_async(sb, &m);
	rmsg_free(&m);
}

/* ---- spawn (zygote) runs ---- */

/* The instance ended (or the zygote connection was lost, or it failed to start): have init
 * kill and reap everything else in the sandbox, then finish like `run` (see M_KILLED). */
static void spawn_end(struct sandbox *sb)
{
	struct run *r = sb->run;
	xclose(&r->zfd);
	if (!r->started) {
		/* Nothing will be reported for these pipes: drop them now. */
		for (int k = 0; k < 4; k++)
			xclose(&r->fd[k]);
	}
	if (sb->ctl >= 0 && imsg_send(sb->ctl, M_KILLALL, 0, NULL, 0, NULL, 0, NULL, 0) == 0) {
		r->killall_pending = true;
		return;
	}
	/* init is gone: everything in the sandbox died with it. */
	r->exited = true;
	run_maybe_finish(sb);
}

/* One reply from the zygote's C1: `started`, `exit` or `error` (fields separated by NUL). */
static void spawn_zyg_readable(struct sandbox *sb)
{
	struct run *r = sb->run;
	char buf[4096];
	ssize_t n = recv(r->zfd, buf, sizeof buf - 1, MSG_DONTWAIT);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n <= 0) {
		if (n < 0)
			logmsg("run %s/%s: zygote connection: %s", sb->name, r->id, strerror(errno));
		if (r->started)
			snprintf(r->zstatus, sizeof r->zstatus, "lost");
		else
			r->err = xstrdup("the zygote closed the connection before the instance started");
		spawn_end(sb);
		return;
	}
	buf[n] = 0;
	/* Split on NUL (C1's messages are text fields). */
	const char *fld[5] = {buf, "", "", "", ""};
	int nf = 1;
	for (char *p = buf; nf < 5 && (p = memchr(p, 0, (size_t)(buf + n - p))) != NULL;) {
		p++;
		fld[nf++] = p;
		if (p >= buf + n)
			break;
	}
	if (!strcmp(fld[0], "started") && !r->started && nf >= 4) {
		r->started = true;
		ob_begin("started");
		ob_str(sb->name);
		ob_str(r->id);
		ob_str(fld[1]); /* pid in the sandbox */
		ob_str(fld[3]); /* mono ns (C1 saw the instance's setup succeed) */
		ob_str(fld[2]); /* host pid (spawn only: for metrics, smaps_rollup) */
		ob_str(nf >= 5 ? fld[4] : "spans="); /* spawn only: where the time went */
		ob_send();
		if (r->kill_pending && sb->ctl >= 0)
			imsg_send(sb->ctl, M_KILL, 0, NULL, 0, NULL, 0, NULL, 0);
	} else if (!strcmp(fld[0], "exit") && r->started && nf >= 2) {
		snprintf(r->zstatus, sizeof r->zstatus, "%s", fld[1]);
		spawn_end(sb);
	} else if (!strcmp(fld[0], "error") && !r->started) {
		r->err = xstrdup(nf >= 2 ? fld[1] : "zygote error");
		spawn_end(sb);
	} else {
		logmsg("run %s/%s: unexpected zygote reply '%.40s'; treating the run as lost",
		       sb->name, r->id, fld[0]);
		if (r->started)
			snprintf(r->zstatus, sizeof r->zstatus, "lost");
		else
			r->err = xstrdup("unexpected reply from the zygote");
		spawn_end(sb);
	}
}

/*
 * Wait (bounded) for init's reply to a synchronous request. An EXIT that is somehow in the way
 * is handled as usual. Returns 1 with *m filled, or 0 with errmsg set.
 */
static int sb_wait_reply(struct sandbox *sb, struct rmsg *m, char *errmsg, size_t errlen)
{
	uint64_t deadline = mono_ns() + (uint64_t)INIT_TIMEOUT_MS * 1000000ull;
	for (;;) {
		if (sb->ctl < 0) {
			snprintf(errmsg, errlen, "sandbox init is gone");
			return 0;
		}
		uint64_t now = mono_ns();
		if (now >= deadline) {
			snprintf(errmsg, errlen, "timed out waiting for sandbox init");
			return 0;
		}
		struct pollfd pf = {.fd = sb->ctl, .events = POLLIN};
		int pr = poll(&pf, 1, (int)((deadline - now) / 1000000ull) + 1);
		if (pr < 0 && errno != EINTR) {
			snprintf(errmsg, errlen, "poll: %s", strerror(errno));
			return 0;
		}
		if (pr <= 0)
			continue;
		int r = imsg_recv(sb->ctl, m);
		if (r <= 0) {
			xclose(&sb->ctl);
			snprintf(errmsg, errlen, "sandbox init died");
			return 0;
		}
		if (m->h.type == M_EXIT || m->h.type == M_KILLED) {
			sb_handle_async(sb, m);
			rmsg_free(m);
			continue;
		}
		if (m->h.type == M_ERROR) {
			snprintf(errmsg, errlen, "%s", m->payload);
			rmsg_free(m);
			return 0;
		}
		return 1;
	}
}

/* Kill init and wait for it: the kernel kills and reaps the whole pid namespace first. */
static int sb_kill_init(struct sandbox *sb)
{
	int st = 0;
	if (sb->init > 0) {
		kill(sb->init, SIGKILL);
		while (waitpid(sb->init, &st, 0) < 0 && errno == EINTR)
			;
		sb->init = 0;
	}
	return st;
}

/* ======================================================================================
 * Host side: commands
 * ====================================================================================== */

/* Names travel as protocol fields and are echoed back: non-empty text, no NUL. */
static bool valid_name(const struct field *f)
{
	return f->len > 0 && f->len <= 256 && field_is_str(f) && strcmp(f->p, "-") != 0;
}

static bool parse_u64(const char *s, uint64_t *out)
{
	if (!*s || *s == '-' || *s == '+')
		return false;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

/* Absolute, no ".." component: the path is joined under the sandbox root. */
static bool valid_inner_path(const char *p)
{
	if (p[0] != '/')
		return false;
	for (const char *c = p; (c = strstr(c, "..")); c += 2)
		if ((c == p || c[-1] == '/') && (c[2] == 0 || c[2] == '/'))
			return false;
	return true;
}

/* Split an option field into key and value (value points into the field). */
static bool opt_split(const struct field *f, char *key, size_t keylen, const char **val)
{
	const char *eq = memchr(f->p, '=', f->len);
	if (!eq || (size_t)(eq - f->p) >= keylen)
		return false;
	memcpy(key, f->p, (size_t)(eq - f->p));
	key[eq - f->p] = 0;
	*val = eq + 1;
	return true;
}

/* Spawn slirp4netns for init's netns; returns the read end of its ready pipe or -1. */
static int start_slirp(struct sandbox *sb, const char *bin, char *err, size_t errlen)
{
	int ready[2], ex[2];
	if (pipe2(ready, O_CLOEXEC) < 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		return -1;
	}
	if (pipe2(ex, O_CLOEXEC) < 0) {
		snprintf(err, errlen, "pipe: %s", strerror(errno));
		close(ready[0]);
		close(ready[1]);
		return -1;
	}
	char pidstr[32];
	snprintf(pidstr, sizeof pidstr, "%d", (int)sb->init);
	pid_t pid = fork();
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != host_pid)
			_exit(1);
		int r = fcntl(ready[1], F_DUPFD, 16), e = fcntl(ex[0], F_DUPFD, 16);
		if (r < 0 || e < 0 || dup2(r, 3) < 0 || dup2(e, 4) < 0)
			_exit(127);
		int nul = open("/dev/null", O_RDWR);
		if (nul < 0 || dup2(nul, 0) < 0 || dup2(nul, 1) < 0) /* stdout is the protocol */
			_exit(127);
		syscall(SYS_close_range, 5u, ~0u, 0u);
		signal(SIGPIPE, SIG_DFL);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		char *argv[] = {(char *)bin,    "--configure", "--mtu=65520", "--ready-fd=3",
				"--exit-fd=4",  pidstr,        "tap0",        NULL};
		execvp(bin, argv);
		logmsg("exec %s: %s", bin, strerror(errno));
		_exit(127);
	}
	close(ready[1]);
	close(ex[0]);
	if (pid < 0) {
		snprintf(err, errlen, "fork: %s", strerror(errno));
		close(ready[0]);
		close(ex[1]);
		return -1;
	}
	sb->slirp = pid;
	sb->slirp_exit = ex[1];
	return ready[0];
}

static int wait_slirp_ready(int fd, char *err, size_t errlen)
{
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	int pr;
	do
		pr = poll(&pf, 1, INIT_TIMEOUT_MS);
	while (pr < 0 && errno == EINTR);
	char c = 0;
	ssize_t n = pr > 0 ? read(fd, &c, 1) : -1;
	if (n == 1 && c == '1')
		return 0;
	snprintf(err, errlen, "slirp4netns did not become ready%s", pr == 0 ? " (timeout)" : "");
	return -1;
}

static void cmd_create(struct field *f, size_t nf)
{
	if (nf < 2 || !valid_name(&f[1])) {
		emit_error(NULL, NULL, "create: missing or invalid sandbox name");
		return;
	}
	const char *name = f[1].p;
	if (sb_find(name)) {
		emit_error(name, NULL, "sandbox already exists");
		return;
	}
	struct create_cfg cfg = {.hostname = name, .rwsize = 64u << 20};
	const char **cgroups = xmalloc(nf * sizeof *cgroups);
	cfg.rb_src = xmalloc(nf * sizeof *cfg.rb_src);
	cfg.rb_dst = xmalloc(nf * sizeof *cfg.rb_dst);
	char **rbcopy = xmalloc(nf * sizeof *rbcopy);
	int ncg = 0, nrb = 0;
	bool slirp = false;
	const char *slirp_bin = "slirp4netns";
	char err[1024] = "";
	struct sandbox *sb = NULL;
	int ready_fd = -1;

	for (size_t i = 2; i < nf; i++) {
		char key[32];
		const char *v;
		if (!field_is_str(&f[i]) || !opt_split(&f[i], key, sizeof key, &v)) {
			snprintf(err, sizeof err, "bad option field");
			goto fail;
		}
		if (!strcmp(key, "hostname")) {
			if (strlen(v) > 64) {
				snprintf(err, sizeof err, "hostname too long");
				goto fail;
			}
			cfg.hostname = v;
		} else if (!strcmp(key, "lower"))
			cfg.lower = v;
		else if (!strcmp(key, "mnt"))
			cfg.mnt = v;
		else if (!strcmp(key, "app"))
			cfg.app = v;
		else if (!strcmp(key, "rwsize")) {
			if (!parse_u64(v, &cfg.rwsize) || cfg.rwsize == 0) {
				snprintf(err, sizeof err, "bad rwsize");
				goto fail;
			}
		} else if (!strcmp(key, "rbind")) {
			char *c = rbcopy[nrb] = xstrdup(v);
			char *colon = strchr(c, ':');
			if (!colon || colon == c || !valid_inner_path(colon + 1)) {
				free(c);
				snprintf(err, sizeof err, "bad rbind (want SRC:/DST)");
				goto fail;
			}
			*colon = 0;
			cfg.rb_src[nrb] = c;
			cfg.rb_dst[nrb++] = colon + 1;
		} else if (!strcmp(key, "cgroup"))
			cgroups[ncg++] = v;
		else if (!strcmp(key, "net")) {
			if (!strcmp(v, "slirp"))
				slirp = true;
			else if (strcmp(v, "none")) {
				snprintf(err, sizeof err, "bad net (none|slirp)");
				goto fail;
			}
		} else if (!strcmp(key, "slirp"))
			slirp_bin = v;
		else {
			snprintf(err, sizeof err, "unknown option %s", key);
			goto fail;
		}
	}
	cfg.nrbind = nrb;
	if (!cfg.lower || !cfg.mnt || cfg.lower[0] != '/' || cfg.mnt[0] != '/') {
		snprintf(err, sizeof err, "lower= and mnt= (absolute paths) are required");
		goto fail;
	}

	sb = calloc(1, sizeof *sb);
	if (!sb)
		exit(3);
	sb->name = xstrdup(name);
	sb->ctl = sb->slirp_exit = sb->prep_fd = -1;
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		snprintf(err, sizeof err, "socketpair: %s", strerror(errno));
		goto fail;
	}

	uint64_t sp[10];
	sp[0] = mono_ns();
	pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET |
						      CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD,
				   0, 0, 0, 0);
	if (pid == 0) {
		close(sv[0]);
		init_main(sv[1], &cfg);
	}
	sp[1] = mono_ns();
	close(sv[1]);
	if (pid < 0) {
		close(sv[0]);
		snprintf(err, sizeof err, "clone: %s", strerror(errno));
		goto fail;
	}
	sb->init = pid;
	sb->ctl = sv[0];

	/* cgroups before init runs anything, so every byte it allocates is accounted. */
	sp[2] = mono_ns();
	char pidstr[32];
	snprintf(pidstr, sizeof pidstr, "%d\n", (int)pid);
	for (int i = 0; i < ncg; i++)
		if (write_file(cgroups[i], pidstr) < 0) {
			snprintf(err, sizeof err, "join cgroup %s: %s", cgroups[i], strerror(errno));
			goto fail;
		}
	sp[3] = mono_ns();

	/* slirp4netns only needs the netns, which exists since clone: start it now so its
	 * startup overlaps init's mounts. */
	uint64_t slirp_t0 = 0;
	if (slirp) {
		slirp_t0 = mono_ns();
		ready_fd = start_slirp(sb, slirp_bin, err, sizeof err);
		if (ready_fd < 0)
			goto fail;
	}
	/* If init already failed, the send fails but its error message is still queued for us:
	 * fall through to the wait, which reports it. */
	imsg_send(sb->ctl, M_GO, 0, NULL, 0, NULL, 0, NULL, 0);
	struct rmsg m;
	if (!sb_wait_reply(sb, &m, err, sizeof err))
		goto fail;
	uint64_t its[6];
	memcpy(its, m.h.ts, sizeof its);
	bool ok = m.h.type == M_READY;
	static bool oom_warned;
	if (ok && (m.h.val & 1) && !oom_warned) {
		oom_warned = true;
		logmsg("warning: cannot set init oom_score_adj to -1000 (no CAP_SYS_RESOURCE); "
		       "inits keep the inherited value");
	}
	rmsg_free(&m);
	if (!ok) {
		snprintf(err, sizeof err, "unexpected reply from init");
		goto fail;
	}
	if (slirp) {
		if (wait_slirp_ready(ready_fd, err, sizeof err) < 0)
			goto fail;
		uint64_t t = mono_ns();
		if (slirp_t0 < its[2])
			its[2] = slirp_t0;
		if (t > its[3])
			its[3] = t;
	}
	xclose(&ready_fd);
	sb->cg = xmalloc(((size_t)ncg + 1) * sizeof *sb->cg);
	for (int i = 0; i < ncg; i++)
		sb->cg[i] = xstrdup(cgroups[i]);
	sb->ncg = ncg;
	sb_add(sb);
	ob_begin("created");
	ob_str(name);
	ob_fmt("%d", (int)pid);
	ob_fmt("spans=clone:%" PRIu64 ":%" PRIu64 ",cgroup:%" PRIu64 ":%" PRIu64
	       ",mounts:%" PRIu64 ":%" PRIu64 ",net:%" PRIu64 ":%" PRIu64 ",pivot:%" PRIu64
	       ":%" PRIu64,
	       sp[0], sp[1], sp[2], sp[3], its[0], its[1], its[2], its[3], its[4], its[5]);
	ob_send();
	goto out;

fail:
	xclose(&ready_fd);
	if (sb) {
		xclose(&sb->ctl);
		sb_kill_init(sb);
		sb_stop_slirp(sb, true);
		free(sb->name);
		free(sb);
	}
	emit_error(name, NULL, "%s", err);
out:
	for (int i = 0; i < nrb; i++)
		free(rbcopy[i]);
	free(rbcopy);
	free(cgroups);
	free(cfg.rb_src);
	free(cfg.rb_dst);
}

/* The sandbox a `run`/`spawn` may start in (no active run, init alive); else the error is
 * emitted and NULL returned. */
static struct sandbox *sb_for_run(const char *name, const char *rid)
{
	struct sandbox *sb = sb_find(name);
	if (!sb)
		emit_error(name, rid, "no such sandbox");
	else if (sb->run)
		emit_error(name, rid, "a run is already active in this sandbox");
	else if (sb->ctl < 0 || sb->init <= 0)
		emit_error(name, rid, "sandbox init is gone");
	else
		return sb;
	return NULL;
}

/* A new run with its four pipes: r->fd[] are our ends, child[0..3] the process's (stdin is read
 * by the process, the others written). NULL with `err` set on failure. */
static struct run *run_new(const char *rid, int child[4], char *err, size_t errlen)
{
	struct run *r = calloc(1, sizeof *r);
	if (!r)
		exit(3);
	for (int i = 0; i < 4; i++)
		r->fd[i] = -1;
	r->id = xstrdup(rid);
	r->zfd = -1;
	int pp[2];
	for (int i = 0; i < 4; i++) {
		if (pipe2(pp, O_CLOEXEC) < 0) {
			snprintf(err, errlen, "pipe: %s", strerror(errno));
			for (int j = 0; j < i; j++)
				close(child[j]);
			run_free(r);
			return NULL;
		}
		child[i] = i == FD_IN ? pp[0] : pp[1];
		r->fd[i] = i == FD_IN ? pp[1] : pp[0];
	}
	return r;
}

/* stdin is written from the event loop (non-blocking): it may exceed the pipe buffer. */
static void run_take_stdin(struct run *r, const uint8_t *in, size_t len)
{
	set_nonblock(r->fd[FD_IN]);
	if (len) {
		r->inbuf = xmalloc(len);
		memcpy(r->inbuf, in, len);
		r->inlen = len;
	} else {
		xclose(&r->fd[FD_IN]);
	}
}

static void cmd_run(struct field *f, size_t nf)
{
	if (nf < 3 || !valid_name(&f[1]) || !valid_name(&f[2])) {
		emit_error(NULL, NULL, "run: missing or invalid sandbox/run id");
		return;
	}
	const char *name = f[1].p, *rid = f[2].p;
	struct sandbox *sb = sb_for_run(name, rid);
	if (!sb)
		return;
	/* Serialize: run_spec, cwd, argv..., env... */
	struct run_spec rs = {.uid = UINT32_MAX, .gid = UINT32_MAX};
	const char *cwd = "/";
	const uint8_t *in_bytes = NULL;
	size_t in_len = 0, total = 0;
	for (size_t i = 3; i < nf; i++) {
		char key[16];
		const char *v;
		if (f[i].len >= 6 && memcmp(f[i].p, "stdin=", 6) == 0) {
			in_bytes = (const uint8_t *)f[i].p + 6;
			in_len = f[i].len - 6;
			continue;
		}
		if (!field_is_str(&f[i]) || !opt_split(&f[i], key, sizeof key, &v)) {
			emit_error(name, rid, "bad option field");
			return;
		}
		uint64_t u;
		if (!strcmp(key, "arg"))
			rs.argc++, total += strlen(v) + 1;
		else if (!strcmp(key, "env"))
			rs.envc++, total += strlen(v) + 1;
		else if (!strcmp(key, "cwd"))
			cwd = v;
		else if (!strcmp(key, "uid") || !strcmp(key, "gid")) {
			if (!parse_u64(v, &u) || u >= UINT32_MAX) {
				emit_error(name, rid, "bad %s", key);
				return;
			}
			*(key[0] == 'u' ? &rs.uid : &rs.gid) = (uint32_t)u;
		} else {
			emit_error(name, rid, "unknown option %s", key);
			return;
		}
	}
	if (rs.argc == 0 || rs.uid == UINT32_MAX || rs.gid == UINT32_MAX || cwd[0] != '/') {
		emit_error(name, rid, "arg=, uid= and gid= are required; cwd must be absolute");
		return;
	}
	size_t plen = sizeof rs + strlen(cwd) + 1 + total;
	char *payload = xmalloc(plen), *p = payload;
	memcpy(p, &rs, sizeof rs);
	p += sizeof rs;
	p = stpcpy(p, cwd) + 1;
	for (int pass = 0; pass < 2; pass++) /* argv first, then env */
		for (size_t i = 3; i < nf; i++)
			if (!strncmp(f[i].p, pass ? "env=" : "arg=", 4) && field_is_str(&f[i]))
				p = stpcpy(p, f[i].p + 4) + 1;

	int child[5];
	char err[1024];
	struct run *r = run_new(rid, child, err, sizeof err);
	if (!r)
		goto fail;
	r->started = true; /* `started` is emitted below, before the pipes are polled */
	int sr, se;
	if (plen <= SPEC_INLINE_MAX) {
		sr = imsg_send(sb->ctl, M_RUN, 0, NULL, 0, payload, plen, child, 4);
		se = errno;
	} else {
		int mfd = memfd_create("trenv-run-spec", MFD_CLOEXEC);
		sr = mfd < 0 || write_all(mfd, payload, plen) < 0 ? -1 : 0;
		if (sr == 0) {
			child[4] = mfd;
			sr = imsg_send(sb->ctl, M_RUN, 0, NULL, 0, NULL, 0, child, 5);
		}
		se = errno;
		if (mfd >= 0)
			close(mfd);
	}
	for (int i = 0; i < 4; i++)
		close(child[i]); /* init has its own copies now */
	if (sr < 0) {
		snprintf(err, sizeof err, "send to init: %s", strerror(se));
		goto fail;
	}
	struct rmsg m;
	if (!sb_wait_reply(sb, &m, err, sizeof err))
		goto fail;
	if (m.h.type != M_STARTED) {
		rmsg_free(&m);
		snprintf(err, sizeof err, "unexpected reply from init");
		goto fail;
	}
	ob_begin("started");
	ob_str(name);
	ob_str(rid);
	ob_fmt("%d", m.h.val);
	ob_u64(m.h.ts[0]);
	ob_send();
	rmsg_free(&m);
	free(payload);
	run_take_stdin(r, in_bytes, in_len);
	sb->run = r;
	return;
fail:
	free(payload);
	run_free(r);
	emit_error(name, rid, "%s", err);
}

/* A non-blocking connection to the zygote socket; -1 with errno and *what set on failure. */
static int zyg_connect(const struct sockaddr_un *sa, const char **what)
{
	*what = "socket";
	int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -1;
	*what = "connect to zygote";
	if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}

/* One request message (+ nfds fds by SCM_RIGHTS) to the zygote; -1 with errno on failure. */
static int zyg_send(int fd, const char *buf, size_t len, const int *fds, int nfds)
{
	struct iovec iov = {(void *)buf, len};
	union {
		char buf[CMSG_SPACE(sizeof(int) * 4)];
		struct cmsghdr align;
	} cm;
	memset(&cm, 0, sizeof cm);
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
	if (nfds > 0) {
		mh.msg_control = cm.buf;
		mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
	}
	int sr;
	do
		sr = (int)sendmsg(fd, &mh, MSG_NOSIGNAL);
	while (sr < 0 && errno == EINTR);
	return sr < 0 ? -1 : 0;
}

/*
 * prepare <sbx> zygote=<socket>: have the zygote fork a waiter that joins the sandbox now and
 * waits for `go` (the next spawn from the same zygote). Asynchronous: `prepared` comes from
 * the connection (prep_readable). Replaces an earlier waiter.
 */
static void cmd_prepare(struct field *f, size_t nf)
{
	if (nf != 3 || !valid_name(&f[1])) {
		emit_error(NULL, NULL, "prepare: want prepare <sbx> zygote=<socket>");
		return;
	}
	const char *name = f[1].p, *zygote = NULL;
	char key[16];
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (!field_is_str(&f[2]) || !opt_split(&f[2], key, sizeof key, &zygote) ||
	    strcmp(key, "zygote") || zygote[0] != '/' || strlen(zygote) >= sizeof sa.sun_path) {
		emit_error(name, NULL, "prepare: want zygote=<absolute socket path shorter than %zu>",
			   sizeof sa.sun_path);
		return;
	}
	struct sandbox *sb = sb_find(name);
	if (!sb) {
		emit_error(name, NULL, "no such sandbox");
		return;
	}
	if (sb->ctl < 0 || sb->init <= 0) {
		emit_error(name, NULL, "sandbox init is gone");
		return;
	}
	prep_discard(sb, "replaced by a newer prepare", false);
	strcpy(sa.sun_path, zygote);
	size_t cap = 64 + (size_t)sb->ncg * (PATH_MAX + 8), len = 0;
	char *req = xmalloc(cap);
	len += (size_t)snprintf(req + len, cap - len, "prepare%cinitpid=%d", 0, (int)sb->init);
	for (int i = 0; i < sb->ncg; i++)
		len += (size_t)snprintf(req + len, cap - len, "%ccgroup=%s", 0, sb->cg[i]);
	const char *what;
	int fd = zyg_connect(&sa, &what);
	if (fd >= 0 && zyg_send(fd, req, len, NULL, 0) < 0) {
		what = "send to zygote";
		int e = errno;
		close(fd);
		fd = -1;
		errno = e;
	}
	free(req);
	if (fd < 0) {
		emit_error(name, NULL, "%s %s: %s", what, zygote,
			   errno == EAGAIN ? "busy (try again)" : strerror(errno));
		return;
	}
	sb->prep_fd = fd;
	sb->prep_zyg = xstrdup(zygote);
	sb->prep_ready = false;
	sb->prep_pid = 0;
}

/*
 * spawn <sbx> <run> zygote=<socket> env=... cwd= uid= gid= stdin=<bytes>
 * Like `run`, but the process is a fork of the Python zygote (runtimes/python/trenv_zygote.py)
 * that joins this sandbox. Asynchronous: the replies come from the zygote connection, which
 * the event loop polls (spawn_zyg_readable).
 */
static void cmd_spawn(struct field *f, size_t nf)
{
	if (nf < 3 || !valid_name(&f[1]) || !valid_name(&f[2])) {
		emit_error(NULL, NULL, "spawn: missing or invalid sandbox/run id");
		return;
	}
	const char *name = f[1].p, *rid = f[2].p;
	struct sandbox *sb = sb_for_run(name, rid);
	if (!sb)
		return;
	const char *zygote = NULL, *cwd = "/", *uid = NULL, *gid = NULL;
	const uint8_t *in_bytes = NULL;
	size_t in_len = 0;
	for (size_t i = 3; i < nf; i++) {
		char key[16];
		const char *v;
		if (f[i].len >= 6 && memcmp(f[i].p, "stdin=", 6) == 0) {
			in_bytes = (const uint8_t *)f[i].p + 6;
			in_len = f[i].len - 6;
			continue;
		}
		if (!field_is_str(&f[i]) || !opt_split(&f[i], key, sizeof key, &v)) {
			emit_error(name, rid, "bad option field");
			return;
		}
		uint64_t u;
		if (!strcmp(key, "env"))
			continue; /* copied into the request below */
		else if (!strcmp(key, "zygote"))
			zygote = v;
		else if (!strcmp(key, "cwd"))
			cwd = v;
		else if (!strcmp(key, "uid") || !strcmp(key, "gid")) {
			if (!parse_u64(v, &u) || u >= UINT32_MAX) {
				emit_error(name, rid, "bad %s", key);
				return;
			}
			*(key[0] == 'u' ? &uid : &gid) = v;
		} else {
			emit_error(name, rid, "unknown option %s", key);
			return;
		}
	}
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (!zygote || !uid || !gid || cwd[0] != '/') {
		emit_error(name, rid, "zygote=, uid= and gid= are required; cwd must be absolute");
		return;
	}
	if (zygote[0] != '/' || strlen(zygote) >= sizeof sa.sun_path) {
		emit_error(name, rid, "zygote= must be an absolute socket path shorter than %zu",
			   sizeof sa.sun_path);
		return;
	}
	strcpy(sa.sun_path, zygote);

	/* The instance's part of the request, shared by `spawn` and `go`: uid=, gid=, cwd=,
	 * env=... (each preceded by its NUL separator). */
	size_t tcap = 64 + strlen(cwd), tlen = 0;
	for (size_t i = 3; i < nf; i++)
		if (!strncmp(f[i].p, "env=", 4) && field_is_str(&f[i]))
			tcap += f[i].len + 1;
	char *tail = xmalloc(tcap);
	tlen += (size_t)snprintf(tail + tlen, tcap - tlen, "%cuid=%s%cgid=%s", 0, uid, 0, gid);
	tail[tlen++] = 0;
	tlen += (size_t)snprintf(tail + tlen, tcap - tlen, "cwd=%s", cwd);
	for (size_t i = 3; i < nf; i++)
		if (!strncmp(f[i].p, "env=", 4) && field_is_str(&f[i])) {
			tail[tlen++] = 0;
			memcpy(tail + tlen, f[i].p, f[i].len);
			tlen += f[i].len;
		}
	char *req = NULL;

	int child[4];
	char err[1024];
	struct run *r = run_new(rid, child, err, sizeof err);
	if (!r)
		goto fail;
	int sr = -1, se = 0;
	const char *what = "socket";
	if (sb->prep_fd >= 0 && sb->prep_ready && !strcmp(sb->prep_zyg, zygote)) {
		/* A prepared waiter from this zygote: `go` t=<now> + the instance's part. */
		char head[48];
		size_t hlen = (size_t)snprintf(head, sizeof head, "go%ct=%" PRIu64, 0, mono_ns());
		req = xmalloc(hlen + tlen);
		memcpy(req, head, hlen);
		memcpy(req + hlen, tail, tlen);
		sr = zyg_send(sb->prep_fd, req, hlen + tlen, child, 4);
		if (sr >= 0) {
			r->zfd = sb->prep_fd; /* the run owns the connection now */
			sb->prep_fd = -1;
			free(sb->prep_zyg);
			sb->prep_zyg = NULL;
			sb->prep_ready = false;
		} else {
			/* The waiter is gone (or stuck): drop it and take the full path. */
			logmsg("run %s/%s: prepared waiter %ld: %s; spawning without it", name, rid,
			       sb->prep_pid, strerror(errno));
			prep_discard(sb, NULL, false);
		}
		free(req);
		req = NULL;
	}
	if (r->zfd < 0) {
		/* The full request: spawn, initpid=, cgroup=..., then the instance's part. */
		size_t cap = 64 + (size_t)sb->ncg * (PATH_MAX + 8) + tlen, len = 0;
		req = xmalloc(cap);
		len += (size_t)snprintf(req + len, cap - len, "spawn%cinitpid=%d", 0, (int)sb->init);
		for (int i = 0; i < sb->ncg; i++)
			len += (size_t)snprintf(req + len, cap - len, "%ccgroup=%s", 0, sb->cg[i]);
		memcpy(req + len, tail, tlen);
		len += tlen;
		/* Non-blocking throughout: a stuck or dead zygote must never stall the event loop. */
		r->zfd = zyg_connect(&sa, &what);
		if (r->zfd >= 0) {
			what = "send to zygote";
			sr = zyg_send(r->zfd, req, len, child, 4);
		}
	}
	se = errno;
	for (int i = 0; i < 4; i++)
		close(child[i]); /* the zygote's C1 has its own copies now */
	if (sr < 0) {
		snprintf(err, sizeof err, "%s %s: %s", what, zygote,
			 se == EAGAIN ? "busy (try again)" : strerror(se));
		goto fail;
	}
	free(req);
	run_take_stdin(r, in_bytes, in_len);
	free(tail);
	sb->run = r;
	return;
fail:
	free(req);
	free(tail);
	run_free(r);
	emit_error(name, rid, "%s", err);
}

static void cmd_kill(struct field *f, size_t nf)
{
	if (nf != 3 || !valid_name(&f[1]) || !valid_name(&f[2])) {
		emit_error(NULL, NULL, "kill: want kill <sbx> <run>");
		return;
	}
	struct sandbox *sb = sb_find(f[1].p);
	if (!sb) {
		emit_error(f[1].p, f[2].p, "no such sandbox");
		return;
	}
	/* A late kill for a run that already ended must not kill its successor. */
	if (sb->run && strcmp(sb->run->id, f[2].p) != 0) {
		logmsg("kill %s %s: not the active run (%s); ignored", f[1].p, f[2].p, sb->run->id);
		return;
	}
	/* A spawned instance joins the sandbox's pid namespace only when the zygote's C1
	 * forks it; a kill before `started` could miss it, so it is repeated at `started`. */
	if (sb->run && !sb->run->started)
		sb->run->kill_pending = true;
	if (sb->ctl >= 0 && imsg_send(sb->ctl, M_KILL, 0, NULL, 0, NULL, 0, NULL, 0) < 0)
		emit_error(f[1].p, f[2].p, "send to init: %s", strerror(errno));
}

/* The sandbox `name` if it exists and can take a command now (no active run, init alive); else
 * the error is emitted and NULL returned. */
static struct sandbox *sb_idle(const char *name)
{
	struct sandbox *sb = sb_find(name);
	if (!sb)
		emit_error(name, NULL, "no such sandbox");
	else if (sb->run)
		emit_error(name, NULL, "sandbox is busy (a run is active)");
	else if (sb->ctl < 0)
		emit_error(name, NULL, "sandbox init is gone");
	else
		return sb;
	return NULL;
}

/* Catches a wrong app dir before anything in the sandbox is torn down. */
static bool app_is_dir(const char *name, const char *app)
{
	struct stat st;
	if (stat(app, &st) < 0 || !S_ISDIR(st.st_mode)) {
		emit_error(name, NULL, "app %s: not a directory", app);
		return false;
	}
	return true;
}

/*
 * The `app` step shared by reset and swap: clone the app tree here, in the host mount namespace
 * (init can no longer see host paths), lock it read-only, and hand the detached mount to init,
 * which moves it onto /root/app. Emits the error itself and returns false on failure.
 */
static bool sb_swap_app(struct sandbox *sb, const char *name, const char *app, uint64_t *a0,
			uint64_t *a1)
{
	char err[1024];
	struct rmsg m;
	*a0 = mono_ns();
	int fd = (int)syscall(SYS_open_tree, AT_FDCWD, app,
			      OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE);
	if (fd < 0) {
		emit_error(name, NULL, "open_tree %s: %s", app, strerror(errno));
		return false;
	}
	if (set_ro_tree(fd, "", AT_EMPTY_PATH) < 0) {
		emit_error(name, NULL, "mount_setattr %s: %s", app, strerror(errno));
		close(fd);
		return false;
	}
	int sr = imsg_send(sb->ctl, M_APP, 0, NULL, 0, NULL, 0, &fd, 1);
	int se = errno;
	close(fd);
	if (sr < 0) {
		emit_error(name, NULL, "send to init: %s", strerror(se));
		return false;
	}
	if (!sb_wait_reply(sb, &m, err, sizeof err)) {
		emit_error(name, NULL, "%s", err);
		return false;
	}
	bool ok = m.h.type == M_APP_DONE;
	rmsg_free(&m);
	if (!ok) {
		emit_error(name, NULL, "unexpected reply from init");
		return false;
	}
	*a1 = mono_ns();
	return true;
}

/* swap <sbx> app=<dir>: only the app step of reset (the hot path of a repurposed start). */
static void cmd_swap(struct field *f, size_t nf)
{
	if (nf != 3 || !valid_name(&f[1])) {
		emit_error(NULL, NULL, "swap: want swap <sbx> app=<dir>");
		return;
	}
	const char *name = f[1].p, *app = NULL;
	char key[16];
	if (!field_is_str(&f[2]) || !opt_split(&f[2], key, sizeof key, &app) || strcmp(key, "app")) {
		emit_error(name, NULL, "swap: want app=<dir>");
		return;
	}
	struct sandbox *sb = sb_idle(name);
	if (!sb)
		return;
	if (!app_is_dir(name, app))
		return;
	uint64_t a0, a1;
	if (!sb_swap_app(sb, name, app, &a0, &a1))
		return;
	char spans[96];
	snprintf(spans, sizeof spans, "spans=app:%" PRIu64 ":%" PRIu64, a0, a1);
	ob_begin("swapped");
	ob_str(name);
	ob_str(spans);
	ob_send();
}

static void cmd_reset(struct field *f, size_t nf)
{
	if (nf < 2 || !valid_name(&f[1])) {
		emit_error(NULL, NULL, "reset: missing or invalid sandbox name");
		return;
	}
	const char *name = f[1].p, *app = NULL, *hostname = "";
	for (size_t i = 2; i < nf; i++) {
		char key[16];
		const char *v;
		if (!field_is_str(&f[i]) || !opt_split(&f[i], key, sizeof key, &v)) {
			emit_error(name, NULL, "bad option field");
			return;
		}
		if (!strcmp(key, "app"))
			app = v;
		else if (!strcmp(key, "hostname") && strlen(v) <= 64)
			hostname = v;
		else {
			emit_error(name, NULL, "bad option %s", key);
			return;
		}
	}
	struct sandbox *sb = sb_idle(name);
	if (!sb)
		return;
	/* Catch the common mistake before tearing the old root down. */
	if (app && !app_is_dir(name, app))
		return;
	/* A prepared waiter is chrooted into the root we are about to replace. */
	prep_discard(sb, "discarded by reset", true);
	char err[1024];
	struct rmsg m;
	if (imsg_send(sb->ctl, M_RESET, 0, NULL, 0, hostname, strlen(hostname), NULL, 0) < 0) {
		emit_error(name, NULL, "send to init: %s", strerror(errno));
		return;
	}
	if (!sb_wait_reply(sb, &m, err, sizeof err)) {
		emit_error(name, NULL, "%s", err);
		return;
	}
	uint64_t ts[4];
	memcpy(ts, m.h.ts, sizeof ts);
	bool ok = m.h.type == M_RESET_DONE;
	rmsg_free(&m);
	if (!ok) {
		emit_error(name, NULL, "unexpected reply from init");
		return;
	}
	char spans[256];
	int n = snprintf(spans, sizeof spans,
			 "spans=kill:%" PRIu64 ":%" PRIu64 ",rw:%" PRIu64 ":%" PRIu64, ts[0], ts[1],
			 ts[2], ts[3]);
	if (app) {
		uint64_t a0, a1;
		if (!sb_swap_app(sb, name, app, &a0, &a1))
			return;
		snprintf(spans + n, sizeof spans - (size_t)n, ",app:%" PRIu64 ":%" PRIu64, a0, a1);
	}
	ob_begin("reset-done");
	ob_str(name);
	ob_str(spans);
	ob_send();
}

static void cmd_destroy(struct field *f, size_t nf)
{
	if (nf != 2 || !valid_name(&f[1])) {
		emit_error(NULL, NULL, "destroy: want destroy <sbx>");
		return;
	}
	struct sandbox *sb = sb_find(f[1].p);
	if (!sb) {
		emit_error(f[1].p, NULL, "no such sandbox");
		return;
	}
	prep_discard(sb, "the sandbox was destroyed", true);
	xclose(&sb->ctl);
	int st = sb_kill_init(sb);
	sb_stop_slirp(sb, true);
	struct run *r = sb->run;
	if (r) {
		/* Every writer died with the namespace, so the pipes hold only what is left to
		 * read: drain them (bounded) and finish the run before `destroyed`. */
		if (!r->exited) {
			r->exited = true;
			r->status = st;
		}
		xclose(&r->fd[FD_IN]);
		for (int k = FD_OUT; k <= FD_CHAN; k++) {
			while (sb->run && r->started && r->fd[k] >= 0) {
				struct pollfd pf = {.fd = r->fd[k], .events = POLLIN};
				if (poll(&pf, 1, 1000) <= 0) {
					xclose(&r->fd[k]);
					break;
				}
				run_read(sb, k);
			}
		}
		run_maybe_finish(sb);
	}
	ob_begin("destroyed");
	ob_str(f[1].p);
	ob_send();
	sb_remove(sb);
}

static void handle_frame(uint8_t *frame, size_t len)
{
	/* Work on a copy with a NUL after it, so every field is a C string. */
	char *body = xmalloc(len + 1);
	memcpy(body, frame, len);
	body[len] = 0;
	const char *cmd = body; /* the first field; NUL-terminated by the split */
	size_t cmdlen = strnlen(body, len);
	struct field *f = NULL;
	size_t nf;
	if (cmdlen == 4 && !memcmp(cmd, "ping", 4)) {
		nf = split_fields(body, len, 2, NULL, 0, &f);
		ob_begin("pong");
		if (nf > 1)
			ob_field(f[1].p, f[1].len);
		else
			ob_field("", 0);
		ob_send();
	} else if (cmdlen == 6 && !memcmp(cmd, "create", 6)) {
		nf = split_fields(body, len, 0, NULL, 0, &f);
		cmd_create(f, nf);
	} else if (cmdlen == 3 && !memcmp(cmd, "run", 3)) {
		nf = split_fields(body, len, 0, "stdin=", 3, &f);
		cmd_run(f, nf);
	} else if (cmdlen == 5 && !memcmp(cmd, "spawn", 5)) {
		nf = split_fields(body, len, 0, "stdin=", 3, &f);
		cmd_spawn(f, nf);
	} else if (cmdlen == 7 && !memcmp(cmd, "prepare", 7)) {
		nf = split_fields(body, len, 0, NULL, 0, &f);
		cmd_prepare(f, nf);
	} else if (cmdlen == 4 && !memcmp(cmd, "kill", 4)) {
		nf = split_fields(body, len, 3, NULL, 0, &f);
		cmd_kill(f, nf);
	} else if (cmdlen == 5 && !memcmp(cmd, "reset", 5)) {
		nf = split_fields(body, len, 0, NULL, 0, &f);
		cmd_reset(f, nf);
	} else if (cmdlen == 4 && !memcmp(cmd, "swap", 4)) {
		nf = split_fields(body, len, 0, NULL, 0, &f);
		cmd_swap(f, nf);
	} else if (cmdlen == 7 && !memcmp(cmd, "destroy", 7)) {
		nf = split_fields(body, len, 2, NULL, 0, &f);
		cmd_destroy(f, nf);
	} else {
		char shown[64];
		size_t n = cmdlen < 40 ? cmdlen : 40;
		for (size_t i = 0; i < n; i++)
			shown[i] = (cmd[i] >= 0x20 && cmd[i] < 0x7f) ? cmd[i] : '?';
		shown[n] = 0;
		emit_error(NULL, NULL, "unknown command '%s'", shown);
	}
	free(f);
	free(body);
}

/* ======================================================================================
 * Event loop and main
 * ====================================================================================== */

static struct {
	uint8_t *b;
	size_t len, cap;
} ib;

/* Kill every sandbox (init first: the kernel tears the pid namespace down), then reap. */
static void cleanup_all(void)
{
	for (size_t i = 0; i < nsbs; i++)
		if (sbs[i]->prep_fd >= 0)
			shutdown(sbs[i]->prep_fd, SHUT_WR); /* every waiter starts exiting now */
	for (size_t i = 0; i < nsbs; i++)
		prep_discard(sbs[i], NULL, true);
	for (size_t i = 0; i < nsbs; i++) {
		if (sbs[i]->init > 0)
			kill(sbs[i]->init, SIGKILL);
		xclose(&sbs[i]->slirp_exit);
		if (sbs[i]->slirp > 0)
			kill(sbs[i]->slirp, SIGKILL);
	}
	for (size_t i = 0; i < nsbs; i++) {
		sb_kill_init(sbs[i]);
		sb_stop_slirp(sbs[i], true);
	}
}

/* Parse every complete frame in the input buffer. */
static void process_input(void)
{
	size_t off = 0;
	while (ib.len - off >= 4) {
		const uint8_t *h = ib.b + off;
		uint32_t n = (uint32_t)h[0] | (uint32_t)h[1] << 8 | (uint32_t)h[2] << 16 |
			     (uint32_t)h[3] << 24;
		if (n > MAX_FRAME) {
			/* We cannot find the next frame boundary without trusting this length. */
			logmsg("frame length %" PRIu32 " exceeds 16 MiB; input stream cannot be "
			       "resynchronized, killing all sandboxes and exiting with status 2",
			       n);
			emit_error(NULL, NULL, "frame length %" PRIu32 " exceeds 16 MiB; exiting", n);
			cleanup_all();
			exit(2);
		}
		if (ib.len - off - 4 < n)
			break;
		handle_frame(ib.b + off + 4, n);
		off += 4 + (size_t)n;
	}
	if (off) {
		memmove(ib.b, ib.b + off, ib.len - off);
		ib.len -= off;
	}
}

/* Returns false on EOF. */
static bool read_stdin(void)
{
	if (ib.cap - ib.len < CHUNK) {
		ib.cap = ib.cap ? ib.cap * 2 : 4 * CHUNK;
		ib.b = xrealloc(ib.b, ib.cap);
	}
	ssize_t n = read(0, ib.b + ib.len, ib.cap - ib.len);
	if (n < 0)
		return errno == EINTR || errno == EAGAIN;
	if (n == 0)
		return false;
	ib.len += (size_t)n;
	process_input();
	return true;
}

/* SIGCHLD: reap everything. Our children are inits, slirp4netns, and (as subreaper) anything
 * orphaned below them. */
static void reap_children(void)
{
	for (;;) {
		int st;
		pid_t p = waitpid(-1, &st, WNOHANG);
		if (p <= 0)
			break;
		struct sandbox *sb = sb_find_init(p);
		if (sb) {
			sb->init = 0;
			xclose(&sb->ctl);
			sb_stop_slirp(sb, false);
			logmsg("sandbox %s: init %d died unexpectedly", sb->name, (int)p);
			sb->died = true;
			sb->died_status = st;
			if (sb->run) {
				if (!sb->run->exited) {
					sb->run->exited = true;
					sb->run->status = st;
				}
				run_maybe_finish(sb); /* emits exit then died once drained */
			} else {
				char s[64];
				fmt_status(s, sizeof s, st);
				ob_begin("died");
				ob_str(sb->name);
				ob_str(s);
				ob_send();
				sb_remove(sb);
			}
			continue;
		}
		for (size_t i = 0; i < nsbs; i++)
			if (sbs[i]->slirp == p) {
				logmsg("sandbox %s: slirp4netns exited", sbs[i]->name);
				sbs[i]->slirp = 0;
			}
	}
}

enum { PK_CTL, PK_PIPE, PK_ZYG, PK_PREP };
struct pref {
	struct sandbox *sb;
	struct run *run;
	int kind, k, fd;
};

int main(void)
{
	host_pid = getpid();
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	signal(SIGPIPE, SIG_IGN);
	sigset_t ss;
	sigemptyset(&ss);
	sigaddset(&ss, SIGCHLD);
	sigprocmask(SIG_BLOCK, &ss, NULL);
	int sigfd = signalfd(-1, &ss, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sigfd < 0) {
		logmsg("signalfd: %s", strerror(errno));
		return 1;
	}
	set_nonblock(0);
	bool stdin_open = true;

	struct pollfd *pfd = NULL;
	struct pref *pr = NULL;
	size_t pcap = 0;
	while (stdin_open) {
		size_t need = 2 + nsbs * 7, n = 0;
		if (need > pcap) {
			pcap = need * 2;
			pfd = xrealloc(pfd, pcap * sizeof *pfd);
			pr = xrealloc(pr, pcap * sizeof *pr);
		}
		for (size_t i = 0; i < nsbs; i++) {
			struct sandbox *sb = sbs[i];
			if (sb->ctl >= 0) {
				pfd[n] = (struct pollfd){.fd = sb->ctl, .events = POLLIN};
				pr[n++] = (struct pref){sb, NULL, PK_CTL, 0, sb->ctl};
			}
			if (sb->prep_fd >= 0) {
				pfd[n] = (struct pollfd){.fd = sb->prep_fd, .events = POLLIN};
				pr[n++] = (struct pref){sb, NULL, PK_PREP, 0, sb->prep_fd};
			}
			struct run *r = sb->run;
			if (r && r->zfd >= 0) {
				pfd[n] = (struct pollfd){.fd = r->zfd, .events = POLLIN};
				pr[n++] = (struct pref){sb, r, PK_ZYG, 0, r->zfd};
			}
			for (int k = 0; r && k < 4; k++) {
				/* Output only after `started` (a spawned instance may write before
				 * its C1's `started` message is read). */
				if (r->fd[k] < 0 || (k != FD_IN && !r->started))
					continue;
				pfd[n] = (struct pollfd){.fd = r->fd[k],
							 .events = k == FD_IN ? POLLOUT : POLLIN};
				pr[n++] = (struct pref){sb, r, PK_PIPE, k, r->fd[k]};
			}
		}
		size_t isig = n;
		pfd[n++] = (struct pollfd){.fd = sigfd, .events = POLLIN};
		size_t iin = n;
		pfd[n++] = (struct pollfd){.fd = 0, .events = POLLIN};

		if (poll(pfd, n, -1) < 0) {
			if (errno == EINTR)
				continue;
			logmsg("poll: %s", strerror(errno));
			break;
		}
		/* Order matters: pipes and init messages first (so a run's real exit status
		 * arrives before we notice its init died), then SIGCHLD, then new commands. */
		for (size_t i = 0; i < isig; i++) {
			if (!pfd[i].revents)
				continue;
			struct pref *p = &pr[i];
			if (p->sb->gone)
				continue;
			if (p->kind == PK_CTL) {
				if (p->sb->ctl == p->fd)
					sb_ctl_readable(p->sb);
				continue;
			}
			if (p->kind == PK_PREP) {
				if (p->sb->prep_fd == p->fd)
					prep_readable(p->sb);
				continue;
			}
			/* The run may have finished (and been freed) earlier in this pass. */
			if (p->kind == PK_ZYG) {
				if (p->sb->run == p->run && p->run->zfd == p->fd)
					spawn_zyg_readable(p->sb);
				continue;
			}
			if (p->sb->run != p->run || p->run->fd[p->k] != p->fd)
				continue;
			if (p->k == FD_IN) {
				if (pfd[i].revents & (POLLERR | POLLHUP)) {
					xclose(&p->run->fd[FD_IN]);
					free(p->run->inbuf);
					p->run->inbuf = NULL;
				} else {
					run_write_stdin(p->run);
				}
			} else {
				run_read(p->sb, p->k);
			}
		}
		if (pfd[isig].revents) {
			struct signalfd_siginfo si;
			while (read(sigfd, &si, sizeof si) > 0)
				;
			reap_children();
		}
		if (pfd[iin].revents)
			stdin_open = read_stdin();
		graveyard_sweep();
	}
	if (ib.len)
		logmsg("stdin closed with %zu bytes of an incomplete frame", ib.len);
	cleanup_all();
	free(pfd);
	free(pr);
	return 0;
}
