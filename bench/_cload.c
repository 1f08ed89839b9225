/* A closed-loop HTTP/1.1 load generator for bench/lane_log.py: what sends costs berth's
 * host next to nothing, so what the bench measures is berth.
 *
 *   cload HOST PORT PATH SECONDS CONNECTIONS TOKEN [EXTRA_HEADER ...]
 *
 * One thread per connection (keep-alive). Each sends one POST at a time, a JSON-RPC
 * `message/send` with a messageId of its own (c<conn>-<seq>-<a random prefix per run>),
 * `Authorization: Bearer TOKEN` and each EXTRA_HEADER ("Name: value"), reads the whole
 * answer (status line, then Content-Length, chunks, or the connection's close) and sends
 * the next. A connection the server closes is opened again; a request that got no byte of
 * answer on a kept connection is sent again, the same messageId, on a fresh one (berth
 * answers a repeat as a replay of the same delivery). After SECONDS no request is started;
 * those running finish. Then one line of JSON on stdout:
 *
 *   {"n", "seconds", "status": {"202": k, ...}, "p50_ms", "p99_ms", "errors",
 *    "resent", "cpu_s"}
 *
 * n: answers read (any status); seconds: from the start until the last answer; errors:
 * requests given up (no answer, a malformed one); cpu_s: this process's own CPU time.
 * With CLOAD_LATENCIES=FILE every answer's latency (microseconds) is written there, one a
 * line, so several processes' can be pooled. The first answer that is not 2xx is printed
 * to stderr (its status and up to 600 bytes of its body), once.
 *
 *   gcc -O2 -o cload bench/_cload.c -lpthread
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_STATUS 600
#define IO_TIMEOUT_S 60

static const char *g_host, *g_port, *g_path, *g_token;
static char **g_extra;
static int g_nextra;
static double g_deadline;
static char g_prefix[17];
static struct addrinfo *g_addr;
static pthread_mutex_t g_print = PTHREAD_MUTEX_INITIALIZER;
static int g_printed;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

typedef struct {
    int id;
    long n, errors, resent;
    long status[MAX_STATUS];
    uint32_t *lat; /* microseconds */
    size_t nlat, caplat;
    double last; /* when its last answer ended */
    /* the connection */
    int fd;
    int reused; /* the connection has carried an answer before */
    char *buf;
    size_t len, cap;
} conn_t;

static void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(2);
}

static void close_conn(conn_t *c) {
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    c->reused = 0;
    c->len = 0;
}

static int open_conn(conn_t *c) {
    for (struct addrinfo *a = g_addr; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0) continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            struct timeval tv = {IO_TIMEOUT_S, 0};
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
            c->fd = fd;
            c->reused = 0;
            c->len = 0;
            return 0;
        }
        close(fd);
    }
    return -1;
}

static int send_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* read more into the connection's buffer: bytes read, 0 at the peer's close, -1 on error */
static ssize_t fill(conn_t *c) {
    if (c->cap - c->len < 16384) {
        c->cap = c->cap ? c->cap * 2 : 65536;
        c->buf = realloc(c->buf, c->cap);
        if (!c->buf) die("out of memory");
    }
    for (;;) {
        ssize_t k = recv(c->fd, c->buf + c->len, c->cap - c->len - 1, 0);
        if (k < 0 && errno == EINTR) continue;
        if (k > 0) {
            c->len += (size_t)k;
            c->buf[c->len] = 0;
        }
        return k;
    }
}

/* the end of the head ("\r\n\r\n") within buf[0..len), or NULL */
static char *head_end(conn_t *c) {
    return c->len >= 4 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL;
}

static int header_is(const char *line, size_t n, const char *name, const char **value) {
    size_t k = strlen(name);
    if (n <= k || strncasecmp(line, name, k) != 0 || line[k] != ':') return 0;
    const char *v = line + k + 1;
    while (v < line + n && (*v == ' ' || *v == '\t')) v++;
    *value = v;
    return 1;
}

static void note_failure(int status, const char *body, size_t n) {
    pthread_mutex_lock(&g_print);
    if (!g_printed) {
        g_printed = 1;
        fprintf(stderr, "cload: first answer not 2xx: %d: %.*s\n", status, (int)(n > 600 ? 600 : n),
                body);
    }
    pthread_mutex_unlock(&g_print);
}

/* Read one whole answer. 1: read (*status set, the bytes consumed), 0: the connection
 * closed before any byte of it, -1: an error (malformed, cut, a timeout). *close_after:
 * the server closes (or the answer ran to the close). */
