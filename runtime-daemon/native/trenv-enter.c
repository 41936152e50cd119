/*
 * trenv-enter: small root helper of trenvd for two things Node cannot do itself.
 *
 *   trenv-enter shell <init-pid> <uid> <gid> <cgroup.procs>... -- <argv...>
 *       Joins the sandbox whose init (PID 1) has host pid <init-pid>: its cgroups, mount, UTS,
 *       IPC, network and PID namespaces and its root (/root inside the sandbox's mount
 *       namespace, see PROTOCOL.md), drops to <uid>:<gid> with no capabilities and
 *       no_new_privs, and runs argv (e.g. /bin/sh -l) there. trenvd runs this under node-pty,
 *       so the shell's terminal is the pty. Exits with the child's status.
 *
 *   trenv-enter relay <init-pid> <port>
 *       Bridges a TCP port on the sandbox's own loopback (e.g. debugpy or the Node inspector
 *       inside a sandbox without network) to a new port on the host's 127.0.0.1. The listening
 *       socket is made before joining the sandbox's network namespace and every outgoing one
 *       after it: one process, two namespaces. Prints "port <host-port>" and serves until its
 *       stdin is closed (trenvd holds it).
 *
 *   trenv-enter expose <init-pid> <port> <unix-socket>
 *       The other way round: listens on 127.0.0.1:<port> INSIDE the sandbox's network namespace
 *       and connects every client to a unix socket on the host (e.g. the sandbox's own CDP
 *       endpoint of the shared browser), so the sandbox reaches one host service without any
 *       network. The listening socket is made after joining the namespace, the outgoing ones
 *       after returning to the host's. Prints "ready" and serves until its stdin is closed.
 *
 *   trenv-enter ksm -- <argv...>
 *       Marks this process's memory as mergeable by KSM (prctl PR_SET_MEMORY_MERGE, Linux 6.4+:
 *       inherited by children and kept across execve since 6.7) and execs argv. trenvd puts it in
 *       front of a CRIU restore, so every page the restored process gets is a candidate for ksmd.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "trenv-enter: %s: %s\n", what, strerror(errno));
	exit(125);
}

static int open_ns(long pid, const char *ns)
{
	char p[64];
	snprintf(p, sizeof p, "/proc/%ld/ns/%s", pid, ns);
	int fd = open(p, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		die(p);
	return fd;
}

static long parse_long(const char *s, const char *what)
{
	char *end;
	errno = 0;
	long v = strtol(s, &end, 10);
	if (errno || *end || v < 0) {
		fprintf(stderr, "trenv-enter: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

static int cmd_shell(int argc, char **argv)
{
	if (argc < 6)
		return fprintf(stderr, "usage: trenv-enter shell <init-pid> <uid> <gid> <cgroup.procs>... -- <argv...>\n"), 2;
	long pid = parse_long(argv[2], "pid");
	long uid = parse_long(argv[3], "uid"), gid = parse_long(argv[4], "gid");
	if (uid == 0)
		return fprintf(stderr, "trenv-enter: refusing to run as root inside a sandbox\n"), 2;
	int i = 5;
	for (; i < argc && strcmp(argv[i], "--"); i++) {
		int fd = open(argv[i], O_WRONLY | O_CLOEXEC);
		if (fd < 0 || dprintf(fd, "%d\n", getpid()) < 0)
			die(argv[i]);
		close(fd);
	}
	if (i + 1 >= argc)
		return fprintf(stderr, "trenv-enter: missing -- <argv>\n"), 2;
	char **cmd = &argv[i + 1];
	/* open every namespace first: after the mount namespace changes /proc is the sandbox's */
	int nsfd[5] = {open_ns(pid, "uts"), open_ns(pid, "ipc"), open_ns(pid, "net"), open_ns(pid, "pid"),
		       open_ns(pid, "mnt")};
	for (int k = 0; k < 5; k++)
		if (setns(nsfd[k], 0) < 0)
			die("setns");
	if (chroot("/root") < 0 || chdir("/") < 0)
		die("chroot");
	pid_t child = fork(); /* the child is in the sandbox's pid namespace */
	if (child < 0)
		die("fork");
	if (child == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (setgroups(0, NULL) < 0 || setgid((gid_t)gid) < 0 || setuid((uid_t)uid) < 0)
			die("drop privileges");
		prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
		if (chdir("/app") < 0 && chdir("/") < 0)
			die("chdir");
		execve(cmd[0], cmd, environ);
		die(cmd[0]);
	}
	/* pass terminal signals on; the pty's hangup ends the shell */
	int st;
	while (waitpid(child, &st, 0) < 0)
		if (errno != EINTR)
			die("waitpid");
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* ---- relay: pairs of (host connection, sandbox connection) copied both ways */

#define MAXC 32
struct pair {
	int a, b;
};

static int connect_inside(int port)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		return -1;
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
		close(s);
		return -1;
	}
	return s;
}

static int pump(int from, int to)
{
	char buf[65536];
	ssize_t n = read(from, buf, sizeof buf);
	if (n <= 0)
		return -1;
	for (ssize_t off = 0; off < n;) {
		ssize_t w = write(to, buf + off, (size_t)(n - off));
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		off += w;
	}
	return 0;
}

