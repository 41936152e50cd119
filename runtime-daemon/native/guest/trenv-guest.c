// trenv-guest: the guest agent of a trenv microVM.
//
// Runs as PID 1 of the guest (exec'd by the initramfs /init after switch_root) and speaks JSON
// lines with the daemon over a virtio-serial port (/dev/vport*p*, named org.trenv.0): vsock is not
// available on this machine. One request per line, each answered by an `ack` with its id; the
// handler's output and its exit arrive as asynchronous messages. See PROTOCOL.md next to this file.
//
// A second port (org.trenv.cdp) carries the shared browser: trenv-guest listens on the guest's
// 127.0.0.1:9222 and relays each TCP connection over that port as binary frames (see PROTOCOL.md);
// the daemon joins each one to the sandbox's own filtering CDP endpoint. The guest has no network
// device: loopback is all it gets.
//
// A third port (org.trenv.exec) carries the processes of E2B sandboxes: the host starts commands
// (pipes or a pty, as the sandbox user, in their own session) and exchanges their stdin, output,
// signals, terminal size and exit as binary frames with a process id (see PROTOCOL.md).
//
// JSON is parsed and written with cJSON (Debian's libcjson). Byte streams travel base64-encoded so
// a chunk that splits a UTF-8 sequence or carries binary output is passed on exactly.
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <glob.h>
#include <grp.h>
#include <net/if.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <linux/random.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PORT_NAME "org.trenv.0"
#define CDP_PORT_NAME "org.trenv.cdp"
#define CDP_TCP_PORT 9222
#define MAX_LINE (32 * 1024 * 1024)
#define MAX_CONNS 32
#define FRAME_HDR 9                   // type (1) + connection id (4, BE) + payload length (4, BE)
#define MAX_FRAME (1024 * 1024)
enum { F_OPEN = 1, F_DATA = 2, F_CLOSE = 3 };

static int port_fd = -1;
static pid_t child = 0;            // the running runtime shim (its own process group)
static int child_in = -1;          // its stdin
static int child_fd[3] = {-1, -1, -1}; // its stdout, stderr, chan (fd 3)
static const char *fd_names[3] = {"out", "err", "chan"};
static int exit_pending = 0;       // child exited; report once its pipes are drained
static int exit_status = 0;
static unsigned long oom_at_start = 0;

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void console(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "trenv-guest: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
}

// ---- output to the host

// Writes all of p to a non-blocking fd, waiting while it is full: for ever when stall_ms < 0 (the
// host channel), else at most stall_ms per wait (a guest client that stopped reading). -1 on failure.
static int write_wait(int fd, const void *buf, size_t n, int stall_ms) {
  const char *p = buf;
  while (n) {
    ssize_t w = write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        if (poll(&pf, 1, stall_ms < 0 ? 100 : stall_ms) <= 0 && stall_ms >= 0) return -1;
        continue;
      }
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static void write_all(int fd, const char *p, size_t n) {
  if (write_wait(fd, p, n, -1) < 0) console("write to the host failed: %s", strerror(errno));
}

static void send_json(cJSON *o) {
  char num[32];
  snprintf(num, sizeof num, "%llu", (unsigned long long)mono_ns());
  cJSON_AddStringToObject(o, "mono_ns", num);
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (!s) return;
  size_t n = strlen(s);
  s[n] = '\n'; // cJSON allocates n+1 bytes: the NUL becomes the line end
  write_all(port_fd, s, n + 1);
  free(s);
}

static void ack(double id, const char *err, cJSON *extra) {
  cJSON *o = extra ? extra : cJSON_CreateObject();
  cJSON_AddStringToObject(o, "t", "ack");
  cJSON_AddNumberToObject(o, "id", id);
  cJSON_AddBoolToObject(o, "ok", err == NULL);
  if (err) cJSON_AddStringToObject(o, "error", err);
  send_json(o);
}

// ---- base64 (RFC 4648, with padding)

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const unsigned char *in, size_t n) {
  char *out = malloc(4 * ((n + 2) / 3) + 1), *o = out;
  if (!out) return NULL;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
    *o++ = b64chars[v >> 18 & 63];
    *o++ = b64chars[v >> 12 & 63];
    *o++ = i + 1 < n ? b64chars[v >> 6 & 63] : '=';
    *o++ = i + 2 < n ? b64chars[v & 63] : '=';
  }
  *o = 0;
  return out;
}

// Decodes into a new buffer; returns NULL on a character outside the alphabet.
static unsigned char *b64_decode(const char *in, size_t *outlen) {
  size_t n = strlen(in);
  unsigned char *out = malloc(n / 4 * 3 + 3), *o = out;
  if (!out) return NULL;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    const char *p = strchr(b64chars, in[i]);
    if (in[i] == '=') break;
    if (!p || !in[i]) {
      free(out);
      return NULL;
    }
    acc = acc << 6 | (uint32_t)(p - b64chars);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      *o++ = (unsigned char)(acc >> bits & 0xff);
    }
  }
  *outlen = (size_t)(o - out);
  return out;
}

// ---- helpers

static int mkdirs(const char *path, mode_t mode) {
  char tmp[4096];
  snprintf(tmp, sizeof tmp, "%s", path);
  for (char *p = tmp + 1; *p; p++) {
    if (*p != '/') continue;
    *p = 0;
    if (mkdir(tmp, mode) && errno != EEXIST) return -1;
    *p = '/';
  }
  return mkdir(tmp, mode) && errno != EEXIST ? -1 : 0;
}