static int read_answer(conn_t *c, int *status, int *close_after) {
    char *end;
    *close_after = 0;
    while (!(end = head_end(c))) {
        ssize_t k = fill(c);
        if (k == 0) return c->len == 0 ? 0 : -1;
        if (k < 0) return -1;
        if (c->len > (1 << 20)) return -1;
    }
    size_t head = (size_t)(end - c->buf) + 4;
    if (c->len < 12 || strncmp(c->buf, "HTTP/1.", 7) != 0) return -1;
    *status = atoi(c->buf + 9);
    if (c->buf[7] == '0') *close_after = 1;
    long clen = -1;
    int chunked = 0;
    for (char *line = memchr(c->buf, '\n', head) + 1; line < c->buf + head - 2;) {
        char *eol = memchr(line, '\n', (size_t)(c->buf + head - line));
        size_t n = (size_t)(eol - line);
        if (n && line[n - 1] == '\r') n--;
        const char *v;
        if (header_is(line, n, "content-length", &v)) clen = strtol(v, NULL, 10);
        else if (header_is(line, n, "transfer-encoding", &v))
            chunked = strncasecmp(v, "chunked", 7) == 0;
        else if (header_is(line, n, "connection", &v) && strncasecmp(v, "close", 5) == 0)
            *close_after = 1;
        line = eol + 1;
    }
    size_t body_at = head, body_len = 0, used = 0;
    if (*status / 100 == 1 || *status == 204 || *status == 304) {
        used = head;
    } else if (chunked) {
        /* chunks, decoded in place is not needed: only where they end matters */
        size_t at = head;
        for (;;) {
            char *eol;
            while (!(eol = memmem(c->buf + at, c->len - at, "\r\n", 2))) {
                ssize_t k = fill(c);
                if (k <= 0) return -1;
            }
            long size = strtol(c->buf + at, NULL, 16);
            if (size < 0) return -1;
            size_t data = (size_t)(eol - c->buf) + 2;
            if (size == 0) { /* trailers, then an empty line */
                at = data;
                for (;;) {
                    while (!(eol = memmem(c->buf + at, c->len - at, "\r\n", 2))) {
                        ssize_t k = fill(c);
                        if (k <= 0) return -1;
                    }
                    int empty = eol == c->buf + at;
                    at = (size_t)(eol - c->buf) + 2;
                    if (empty) break;
                }
                used = at;
                break;
            }
            while (c->len < data + (size_t)size + 2) {
                ssize_t k = fill(c);
                if (k <= 0) return -1;
            }
            at = data + (size_t)size + 2;
        }
        body_len = used - head; /* the raw chunks: for the debug print only */
    } else if (clen >= 0) {
        while (c->len < head + (size_t)clen) {
            ssize_t k = fill(c);
            if (k <= 0) return -1;
        }
        body_len = (size_t)clen;
        used = head + (size_t)clen;
    } else { /* to the close */
        for (;;) {
            ssize_t k = fill(c);
            if (k == 0) break;
            if (k < 0) return -1;
        }
        body_len = c->len - head;
        used = c->len;
        *close_after = 1;
    }
    if (*status < 200 || *status >= 300) note_failure(*status, c->buf + body_at, body_len);
    memmove(c->buf, c->buf + used, c->len - used);
    c->len -= used;
    return 1;
}

static void *run(void *arg) {
    conn_t *c = arg;
    size_t cap = 4096;
    char *req = malloc(cap);
    char body[1024], extra[8192];
    size_t xn = 0;
    for (int i = 0; i < g_nextra; i++) {
        int k = snprintf(extra + xn, sizeof extra - xn, "%s\r\n", g_extra[i]);
        if (k < 0 || (size_t)k >= sizeof extra - xn) die("extra headers too long");
        xn += (size_t)k;
    }
    c->fd = -1;
    for (long seq = 1; now() < g_deadline; seq++) {
        int bn = snprintf(body, sizeof body,
                          "{\"jsonrpc\":\"2.0\",\"id\":%ld,\"method\":\"message/send\",\"params\":"
                          "{\"message\":{\"role\":\"ROLE_USER\",\"messageId\":\"c%d-%ld-%s\","
                          "\"parts\":[{\"text\":\"hi\"}]}}}",
                          seq, c->id, seq, g_prefix);
        int rn = snprintf(req, cap,
                          "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                          "Authorization: Bearer %s\r\n%sContent-Length: %d\r\n\r\n%s",
                          g_path, g_host, g_port, g_token, extra, bn, body);
        if ((size_t)rn >= cap) die("request too long");
        double t0 = now();
        int done = 0;
        for (int tries = 0; tries < 3 && !done; tries++) {
            if (c->fd < 0 && open_conn(c) < 0) {
                usleep(10000);
                continue;
            }
            int was_reused = c->reused;
            int status, close_after;
            int r = send_all(c->fd, req, (size_t)rn) < 0 ? 0 : read_answer(c, &status, &close_after);
            if (r == 1) {
                done = 1;
                double t1 = now();
                c->n++;
                c->status[status >= 0 && status < MAX_STATUS ? status : 0]++;
                if (c->nlat == c->caplat) {
                    c->caplat = c->caplat ? c->caplat * 2 : 65536;
                    c->lat = realloc(c->lat, c->caplat * sizeof *c->lat);
                    if (!c->lat) die("out of memory");
                }
                c->lat[c->nlat++] = (uint32_t)((t1 - t0) * 1e6);
                c->last = t1;
                if (close_after) close_conn(c);
                else c->reused = 1;
            } else {
                close_conn(c);
                if (r == 0 && was_reused) {
                    c->resent++; /* closed under us before answering: again, on a fresh one */
                    continue;
                }
                break;
            }
        }
        if (!done) c->errors++;
    }
    close_conn(c);
    free(req);
    return NULL;
}