static int connect_unix(const char *path)
{
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (s < 0 || strlen(path) >= sizeof sa.sun_path)
		return -1;
	strcpy(sa.sun_path, path);
	if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) {
		close(s);
		return -1;
	}
	return s;
}

/* Accepts on `ls` and pairs every client with a new connection from `dial` (port or path), copying
 * both ways, until stdin closes. */
static int serve(int ls, int port, const char *path)
{
	struct pair pairs[MAXC];
	int np = 0;
	for (;;) {
		struct pollfd pf[2 + 2 * MAXC];
		int n = 0;
		pf[n++] = (struct pollfd){.fd = 0, .events = POLLIN};
		pf[n++] = (struct pollfd){.fd = ls, .events = POLLIN};
		for (int k = 0; k < np; k++) {
			pf[n++] = (struct pollfd){.fd = pairs[k].a, .events = POLLIN};
			pf[n++] = (struct pollfd){.fd = pairs[k].b, .events = POLLIN};
		}
		if (poll(pf, (nfds_t)n, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (pf[0].revents) /* trenvd closed our stdin: done */
			return 0;
		for (int k = np - 1; k >= 0; k--) {
			struct pollfd *pa = &pf[2 + 2 * k], *pb = &pf[3 + 2 * k];
			int bad = 0;
			if (pa->revents && pump(pairs[k].a, pairs[k].b) < 0)
				bad = 1;
			if (!bad && pb->revents && pump(pairs[k].b, pairs[k].a) < 0)
				bad = 1;
			if (bad) {
				close(pairs[k].a);
				close(pairs[k].b);
				pairs[k] = pairs[--np];
			}
		}
		if (pf[1].revents & POLLIN) {
			int c = accept4(ls, NULL, NULL, SOCK_CLOEXEC);
			if (c < 0)
				continue;
			int in = np < MAXC ? (path ? connect_unix(path) : connect_inside(port)) : -1;
			if (in < 0) {
				close(c); /* nothing listens on the other side (yet): the client retries */
				continue;
			}
			pairs[np++] = (struct pair){c, in};
		}
	}
}

static int listen_loopback(int port, struct sockaddr_in *sa)
{
	int ls = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	*sa = (struct sockaddr_in){.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof *sa;
	int one = 1;
	if (ls >= 0)
		setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (ls < 0 || bind(ls, (struct sockaddr *)sa, sizeof *sa) < 0 || listen(ls, 16) < 0 ||
	    getsockname(ls, (struct sockaddr *)sa, &sl) < 0)
		die("listen on 127.0.0.1");
	return ls;
}

static int cmd_relay(int argc, char **argv)
{
	if (argc != 4)
		return fprintf(stderr, "usage: trenv-enter relay <init-pid> <port>\n"), 2;
	long pid = parse_long(argv[2], "pid");
	long port = parse_long(argv[3], "port");
	signal(SIGPIPE, SIG_IGN);
	struct sockaddr_in sa;
	int ls = listen_loopback(0, &sa);
	int net = open_ns(pid, "net");
	if (setns(net, CLONE_NEWNET) < 0)
		die("setns net");
	printf("port %d\n", ntohs(sa.sin_port));
	fflush(stdout);
	return serve(ls, (int)port, NULL);
}

static int cmd_expose(int argc, char **argv)
{
	if (argc != 5)
		return fprintf(stderr, "usage: trenv-enter expose <init-pid> <port> <unix-socket>\n"), 2;
	long pid = parse_long(argv[2], "pid");
	long port = parse_long(argv[3], "port");
	signal(SIGPIPE, SIG_IGN);
	int host = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
	int net = open_ns(pid, "net");
	if (host < 0 || setns(net, CLONE_NEWNET) < 0)
		die("setns net");
	struct sockaddr_in sa;
	int ls = listen_loopback((int)port, &sa);
	if (setns(host, CLONE_NEWNET) < 0)
		die("setns back to the host");
	printf("ready\n");
	fflush(stdout);
	return serve(ls, 0, argv[4]);
}

#ifndef PR_SET_MEMORY_MERGE
#define PR_SET_MEMORY_MERGE 67
#endif

static int cmd_ksm(int argc, char **argv)
{
	if (argc < 4 || strcmp(argv[2], "--"))
		return fprintf(stderr, "usage: trenv-enter ksm -- <argv...>\n"), 2;
	if (prctl(PR_SET_MEMORY_MERGE, 1, 0, 0, 0) < 0)
		die("prctl(PR_SET_MEMORY_MERGE) (KSM needs Linux 6.4+)");
	execvp(argv[3], argv + 3);
	die("exec");
	return 127;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "shell"))
		return cmd_shell(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "relay"))
		return cmd_relay(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "expose"))
		return cmd_expose(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "ksm"))
		return cmd_ksm(argc, argv);
	fprintf(stderr, "usage: trenv-enter shell|relay|expose|ksm ...\n");
	return 2;
}