static unsigned long vmstat(const char *key) {
  FILE *f = fopen("/proc/vmstat", "r");
  char k[64];
  unsigned long v, r = 0;
  if (!f) return 0;
  while (fscanf(f, "%63s %lu", k, &v) == 2)
    if (!strcmp(k, key)) r = v;
  fclose(f);
  return r;
}

// ---- requests

// {"op":"files","dir":"/app","files":[{"path":"a.py","mode":420,"b64":"..."}]}
static const char *op_files(cJSON *req) {
  const char *dir = cJSON_GetStringValue(cJSON_GetObjectItem(req, "dir"));
  cJSON *files = cJSON_GetObjectItem(req, "files"), *f;
  static char err[512];
  if (!dir || dir[0] != '/' || !cJSON_IsArray(files)) return "files needs an absolute dir and a files array";
  if (mkdirs(dir, 0755)) return "cannot create the target dir";
  cJSON_ArrayForEach(f, files) {
    const char *rel = cJSON_GetStringValue(cJSON_GetObjectItem(f, "path"));
    const char *data = cJSON_GetStringValue(cJSON_GetObjectItem(f, "b64"));
    cJSON *mode = cJSON_GetObjectItem(f, "mode");
    if (!rel || !data || rel[0] == '/' || strstr(rel, "..")) return "a file needs a relative path (no ..) and b64 data";
    char full[4096];
    snprintf(full, sizeof full, "%s/%s", dir, rel);
    char *slash = strrchr(full, '/');
    *slash = 0;
    if (mkdirs(full, 0755)) return "cannot create a folder of the agent";
    *slash = '/';
    size_t n;
    unsigned char *bytes = b64_decode(data, &n);
    if (!bytes) return "bad base64 in a file";
    int fd = open(full, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, cJSON_IsNumber(mode) ? (mode_t)mode->valueint & 0777 : 0644);
    if (fd < 0) {
      free(bytes);
      snprintf(err, sizeof err, "open %.300s: %s", full, strerror(errno));
      return err;
    }
    write_all(fd, (char *)bytes, n);
    close(fd);
    free(bytes);
  }
  return NULL;
}

static char **str_array(cJSON *arr) {
  int n = cJSON_GetArraySize(arr), i = 0;
  char **v = calloc((size_t)n + 1, sizeof *v);
  cJSON *it;
  cJSON_ArrayForEach(it, arr) {
    if (!cJSON_IsString(it)) {
      free(v);
      return NULL;
    }
    v[i++] = it->valuestring;
  }
  return v;
}

// {"op":"start","argv":[...],"env":["K=V"...],"cwd":"/app","uid":1000,"gid":1000}
static const char *op_start(cJSON *req) {
  if (child) return "a runtime is already running in this VM";
  cJSON *ja = cJSON_GetObjectItem(req, "argv"), *je = cJSON_GetObjectItem(req, "env");
  const char *cwd = cJSON_GetStringValue(cJSON_GetObjectItem(req, "cwd"));
  cJSON *juid = cJSON_GetObjectItem(req, "uid"), *jgid = cJSON_GetObjectItem(req, "gid");
  if (!cJSON_IsArray(ja) || cJSON_GetArraySize(ja) < 1 || !cJSON_IsArray(je)) return "start needs argv and env arrays";
  char **argv = str_array(ja), **envp = str_array(je);
  if (!argv || !envp) {
    free(argv);
    free(envp);
    return "argv and env must be strings";
  }
  int in[2], out[3][2];
  if (pipe2(in, O_CLOEXEC)) return "pipe failed";
  for (int i = 0; i < 3; i++)
    if (pipe2(out[i], O_CLOEXEC)) return "pipe failed";
  oom_at_start = vmstat("oom_kill");
  pid_t pid = fork();
  if (pid < 0) return "fork failed";
  if (pid == 0) {
    setpgid(0, 0);
    dup2(in[0], 0);
    dup2(out[0][1], 1);
    dup2(out[1][1], 2);
    dup2(out[2][1], 3);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (cwd && chdir(cwd)) _exit(126);
    if (cJSON_IsNumber(jgid)) {
      gid_t g = (gid_t)jgid->valueint;
      if (setgroups(1, &g) || setresgid(g, g, g)) _exit(126);
    }
    if (cJSON_IsNumber(juid) && setresuid((uid_t)juid->valueint, (uid_t)juid->valueint, (uid_t)juid->valueint)) _exit(126);
    execve(argv[0], argv, envp);
    dprintf(3, "{\"t\":\"error\",\"phase\":\"load\",\"error\":{\"type\":\"ExecError\",\"message\":\"exec %s failed: %s\"}}\n", argv[0], strerror(errno));
    _exit(127);
  }
  free(argv);
  free(envp);
  close(in[0]);
  child_in = in[1];
  for (int i = 0; i < 3; i++) {
    close(out[i][1]);
    child_fd[i] = out[i][0];
    fcntl(child_fd[i], F_SETFL, O_NONBLOCK);
  }
  child = pid;
  exit_pending = 0;
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "t", "started");
  cJSON_AddNumberToObject(o, "pid", pid);
  send_json(o);
  return NULL;
}

// {"op":"stdin","b64":"...","close":true}
static const char *op_stdin(cJSON *req) {
  const char *data = cJSON_GetStringValue(cJSON_GetObjectItem(req, "b64"));
  if (child_in < 0) return "no runtime is waiting for input";
  if (data) {
    size_t n;
    unsigned char *bytes = b64_decode(data, &n);
    if (!bytes) return "bad base64";
    write_all(child_in, (char *)bytes, n);
    free(bytes);
  }
  if (cJSON_IsTrue(cJSON_GetObjectItem(req, "close"))) {
    close(child_in);
    child_in = -1;
  }
  return NULL;
}