static int cmp_u32(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 7)
        die("usage: %s HOST PORT PATH SECONDS CONNECTIONS TOKEN [EXTRA_HEADER ...]", argv[0]);
    g_host = argv[1];
    g_port = argv[2];
    g_path = argv[3];
    double seconds = atof(argv[4]);
    int nconn = atoi(argv[5]);
    g_token = argv[6];
    g_extra = argv + 7;
    g_nextra = argc - 7;
    if (nconn < 1) die("CONNECTIONS must be 1 or more");
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int e = getaddrinfo(g_host, g_port, &hints, &g_addr);
    if (e) die("%s:%s: %s", g_host, g_port, gai_strerror(e));
    /* a random prefix per run: messageIds never repeat between runs on one store */
    unsigned char rnd[8];
    FILE *ur = fopen("/dev/urandom", "rb");
    if (!ur || fread(rnd, 1, sizeof rnd, ur) != sizeof rnd) die("no /dev/urandom");
    fclose(ur);
    for (int i = 0; i < 8; i++) sprintf(g_prefix + 2 * i, "%02x", rnd[i]);

    conn_t *cs = calloc((size_t)nconn, sizeof *cs);
    pthread_t *th = calloc((size_t)nconn, sizeof *th);
    double start = now();
    g_deadline = start + seconds;
    for (int i = 0; i < nconn; i++) {
        cs[i].id = i;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setstacksize(&at, 256 * 1024);
        if (pthread_create(&th[i], &at, run, &cs[i])) die("pthread_create failed");
        pthread_attr_destroy(&at);
    }
    for (int i = 0; i < nconn; i++) pthread_join(th[i], NULL);
    double end = start;
    long n = 0, errors = 0, resent = 0, status[MAX_STATUS] = {0};
    size_t nlat = 0;
    for (int i = 0; i < nconn; i++) {
        n += cs[i].n;
        errors += cs[i].errors;
        resent += cs[i].resent;
        nlat += cs[i].nlat;
        if (cs[i].last > end) end = cs[i].last;
        for (int s = 0; s < MAX_STATUS; s++) status[s] += cs[i].status[s];
    }
    if (end == start) end = now();
    uint32_t *all = malloc((nlat ? nlat : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < nconn; i++) {
        memcpy(all + k, cs[i].lat, cs[i].nlat * sizeof *all);
        k += cs[i].nlat;
    }
    qsort(all, nlat, sizeof *all, cmp_u32);
    const char *lat_file = getenv("CLOAD_LATENCIES");
    if (lat_file && *lat_file) {
        FILE *f = fopen(lat_file, "w");
        if (!f) die("%s: %s", lat_file, strerror(errno));
        for (size_t i = 0; i < nlat; i++) fprintf(f, "%u\n", all[i]);
        fclose(f);
    }
    double p50 = nlat ? all[(size_t)(0.50 * (double)nlat)] / 1000.0 : 0;
    double p99 = nlat ? all[(size_t)(0.99 * (double)nlat)] / 1000.0 : 0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
                 ru.ru_stime.tv_usec / 1e6;
    printf("{\"n\": %ld, \"seconds\": %.6f, \"status\": {", n, end - start);
    int first = 1;
    for (int s = 0; s < MAX_STATUS; s++)
        if (status[s]) {
            printf("%s\"%d\": %ld", first ? "" : ", ", s, status[s]);
            first = 0;
        }
    printf("}, \"p50_ms\": %.3f, \"p99_ms\": %.3f, \"errors\": %ld, \"resent\": %ld, "
           "\"cpu_s\": %.4f}\n",
           p50, p99, errors, resent, cpu);
    freeaddrinfo(g_addr);
    return 0;
}