// {"op":"clock","epoch_ns":"1700000000000000000"}: the template froze the wall clock
static const char *op_clock(cJSON *req) {
  const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(req, "epoch_ns"));
  if (!s) return "clock needs epoch_ns as a decimal string";
  unsigned long long ns = strtoull(s, NULL, 10);
  struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000ull), .tv_nsec = (long)(ns % 1000000000ull)};
  if (clock_settime(CLOCK_REALTIME, &ts)) return "clock_settime failed";
  return NULL;
}

// {"op":"seed","hex":"..."}: credit fresh host entropy and force the kernel CRNG to reseed, so
// clones of one template stop sharing the state the snapshot froze.
static const char *op_seed(cJSON *req) {
  const char *hex = cJSON_GetStringValue(cJSON_GetObjectItem(req, "hex"));
  size_t n = hex ? strlen(hex) / 2 : 0;
  if (n < 16 || n > 512) return "seed needs 16..512 bytes as hex";
  struct {
    struct rand_pool_info info;
    unsigned char buf[512];
  } p;
  for (size_t i = 0; i < n; i++) {
    unsigned v;
    if (sscanf(hex + 2 * i, "%2x", &v) != 1) return "seed: bad hex";
    p.buf[i] = (unsigned char)v;
  }
  p.info.entropy_count = (int)(n * 8);
  p.info.buf_size = (int)n;
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return "open /dev/urandom failed";
  int r = ioctl(fd, RNDADDENTROPY, &p.info);
  if (r == 0) r = ioctl(fd, RNDRESEEDCRNG);
  close(fd);
  return r ? "RNDADDENTROPY/RNDRESEEDCRNG failed" : NULL;
}

// {"op":"mem"}: the guest's view of its memory (kB from /proc/meminfo) and the runtime's RSS
static cJSON *mem_report(void) {
  cJSON *o = cJSON_CreateObject();
  FILE *f = fopen("/proc/meminfo", "r");
  char line[256], key[64];
  unsigned long v;
  static const char *keys[] = {"MemTotal", "MemFree", "MemAvailable", "Cached", "Shmem", "AnonPages", "Buffers", NULL};
  while (f && fgets(line, sizeof line, f)) {
    if (sscanf(line, "%63[^:]: %lu", key, &v) != 2) continue;
    for (int i = 0; keys[i]; i++)
      if (!strcmp(key, keys[i])) cJSON_AddNumberToObject(o, keys[i], (double)v);
  }
  if (f) fclose(f);
  if (child) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", child);
    f = fopen(path, "r");
    while (f && fgets(line, sizeof line, f))
      if (sscanf(line, "VmRSS: %lu", &v) == 1) cJSON_AddNumberToObject(o, "RuntimeRss", (double)v);
    if (f) fclose(f);
  }
  return o;
}

static int x_reaped(pid_t pid, int status);

static void reap(void) {
  int st;
  pid_t p;
  while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
    if (x_reaped(p, st)) continue;
    if (p == child) {
      exit_pending = 1;
      exit_status = st;
      kill(-child, SIGKILL); // whatever the handler left behind in its group
    }
  }
}

static void report_exit(void) {
  char status[64];
  if (WIFEXITED(exit_status)) snprintf(status, sizeof status, "exited:%d", WEXITSTATUS(exit_status));
  else snprintf(status, sizeof status, "signaled:%d", WTERMSIG(exit_status));
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "t", "exit");
  cJSON_AddStringToObject(o, "status", status);
  cJSON_AddBoolToObject(o, "oom", vmstat("oom_kill") > oom_at_start);
  send_json(o);
  if (child_in >= 0) close(child_in);
  child_in = -1;
  child = 0;
  exit_pending = 0;
}

static void handle(char *line) {
  cJSON *req = cJSON_Parse(line);
  if (!req) {
    ack(-1, "not JSON", NULL);
    return;
  }
  cJSON *jid = cJSON_GetObjectItem(req, "id");
  double id = cJSON_IsNumber(jid) ? jid->valuedouble : -1;
  const char *op = cJSON_GetStringValue(cJSON_GetObjectItem(req, "op"));
  const char *err = NULL;
  cJSON *extra = NULL;
  if (!op) err = "no op";
  else if (!strcmp(op, "ping")) err = NULL;
  else if (!strcmp(op, "files")) err = op_files(req);
  else if (!strcmp(op, "start")) err = op_start(req);
  else if (!strcmp(op, "stdin")) err = op_stdin(req);
  else if (!strcmp(op, "clock")) err = op_clock(req);
  else if (!strcmp(op, "seed")) err = op_seed(req);
  else if (!strcmp(op, "mem")) extra = mem_report();
  else if (!strcmp(op, "kill")) {
    if (child) kill(-child, SIGKILL);
  } else if (!strcmp(op, "hostname")) {
    const char *h = cJSON_GetStringValue(cJSON_GetObjectItem(req, "name"));
    if (!h || sethostname(h, strlen(h))) err = "sethostname failed";
  } else if (!strcmp(op, "poweroff")) {
    ack(id, NULL, NULL);
    sync();
    reboot(RB_POWER_OFF);
  } else err = "unknown op";
  ack(id, err, extra);
  cJSON_Delete(req);
}

// ---- binary frames from the host (org.trenv.cdp, org.trenv.exec): type | id (u32 BE) | length (u32 BE) | payload

struct framebuf {
  unsigned char *data; // frames not yet complete
  size_t len, cap;
};

// Appends a chunk and hands every complete frame to on_frame. A length above MAX_FRAME or a type
// outside 1..max_type means the stream is out of step: what is buffered is dropped, on_bad is called.
static void frames_feed(struct framebuf *b, const char *chunk, size_t got, int max_type, void (*on_frame)(int type, uint32_t id, const unsigned char *p, uint32_t len),
                        void (*on_bad)(int type, uint32_t len)) {
  if (b->len + got > b->cap) {
    while (b->len + got > b->cap) b->cap = b->cap ? b->cap * 2 : 65536;
    b->data = realloc(b->data, b->cap);
  }
  memcpy(b->data + b->len, chunk, got);
  b->len += got;
  size_t off = 0;
  while (b->len - off >= FRAME_HDR) {
    uint32_t id, len;
    memcpy(&id, b->data + off + 1, 4);
    memcpy(&len, b->data + off + 5, 4);
    id = ntohl(id);
    len = ntohl(len);
    int type = b->data[off];
    if (len > MAX_FRAME || type < 1 || type > max_type) {
      b->len = off = 0;
      on_bad(type, len);
      break;
    }
    if (b->len - off < FRAME_HDR + len) break;
    on_frame(type, id, b->data + off + FRAME_HDR, len);
    off += FRAME_HDR + len;
  }
  memmove(b->data, b->data + off, b->len - off);
  b->len -= off;
}

// ---- the browser relay: 127.0.0.1:9222 in the guest <-> frames on org.trenv.cdp

static int cdp_port = -1, cdp_listen = -1;
static struct { int fd; uint32_t id; } conns[MAX_CONNS];
static uint32_t next_conn = 1;
static struct framebuf cdp_in;     // frames from the host, not yet complete

// one frame to the host on a multiplexing port (org.trenv.cdp or org.trenv.exec)
static void port_frame(int port, int type, uint32_t id, const void *data, uint32_t len) {
  unsigned char h[FRAME_HDR] = {(unsigned char)type};
  uint32_t nid = htonl(id), nlen = htonl(len);
  memcpy(h + 1, &nid, 4);
  memcpy(h + 5, &nlen, 4);
  write_all(port, (const char *)h, sizeof h);
  if (len) write_all(port, data, len);
}

static void send_frame(int type, uint32_t id, const void *data, uint32_t len) {
  port_frame(cdp_port, type, id, data, len);
}

static int conn_slot(uint32_t id) {
  for (int i = 0; i < MAX_CONNS; i++)
    if (conns[i].fd >= 0 && conns[i].id == id) return i;
  return -1;
}

static void conn_close(int i, int tell_host) {
  if (tell_host) send_frame(F_CLOSE, conns[i].id, NULL, 0);
  close(conns[i].fd);
  conns[i].fd = -1;
}

static void loopback_up(void) {
  int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  struct ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  strncpy(ifr.ifr_name, "lo", IFNAMSIZ - 1);
  if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) < 0) console("loopback: %s", strerror(errno));
  else {
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) console("loopback up: %s", strerror(errno));
  }
  if (s >= 0) close(s);
}

static void cdp_setup(int port) {
  for (int i = 0; i < MAX_CONNS; i++) conns[i].fd = -1;
  cdp_port = port;
  if (cdp_port < 0) return; // an older host: no browser relay
  loopback_up();
  cdp_listen = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(cdp_listen, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(CDP_TCP_PORT), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(cdp_listen, (struct sockaddr *)&a, sizeof a) < 0 || listen(cdp_listen, 16) < 0) {
    console("browser relay: cannot listen on 127.0.0.1:%d: %s", CDP_TCP_PORT, strerror(errno));
    close(cdp_listen);
    cdp_listen = -1;
  }
}

static void cdp_accept(void) {
  int fd = accept4(cdp_listen, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
  if (fd < 0) return;
  for (int i = 0; i < MAX_CONNS; i++) {
    if (conns[i].fd >= 0) continue;
    conns[i].fd = fd;
    conns[i].id = next_conn++;
    send_frame(F_OPEN, conns[i].id, NULL, 0);
    return;
  }
  close(fd); // too many connections at once
}

static void cdp_frame(int type, uint32_t id, const unsigned char *p, uint32_t len) {
  int i = conn_slot(id);
  if (i >= 0 && type == F_DATA) {
    if (write_wait(conns[i].fd, p, len, 5000) < 0) conn_close(i, 1); // the agent reads while it writes (CDP clients are asynchronous)
  } else if (i >= 0 && type == F_CLOSE) conn_close(i, 0);
}

static void cdp_bad(int type, uint32_t len) { // out of step with the host: drop every connection, start afresh
  console("browser relay: bad frame from the host (type %d, length %u)", type, len);
  for (int i = 0; i < MAX_CONNS; i++)
    if (conns[i].fd >= 0) conn_close(i, 1);
}

static void cdp_from_host(const char *chunk, size_t got) {
  frames_feed(&cdp_in, chunk, got, 255, cdp_frame, cdp_bad);
}

// ---- commands of E2B sandboxes: processes multiplexed over org.trenv.exec (binary frames)
//
// Frame: type (1) | process id (u32 BE, chosen by the host) | payload length (u32 BE) | payload.
// host -> guest: X_SPAWN (JSON), X_STDIN (bytes), X_CLOSE_STDIN, X_SIGNAL (1 byte), X_RESIZE
// (cols u16 BE, rows u16 BE), X_HOLD / X_RELEASE (stop / go on reading the process's output).
// guest -> host: X_STARTED (JSON {pid} or {error}), X_STDOUT, X_STDERR (bytes), X_EXIT (JSON).

#define EXEC_PORT_NAME "org.trenv.exec"
#define MAX_PROCS 64
#define STDIN_HIGH (8 * 1024 * 1024) // queued input above which the port is not read (backpressure)
#define EXIT_GRACE_NS 200000000ull   // output a background child keeps open after the command exited
enum { X_SPAWN = 1, X_STDIN = 2, X_CLOSE_STDIN = 3, X_SIGNAL = 4, X_RESIZE = 5, X_HOLD = 6, X_RELEASE = 7 };
enum { X_STARTED = 1, X_STDOUT = 2, X_STDERR = 3, X_EXIT = 4 };

struct xproc {
  uint32_t id;    // 0: free slot
  pid_t pid;      // session and process group leader
  int in_fd, out_fd, err_fd, pty_fd;
  int held, exited, status, close_in;
  uint64_t exited_at;
  unsigned char *inq; // input not yet written to the process
  size_t inq_off, inq_len, inq_cap;
};
static struct xproc xp[MAX_PROCS];
static int exec_port = -1;
static struct framebuf x_in;

static void x_send(int type, uint32_t id, const void *data, uint32_t len) {
  port_frame(exec_port, type, id, data, len);
}

static void x_send_json(int type, uint32_t id, cJSON *o) {
  char *s = cJSON_PrintUnformatted(o);
  cJSON_Delete(o);
  if (!s) return;
  x_send(type, id, s, (uint32_t)strlen(s));
  free(s);
}

static void x_started_error(uint32_t id, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "error", msg);
  x_send_json(X_STARTED, id, o);
}

static struct xproc *x_find(uint32_t id) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (xp[i].id && xp[i].id == id) return &xp[i];
  return NULL;
}

static void x_close_in(struct xproc *p) {
  if (p->in_fd >= 0) close(p->in_fd);
  p->in_fd = -1;
  free(p->inq);
  p->inq = NULL;
  p->inq_off = p->inq_len = p->inq_cap = 0;
}

// {"argv":[...],"env":["K=V",...],"cwd":"/home/agent","uid":10001,"gid":10001,"stdin":true,"pty":{"cols":80,"rows":24},"fd3":"..."}
// fd3: a small program the command reads from its fd 3 (a pipe holding exactly that text)
// nproc: RLIMIT_NPROC of the command (the sandbox's pids limit: all processes of its user count)
static void x_spawn(uint32_t id, const unsigned char *data, uint32_t len) {
  if (!id || x_find(id)) return x_started_error(id, "process id %u is in use", id);
  struct xproc *p = NULL;
  for (int i = 0; i < MAX_PROCS && !p; i++)
    if (!xp[i].id) p = &xp[i];
  if (!p) return x_started_error(id, "too many processes at once (%d)", MAX_PROCS);
  cJSON *req = cJSON_ParseWithLength((const char *)data, len);
  if (!req) return x_started_error(id, "spawn: not JSON");
  cJSON *ja = cJSON_GetObjectItem(req, "argv"), *je = cJSON_GetObjectItem(req, "env"), *jpty = cJSON_GetObjectItem(req, "pty");
  cJSON *juid = cJSON_GetObjectItem(req, "uid"), *jgid = cJSON_GetObjectItem(req, "gid"), *jnproc = cJSON_GetObjectItem(req, "nproc");
  const char *cwd = cJSON_GetStringValue(cJSON_GetObjectItem(req, "cwd"));
  int want_in = cJSON_IsTrue(cJSON_GetObjectItem(req, "stdin"));
  const char *fd3 = cJSON_GetStringValue(cJSON_GetObjectItem(req, "fd3"));
  char **argv = NULL, **envp = NULL;
  int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, prog[2] = {-1, -1}, master = -1, slave = -1;
  if (!cJSON_IsArray(ja) || cJSON_GetArraySize(ja) < 1 || !cJSON_IsArray(je) || !cJSON_IsNumber(juid) || !cJSON_IsNumber(jgid) || !cwd) {
    x_started_error(id, "spawn needs argv, env, cwd, uid and gid");
    goto out;
  }
  argv = str_array(ja);
  envp = str_array(je);
  if (!argv || !envp) {
    x_started_error(id, "argv and env must be strings");
    goto out;
  }
  if (cJSON_IsObject(jpty)) {
    struct winsize ws = {.ws_row = 24, .ws_col = 80};
    cJSON *c = cJSON_GetObjectItem(jpty, "cols"), *r = cJSON_GetObjectItem(jpty, "rows");
    if (cJSON_IsNumber(c) && c->valueint > 0 && c->valueint <= 1000) ws.ws_col = (unsigned short)c->valueint;
    if (cJSON_IsNumber(r) && r->valueint > 0 && r->valueint <= 1000) ws.ws_row = (unsigned short)r->valueint;
    if (openpty(&master, &slave, NULL, NULL, &ws)) {
      x_started_error(id, "openpty: %s", strerror(errno));
      goto out;
    }
    fcntl(master, F_SETFD, FD_CLOEXEC);
    fcntl(slave, F_SETFD, FD_CLOEXEC);
  } else if ((want_in && pipe2(in, O_CLOEXEC)) || pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC)) {
    x_started_error(id, "pipe: %s", strerror(errno));
    goto out;
  }
  if (fd3) { // the whole text must fit in the pipe: nothing waits to write the rest
    if (pipe2(prog, O_CLOEXEC) || strlen(fd3) > (size_t)fcntl(prog[1], F_GETPIPE_SZ) || write(prog[1], fd3, strlen(fd3)) != (ssize_t)strlen(fd3)) {
      x_started_error(id, "fd3: the program does not fit in a pipe");
      goto out;
    }
    close(prog[1]);
    prog[1] = -1;
  }
  pid_t pid = fork();
  if (pid < 0) {
    x_started_error(id, "fork: %s", strerror(errno));
    goto out;
  }
  if (pid == 0) {
    setsid(); // its own session and process group: signals reach what it starts, not the agent
    if (master >= 0) {
      ioctl(slave, TIOCSCTTY, 0);
      dup2(slave, 0);
      dup2(slave, 1);
      dup2(slave, 2);
    } else {
      int nul = open("/dev/null", O_RDONLY);
      dup2(want_in ? in[0] : nul, 0);
      dup2(out[1], 1);
      dup2(err[1], 2);
    }
    if (prog[0] >= 0) dup2(prog[0], 3);
    for (int s = 1; s < NSIG; s++) signal(s, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    if (cJSON_IsNumber(jnproc) && jnproc->valueint > 0) {
      struct rlimit rl = {.rlim_cur = (rlim_t)jnproc->valueint, .rlim_max = (rlim_t)jnproc->valueint};
      if (setrlimit(RLIMIT_NPROC, &rl)) _exit(126);
    }
    gid_t g = (gid_t)jgid->valueint;
    if (setgroups(1, &g) || setresgid(g, g, g) || setresuid((uid_t)juid->valueint, (uid_t)juid->valueint, (uid_t)juid->valueint)) {
      dprintf(2, "cannot switch to uid %d: %s\n", juid->valueint, strerror(errno));
      _exit(126);
    }
    if (chdir(cwd)) {
      dprintf(2, "cd: %s: %s\n", cwd, strerror(errno));
      _exit(1);
    }
    environ = envp;
    execvp(argv[0], argv);
    dprintf(2, "%s: %s\n", argv[0], strerror(errno));
    _exit(errno == ENOENT ? 127 : 126);
  }
  memset(p, 0, sizeof *p);
  p->id = id;
  p->pid = pid;
  p->in_fd = p->out_fd = p->err_fd = p->pty_fd = -1;
  if (master >= 0) {
    p->pty_fd = master;
    p->out_fd = master;
    p->in_fd = dup(master);
    fcntl(p->in_fd, F_SETFD, FD_CLOEXEC);
    master = -1;
  } else {
    p->out_fd = out[0];
    p->err_fd = err[0];
    p->in_fd = in[1];
    out[0] = err[0] = in[1] = -1;
  }
  fcntl(p->out_fd, F_SETFL, O_NONBLOCK);
  if (p->err_fd >= 0) fcntl(p->err_fd, F_SETFL, O_NONBLOCK);
  if (p->in_fd >= 0) fcntl(p->in_fd, F_SETFL, O_NONBLOCK);
  cJSON *o = cJSON_CreateObject();
  cJSON_AddNumberToObject(o, "pid", pid);
  x_send_json(X_STARTED, id, o);
out:
  for (int i = 0; i < 2; i++) {
    if (in[i] >= 0) close(in[i]);
    if (out[i] >= 0) close(out[i]);
    if (err[i] >= 0) close(err[i]);
    if (prog[i] >= 0) close(prog[i]);
  }
  if (slave >= 0) close(slave);
  if (master >= 0) close(master);
  free(argv);
  free(envp);
  cJSON_Delete(req);
}

static size_t x_queued(void) {
  size_t n = 0;
  for (int i = 0; i < MAX_PROCS; i++)
    if (xp[i].id) n += xp[i].inq_len - xp[i].inq_off;
  return n;
}

// writes what is queued for the process's stdin as far as it takes it; closes it when asked and drained
static void x_flush_in(struct xproc *p) {
  while (p->in_fd >= 0 && p->inq_off < p->inq_len) {
    ssize_t w = write(p->in_fd, p->inq + p->inq_off, p->inq_len - p->inq_off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0 && errno == EAGAIN) return;
    if (w < 0) { // the command closed its input: what is left is dropped
      x_close_in(p);
      return;
    }
    p->inq_off += (size_t)w;
  }
  p->inq_off = p->inq_len = 0;
  if (p->close_in && p->in_fd >= 0) {
    if (p->pty_fd >= 0) { // a terminal's end of input is ^D, not a closed fd
      char eot = 4;
      if (write(p->in_fd, &eot, 1) < 0) { /* the command is gone */ }
    }
    x_close_in(p);
  }
}

static void x_stdin(struct xproc *p, const unsigned char *data, uint32_t len) {
  if (p->in_fd < 0 || p->close_in) return;
  if (p->inq_len + len > p->inq_cap) {
    size_t cap = p->inq_cap ? p->inq_cap : 65536;
    while (p->inq_len + len > cap) cap *= 2;
    unsigned char *q = realloc(p->inq, cap);
    if (!q) return;
    p->inq = q;
    p->inq_cap = cap;
  }
  memcpy(p->inq + p->inq_len, data, len);
  p->inq_len += len;
  x_flush_in(p);
}

static void x_frame(int type, uint32_t id, const unsigned char *data, uint32_t len) {
  if (type == X_SPAWN) return x_spawn(id, data, len);
  struct xproc *p = x_find(id);
  if (!p) return; // ended already: late input or signals are dropped
  if (type == X_STDIN) x_stdin(p, data, len);
  else if (type == X_CLOSE_STDIN) {
    p->close_in = 1;
    x_flush_in(p);
  } else if (type == X_SIGNAL && len == 1 && data[0] > 0 && data[0] < 65 && !p->exited) kill(-p->pid, data[0]);
  else if (type == X_RESIZE && len == 4 && p->pty_fd >= 0) {
    struct winsize ws = {.ws_col = (unsigned short)(data[0] << 8 | data[1]), .ws_row = (unsigned short)(data[2] << 8 | data[3])};
    if (ws.ws_col && ws.ws_row && ws.ws_col <= 1000 && ws.ws_row <= 1000) ioctl(p->pty_fd, TIOCSWINSZ, &ws);
  } else if (type == X_HOLD) p->held = 1;
  else if (type == X_RELEASE) p->held = 0;
}

static void x_bad(int type, uint32_t len) {
  console("exec port: bad frame from the host (type %d, length %u)", type, len);
}

static void x_from_host(const char *chunk, size_t got) {
  frames_feed(&x_in, chunk, got, X_RELEASE, x_frame, x_bad);
}

// a process of ours exited (from reap): 1 if the pid was one
static int x_reaped(pid_t pid, int status) {
  for (int i = 0; i < MAX_PROCS; i++) {
    if (!xp[i].id || xp[i].pid != pid) continue;
    xp[i].exited = 1;
    xp[i].status = status;
    xp[i].exited_at = mono_ns();
    return 1;
  }
  return 0;
}

// reads one chunk of a process's output; closes the fd at its end
static void x_read(struct xproc *p, int *fd, int type, char *chunk, size_t cap) {
  ssize_t got = read(*fd, chunk, cap);
  if (got > 0) x_send(type, p->id, chunk, (uint32_t)got);
  else if (got == 0 || (errno != EAGAIN && errno != EINTR)) { // EIO: the pty's other side is closed
    if (*fd == p->pty_fd) p->pty_fd = -1;
    close(*fd);
    *fd = -1;
  }
}

// the exit is reported once its output is drained, or EXIT_GRACE_NS after the exit when a
// background child holds the output open (it keeps running; its output is no longer read)
static void x_finish(struct xproc *p) {
  int open_out = p->out_fd >= 0 || p->err_fd >= 0;
  // held: a slow reader on the host, whose output is delivered first
  if (!p->exited || (open_out && (p->held || mono_ns() - p->exited_at < EXIT_GRACE_NS))) return;
  if (p->out_fd >= 0) close(p->out_fd);
  if (p->err_fd >= 0) close(p->err_fd);
  x_close_in(p);
  char status[64];
  if (WIFEXITED(p->status)) snprintf(status, sizeof status, "exited:%d", WEXITSTATUS(p->status));
  else snprintf(status, sizeof status, "signaled:%d", WTERMSIG(p->status));
  cJSON *o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "status", status);
  x_send_json(X_EXIT, p->id, o);
  memset(p, 0, sizeof *p);
}

static int x_waiting_exit(void) {
  for (int i = 0; i < MAX_PROCS; i++)
    if (xp[i].id && xp[i].exited) return 1;
  return 0;
}

static int open_port(const char *want) {
  glob_t g;
  int fd = -1;
  if (glob("/sys/class/virtio-ports/*/name", 0, NULL, &g) == 0) {
    for (size_t i = 0; i < g.gl_pathc && fd < 0; i++) {
      char name[64] = {0};
      FILE *f = fopen(g.gl_pathv[i], "r");
      if (!f) continue;
      if (fgets(name, sizeof name, f) && !strncmp(name, want, strlen(want)) && (name[strlen(want)] == '\n' || !name[strlen(want)])) {
        char dev[128];
        const char *base = g.gl_pathv[i] + strlen("/sys/class/virtio-ports/");
        snprintf(dev, sizeof dev, "/dev/%.*s", (int)(strchr(base, '/') - base), base);
        fd = open(dev, O_RDWR | O_CLOEXEC | O_NONBLOCK);
      }
      fclose(f);
    }
    globfree(&g);
  }
  return fd;
}

int main(void) {
  // PID 1: children's exits arrive on a signalfd, so an idle guest sleeps in poll() (no timer wake-ups:
  // under TCG every wake-up costs host CPU, and pooled clones sit idle)
  signal(SIGPIPE, SIG_IGN);
  sigset_t chld;
  sigemptyset(&chld);
  sigaddset(&chld, SIGCHLD);
  sigprocmask(SIG_BLOCK, &chld, NULL);
  int sig_fd = signalfd(-1, &chld, SFD_NONBLOCK | SFD_CLOEXEC);
  for (int i = 0; i < 100 && (port_fd = open_port(PORT_NAME)) < 0; i++) usleep(20000);
  if (port_fd < 0) {
    console("no virtio-serial port named %s", PORT_NAME);
    reboot(RB_POWER_OFF);
    return 1;
  }
  {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "t", "ready");
    struct timespec bt;
    clock_gettime(CLOCK_BOOTTIME, &bt);
    cJSON_AddNumberToObject(o, "boot_ms", (double)bt.tv_sec * 1e3 + (double)bt.tv_nsec / 1e6);
    send_json(o);
  }
  cdp_setup(open_port(CDP_PORT_NAME));
  exec_port = open_port(EXEC_PORT_NAME); // absent on an older host: no E2B commands
  // terminals for E2B commands that ask for a pty
  mkdir("/dev/pts", 0755);
  if (mount("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "mode=0620,ptmxmode=0666") && errno != EBUSY) console("devpts: %s", strerror(errno));
  size_t cap = 65536, len = 0;
  char *buf = malloc(cap);
  char chunk[65536];
  for (;;) {
    // 0 port, 1 signals, 2-4 the child's pipes, 5 browser port, 6 its listener, 7.. its connections
    // then the exec port and, per E2B process, its stdin (while input is queued), stdout and stderr
    struct pollfd pf[7 + MAX_CONNS + 1 + 3 * MAX_PROCS] = {{.fd = port_fd, .events = POLLIN}, {.fd = sig_fd, .events = POLLIN}};
    int n = 2;
    for (int i = 0; i < 3; i++) pf[n++] = (struct pollfd){.fd = child_fd[i], .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = cdp_port, .events = POLLIN};
    pf[n++] = (struct pollfd){.fd = cdp_listen, .events = POLLIN};
    for (int i = 0; i < MAX_CONNS; i++) pf[n++] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
    int xbase = n;
    pf[n++] = (struct pollfd){.fd = x_queued() < STDIN_HIGH ? exec_port : -1, .events = POLLIN};
    for (int i = 0; i < MAX_PROCS; i++) {
      struct xproc *p = &xp[i];
      pf[n++] = (struct pollfd){.fd = p->id && p->inq_off < p->inq_len ? p->in_fd : -1, .events = POLLOUT};
      pf[n++] = (struct pollfd){.fd = p->id && !p->held ? p->out_fd : -1, .events = POLLIN};
      pf[n++] = (struct pollfd){.fd = p->id && !p->held ? p->err_fd : -1, .events = POLLIN};
    }
    int r = poll(pf, (nfds_t)n, exit_pending ? 10 : x_waiting_exit() ? 50 : -1);
    if (r > 0 && exec_port >= 0) {
      if (pf[xbase].revents & POLLIN) {
        ssize_t got = read(exec_port, chunk, sizeof chunk);
        if (got > 0) x_from_host(chunk, (size_t)got);
        else usleep(20000); // host side not connected
      } else if (pf[xbase].revents & POLLHUP) usleep(20000);
      for (int i = 0; i < MAX_PROCS; i++) {
        struct xproc *p = &xp[i];
        struct pollfd *q = &pf[xbase + 1 + 3 * i];
        if (!p->id) continue;
        if (q[0].fd >= 0 && q[0].fd == p->in_fd && (q[0].revents & (POLLOUT | POLLERR | POLLHUP))) x_flush_in(p);
        if (q[1].fd >= 0 && q[1].fd == p->out_fd && (q[1].revents & (POLLIN | POLLHUP | POLLERR))) x_read(p, &p->out_fd, X_STDOUT, chunk, sizeof chunk);
        if (q[2].fd >= 0 && q[2].fd == p->err_fd && (q[2].revents & (POLLIN | POLLHUP | POLLERR))) x_read(p, &p->err_fd, X_STDERR, chunk, sizeof chunk);
      }
    }
    if (r > 0 && cdp_port >= 0) {
      if (pf[5].revents & POLLIN) {
        ssize_t got = read(cdp_port, chunk, sizeof chunk);
        if (got > 0) cdp_from_host(chunk, (size_t)got);
        else usleep(20000); // host side not connected
      } else if (pf[5].revents & POLLHUP) usleep(20000);
      if (pf[6].revents & POLLIN) cdp_accept();
      for (int i = 0; i < MAX_CONNS; i++) {
        // a slot that changed during this round (closed, or reused by cdp_accept) is left for the next poll
        if (conns[i].fd < 0 || pf[7 + i].fd != conns[i].fd || !(pf[7 + i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
        ssize_t got = read(conns[i].fd, chunk, sizeof chunk);
        if (got > 0) send_frame(F_DATA, conns[i].id, chunk, (uint32_t)got);
        else if (got == 0 || (errno != EAGAIN && errno != EINTR)) conn_close(i, 1);
      }
    }
    if (pf[1].revents & POLLIN) {
      struct signalfd_siginfo si;
      while (read(sig_fd, &si, sizeof si) == sizeof si) {
      }
    }
    reap();
    if (r < 0 && errno != EINTR) break;
    if (pf[0].revents & (POLLIN | POLLHUP)) {
      ssize_t got = read(port_fd, chunk, sizeof chunk);
      if (got > 0) {
        if (len + (size_t)got + 1 > cap) {
          while (len + (size_t)got + 1 > cap) cap *= 2;
          if (cap > MAX_LINE) {
            console("request line too long: dropped");
            len = 0;
            cap = 65536;
          }
          buf = realloc(buf, cap);
        }
        memcpy(buf + len, chunk, (size_t)got);
        len += (size_t)got;
        char *nl;
        while ((nl = memchr(buf, '\n', len))) {
          *nl = 0;
          handle(buf);
          size_t rest = len - (size_t)(nl + 1 - buf);
          memmove(buf, nl + 1, rest);
          len = rest;
        }
      } else if (got == 0 || (pf[0].revents & POLLHUP)) {
        usleep(20000); // host side not connected (between a template save and a clone's connect)
      }
    }
    int open_fds = 0;
    for (int i = 0; i < 3; i++) {
      if (child_fd[i] < 0) continue;
      if (!(pf[2 + i].revents & (POLLIN | POLLHUP | POLLERR))) {
        open_fds++;
        continue;
      }
      ssize_t got = read(child_fd[i], chunk, sizeof chunk);
      if (got > 0) {
        char *b = b64_encode((unsigned char *)chunk, (size_t)got);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "t", "data");
        cJSON_AddStringToObject(o, "fd", fd_names[i]);
        cJSON_AddStringToObject(o, "b64", b);
        free(b);
        send_json(o);
        open_fds++;
      } else if (got == 0 || (errno != EAGAIN && errno != EINTR)) {
        close(child_fd[i]);
        child_fd[i] = -1;
      } else open_fds++;
    }
    if (exit_pending && !open_fds) report_exit();
    for (int i = 0; i < MAX_PROCS; i++)
      if (xp[i].id) x_finish(&xp[i]);
  }
  return 0;
}
