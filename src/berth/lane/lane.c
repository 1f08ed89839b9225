/* berth's fast lane: the plain durable `message/send` served in C, everything else relayed
   to the Python server byte for byte. The design, what is "plain", the feed and the
   hand-off are in docs/fast-lane.md; this file follows it.

     gcc -O2 -o berth-lane lane.c -lsqlite3 -lpthread -lcrypto   (src/berth/lane/build.py)

   Configuration comes from the environment (BERTH_LANE_*), set by berth's Python side,
   which starts this program, reads its standard output (the feed: one JSON object per
   line) and restarts it if it exits.

   Threads: one event loop (epoll) for every socket, and one writer that runs the
   delivery log's writes in group commits (every write waiting shares one transaction and
   one fsync) and wakes the loop through an eventfd. The loop reads the credential and
   the workspace on its own connection (WAL readers do not wait for writers); every
   decision that must be atomic with berth's own writes (the workspace still online, no
   queue, a free slot, no such messageId yet) is the accept statement's guard. */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "canon.h"
#ifdef LANE_PG
#include <libpq-fe.h>
#endif

#define MAX_HEAD 16384
#define MAX_LISTEN 8
#define IDLE_REUSE 4.0 /* seconds an idle agent connection is reused (agent_h1.py's) */
/* seconds an idle connection to Python is reused, counted from when the lane saw the last
   answer end, so later than uvicorn counts its keep-alive (5 s, server.KEEP_ALIVE): under
   it, so uvicorn does not close one at the instant the lane writes a request into it (that
   request would find it closed, and its caller would be cut) unless the lane was a second
   late reading the last answer. 2 s measured 1.2 points more idle CPU at 1,000 workspaces
   (heartbeats relayed on fresh connections: docs/fast-lane.md) */
#define UPSTREAM_REUSE 4.0
#define IDLE_CLIENT 5.0 /* seconds a caller may send nothing between requests (uvicorn's keep-alive) */

/* ------------------------------------------------------------------ configuration */

static const char *db_path, *upstream_path, *handoff_path, *owner, *secret;
static unsigned char admin_sha[32];
static int have_admin;
static double wait_s = 300, forward_timeout = 600, lease_s = 30, grace_s = 10;
static long max_body = 1 << 20, max_queue = 10000;
static int in_docker; /* Docker workspaces are reached at rewritten addresses: Python's */
static const char *synchronous = "FULL";
/* BERTH_LANE_PG: berth's store is PostgreSQL (this libpq connection string), not SQLite */
static const char *pg_url;

static void die(const char *what) {
    fprintf(stderr, "lane: %s: %s\n", what, strerror(errno));
    exit(1);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ buffers */

typedef struct buf { char *p; size_t n, cap; } buf;

static void put(buf *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 4096;
        b->p = realloc(b->p, b->cap);
        if (!b->p) die("realloc");
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }

static void putf(buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void putf(buf *b, const char *fmt, ...) { /* any length: never truncated */
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0) return;
    if (b->n + (size_t)n + 1 > b->cap) {
        b->cap = (b->n + (size_t)n + 1) * 2 + 4096;
        b->p = realloc(b->p, b->cap);
        if (!b->p) die("realloc");
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->n += (size_t)n;
}

static void drop(buf *b, size_t n) {
    if (n >= b->n) { b->n = 0; return; }
    memmove(b->p, b->p + n, b->n - n);
    b->n -= n;
}

static void buf_free(buf *b) { free(b->p); b->p = NULL; b->n = b->cap = 0; }

/* ------------------------------------------------------------------ objects */

enum { M_LANE, M_RELAY, M_PIPE };
enum { RS_HEAD, RS_BODY, RS_CHUNK_LINE, RS_CHUNK_DATA, RS_TRAILER, RS_UNTIL_CLOSE };
enum { K_LISTEN = 1, K_CLIENT, K_UP, K_AGENT, K_EVENT, K_TIMER, K_SIGNAL };

typedef struct ev { int kind; uint32_t mask; /* what epoll watches on its fd now */ } ev;

struct job;

typedef struct client {
    ev e;
    int fd;
    buf in;
    struct job *job;      /* the send it waits for, or NULL */
    int up;               /* relayed to Python: the upstream socket, or -1 */
    ev up_e;              /* epoll tag of `up` (kind K_UP, container_of'd back) */
    int dead;             /* closed: freed after this turn of the loop (events may follow) */
    int queued;           /* in the ready list: its next buffered request is taken after the batch */
    int up_handoff;       /* `up` goes to the hand-off socket (closed once its answer passed) */
    struct client *next_ready;
    double last_active;   /* when it last sent anything or was last answered (idle: closed) */
    int close_after;      /* Connection: close */
    int rd_eof, closing;  /* the caller half-closed; closed once out_c is sent */
    int mode;             /* M_LANE, M_RELAY (one request to Python, then back), M_PIPE */
    /* the answer of a relayed request, parsed as it passes (to know where it ends) */
    int rs, head_req, r_close;
    buf rh;               /* its head (or a chunk-size line) so far */
    long long rleft;
    double up_idle_since;
    buf out_c, out_up;    /* bytes waiting for the caller, for Python */
    struct client *prev, *next;
} client;

typedef struct agent {    /* a connection to an agent, in use by one job or idle in the pool */
    ev e;
    int fd, dead;
    char host[64];
    int port;
    int connected;
    double idle_since;
    buf out;              /* the forward's bytes the agent has not taken yet */
    /* its answer, parsed as it comes */
    int rs, status, keep, encoded;
    buf line, body;
    long long left;
    size_t got;
    struct job *job;
    struct agent *next;   /* in the idle pool */
} agent;

enum { J_ACCEPTING, J_FORWARDING, J_SETTLING };
enum { OP_ACCEPT = 1, OP_SETTLE, OP_RENEW };

typedef struct job {
    int op;               /* what the writer is asked (first member of the queue item) */
    struct job *next_op;
    int ok;               /* the writer's answer: the statement took its row */
    int state;
    client *c;            /* the caller waiting, or NULL once answered 202 / gone */
    agent *a;
    /* the delivery */
    char id[37], ws_id[128], caller[300], message_id[257], fingerprint[65];
    const char *method;   /* message/send or SendMessage, as the caller sent it (static) */
    char agent_host[64], agent_path[512], host_header[96];
    char run[130];        /* the run it goes to and the crashes before (judging a hand-off) */
    long long crashes;
    int wait0;            /* X-Berth-Wait: 0: answered 202 once accepted */
    int agent_port;
    char *request; size_t request_len, req_len;
    double fwd_s;         /* the forward's seconds, to the agent's whole answer */
    char *headers_json;
    char *fwd_headers;    /* header lines forwarded to the agent */
    double created, forwarded_at, wait_deadline, forward_deadline;
    long long capacity;   /* -1: none */
    /* on PostgreSQL the accept itself reads the credential and the workspace: what the
       request named (the workspace's name or id; the SHA-256 of the bearer secret, "" for
       the operator), and the workspace's agent URL as the accept found it */
    char ref[128], cred[65];
    char *url;
#ifdef LANE_LOG_BENCH
    int bench_p;          /* the producer it is of (bench/delivery_log.py --lane) */
#endif
    /* the agent's answer */
    int status;
    char ctype[256];
    char *reply; size_t reply_len;
    struct job *prev, *next;
} job;

static int ep, efd, tfd, sfd, nlisten;
static int listen_fds[MAX_LISTEN];
static ev listen_e = {K_LISTEN}, event_e = {K_EVENT}, timer_e = {K_TIMER}, signal_e = {K_SIGNAL};
static client *clients, *dead_clients, *ready;
static job *jobs;
static agent *idle_agents, *dead_agents;
static int stopping, debug;
static double stop_deadline;

/* ------------------------------------------------------------------ sockets */

static void ep_add(int fd, ev *tag, uint32_t events) {
    struct epoll_event e = {.events = events, .data.ptr = tag};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) die("epoll_ctl add");
    tag->mask = events;
}

/* A change of what epoll watches, made only when it changes (level-triggered, so the same
   mask again would change nothing): most calls after a read or a write change nothing, and
   one epoll_ctl per call was ~5 system calls per message, the lane's only ones the C floor
   does not make (bench/proxy.py). */
static void ep_mod(int fd, ev *tag, uint32_t events) {
    if (tag->mask == events) return;
    struct epoll_event e = {.events = events, .data.ptr = tag};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, fd, &e) == 0) tag->mask = events;
}

/* Everything readable now into b: -1 once the peer closed or failed, else bytes read. */
static long read_some(int fd, buf *b) {
    char tmp[65536];
    long got = 0;
    for (;;) {
        ssize_t r = recv(fd, tmp, sizeof tmp, 0);
        if (r > 0) { put(b, tmp, (size_t)r); got += r; continue; }
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) return got;
        return got > 0 ? got : -1;
    }
}

/* As read_some, but stops once b holds `cap` bytes (the rest stays in the socket). */
static long read_upto(int fd, buf *b, size_t cap) {
    char tmp[65536];
    long got = 0;
    while (b->n < cap) {
        size_t want = cap - b->n < sizeof tmp ? cap - b->n : sizeof tmp;
        ssize_t r = recv(fd, tmp, want, 0);
        if (r > 0) { put(b, tmp, (size_t)r); got += r; continue; }
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) return got;
        return got > 0 ? got : -1;
    }
    return got;
}

static int connect_unix(const char *path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) { close(fd); return -1; }
    fcntl(fd, F_SETFL, O_NONBLOCK);
    return fd;
}

/* ------------------------------------------------------------------ the feed */

static buf feed;
/* The feed goes out in batches, at most FEED_DELAY after its first line waited: Python
   wakes once per batch, not twice per message (at c=1 that wake-up was most of the lane's
   added latency). Nothing waits on it: a restart's drain, metrics and flows may lag by
   this much; a hand-off sends it first. */
#define FEED_DELAY 0.01
static double feed_due;

static void feed_flush(void) {
    if (!feed.n) { feed_due = 0; return; }
    size_t off = 0;
    while (off < feed.n) {
        ssize_t w = write(1, feed.p + off, feed.n - off);
        if (w > 0) { off += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) { /* Python reads behind: the rest goes next time */
            drop(&feed, off);
            feed_due = mono() + FEED_DELAY;
            return;
        }
        break; /* Python is gone: it will restart us */
    }
    feed.n = 0;
    feed_due = 0;
}

/* ------------------------------------------------------------------ HTTP heads */

typedef struct hdr { const char *name; size_t nlen; const char *val; size_t vlen; } hdr;

static int name_is(const hdr *h, const char *name) {
    return h->nlen == strlen(name) && strncasecmp(h->name, name, h->nlen) == 0;
}

/* Header lines of the head [p, end): up to max, -1 when malformed. */
static int parse_headers(const char *p, const char *end, hdr *out, int max) {
    int n = 0;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol) eol = end;
        if (eol == p) break;
        const char *colon = memchr(p, ':', (size_t)(eol - p));
        if (!colon || colon == p || n >= max) return -1;
        for (const char *q = p; q < colon; q++)
            if (*q <= ' ' || *q >= 127) return -1;
        const char *v = colon + 1, *ve = eol;
        for (const char *q = v; q < ve; q++)
            if (((unsigned char)*q < 0x20 && *q != '\t') || *q == 0x7f) return -1;
        while (v < ve && (*v == ' ' || *v == '\t')) v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        out[n++] = (hdr){p, (size_t)(colon - p), v, (size_t)(ve - v)};
        p = eol + 2;
    }
    return n;
}

static int plain_value(const char *v, size_t n) { /* storable in JSON as it is, and a header */
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x20 || (unsigned char)v[i] > 0x7e || v[i] == '"' || v[i] == '\\') return 0;
    return 1;
}

/* proxy_keys.ids: a messageId Python echoes as it is (else percent-encoded: Python's) */
static int header_safe(const char *v, size_t n) {
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x21 || (unsigned char)v[i] > 0x7e || v[i] == '"' || v[i] == '\\') return 0;
    return 1;
}

static void sha_hex(const void *p, size_t n, char out[65]) {
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256(p, n, d);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* ------------------------------------------------------------------ clients */

static void client_close(client *c);
static void client_done(client *c);
static void on_request(client *c);
static void job_free(job *j);

static void unlink_client(client *c) {
    if (c->prev) c->prev->next = c->next; else clients = c->next;
    if (c->next) c->next->prev = c->prev;
}

#define HIGH_WATER (1 << 20) /* bytes waiting for a slow reader before its source is paused */

/* What each of a caller's two sockets waits for: reading unless the caller half-closed or
   the other side is backed up; writing while something waits to go out. */
static void c_events(client *c) {
    if (c->fd >= 0) {
        /* a pipe reads while Python keeps up; otherwise up to one request ahead (the rest
           waits in the socket: what a caller sends early cannot grow the lane) */
        int room = c->out_c.n < HIGH_WATER && /* a caller not reading its answers is not read */
                   (c->mode == M_PIPE ? c->out_up.n < HIGH_WATER : c->in.n < (size_t)max_body + MAX_HEAD);
        uint32_t e = (!c->rd_eof && room ? EPOLLIN : 0) | (c->out_c.n ? EPOLLOUT : 0);
        ep_mod(c->fd, &c->e, e);
    }
    if (c->up >= 0) {
        uint32_t e = (c->out_c.n < HIGH_WATER ? EPOLLIN : 0) | (c->out_up.n ? EPOLLOUT : 0);
        ep_mod(c->up, &c->up_e, e);
    }
}

/* Closed now; freed at the end of this turn of the loop, since an event for its other
   socket may still be waiting in the same batch (reaped by the loop, which skips dead). */
static void client_close(client *c) {
    if (c->dead) return;
    c->dead = 1;
    if (c->job) { c->job->c = NULL; c->job = NULL; }
    if (c->fd >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL); close(c->fd); c->fd = -1; }
    if (c->up >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->up, NULL); close(c->up); c->up = -1; }
    unlink_client(c);
    c->next = dead_clients;
    dead_clients = c;
}

static void reap(void) {
    while (dead_clients) {
        client *c = dead_clients;
        dead_clients = c->next;
        buf_free(&c->in);
        buf_free(&c->out_c);
        buf_free(&c->out_up);
        buf_free(&c->rh);
        free(c);
    }
    while (dead_agents) {
        agent *a = dead_agents;
        dead_agents = a->next;
        buf_free(&a->out);
        buf_free(&a->line);
        buf_free(&a->body);
        free(a);
    }
}

/* Send what waits in `pending`: 1 done or would block, 0 the peer is gone. */
static int flush_to(int fd, buf *pending) {
    size_t off = 0;
    while (off < pending->n) {
        ssize_t w = send(fd, pending->p + off, pending->n - off, MSG_NOSIGNAL);
        if (w > 0) { off += (size_t)w; continue; }
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) break;
        return 0;
    }
    drop(pending, off);
    return 1;
}

/* Bytes for the caller (to_up 0) or for Python (1), never blocking the loop: what the
   socket does not take now goes out when it can. 0: that peer is gone (c is closed). */
static int c_write(client *c, int to_up, const char *p, size_t n) {
    int fd = to_up ? c->up : c->fd;
    buf *pending = to_up ? &c->out_up : &c->out_c;
    if (fd < 0) return 1; /* a hand-off nobody waits for: Python's answer is dropped */
    put(pending, p, n);
    if (!flush_to(fd, pending)) { client_close(c); return 0; }
    c_events(c);
    return 1;
}

/* The caller's connection ends once what waits for it is out. */
static void close_when_flushed(client *c) {
    if (c->fd < 0 || !c->out_c.n) { client_close(c); return; }
    c->closing = 1;
    c->rd_eof = 1;
    if (c->up >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->up, NULL); close(c->up); c->up = -1; }
    c_events(c);
}

static int ensure_upstream(client *c, int for_handoff) {
    /* uvicorn closes idle ones at 5 s (UPSTREAM_REUSE); a hand-off's is never a caller's */
    if (c->up >= 0 && (mono() - c->up_idle_since > UPSTREAM_REUSE || c->up_handoff || for_handoff)) {
        epoll_ctl(ep, EPOLL_CTL_DEL, c->up, NULL);
        close(c->up);
        c->up = -1;
        c->out_up.n = 0;
    }
    if (c->up >= 0) return 1;
    int up = connect_unix(for_handoff ? handoff_path : upstream_path);
    if (up < 0) {
        static const char body[] = "{\"error\":{\"code\":\"unavailable\",\"message\":\"berth's server cannot be reached; try again\"}}";
        char rsp[512];
        int n = snprintf(rsp, sizeof rsp, "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
                         "content-length: %zu\r\nconnection: close\r\n\r\n%s", sizeof body - 1, body);
        fprintf(stderr, "lane: cannot reach berth's server at %s: %s\n", upstream_path, strerror(errno));
        if (c_write(c, 0, rsp, (size_t)n)) close_when_flushed(c);
        return 0;
    }
    c->up = up;
    c->up_handoff = for_handoff;
    c->up_e.kind = K_UP;
    ep_add(up, &c->up_e, EPOLLIN);
    return 1;
}

/* From now on this connection is Python's: what it sent and sends goes to the Unix
   socket as it came, and Python's answers come back the same way (a request whose end
   the lane cannot see: chunked, an upgrade, Expect). */
static void client_pipe(client *c) {
    if (!ensure_upstream(c, 0)) return;
    c->mode = M_PIPE;
    if (c->in.n) {
        if (!c_write(c, 1, c->in.p, c->in.n)) return;
        c->in.n = 0;
    }
    if (c->rd_eof) shutdown(c->up, SHUT_WR);
}

/* One request to Python: `first` (a hand-off the lane writes), else the first `len`
   bytes the caller sent. Its answer goes back as it comes; once it has all passed, the
   connection is the lane's again. */
static void relay_one(client *c, const char *first, size_t first_n, size_t len, int head_req) {
    if (!ensure_upstream(c, first_n > 0)) return; /* `first` is a hand-off: its own socket */
    c->mode = M_RELAY;
    c->rs = RS_HEAD;
    c->rh.n = 0;
    c->head_req = head_req;
    c->r_close = 0;
    if (first_n) {
        if (!c_write(c, 1, first, first_n)) return;
    } else {
        if (!c_write(c, 1, c->in.p, len)) return;
        drop(&c->in, len);
        c_events(c);
    }
}

/* Where the relayed answer ends, from the bytes [p, p+n) that pass: the bytes of this
   answer among them; *done once it has ended (-1: it ends when Python closes). */
static size_t resp_feed(client *c, const char *p, size_t n, int *done) {
    size_t i = 0;
    *done = 0;
    while (i < n && !*done) {
        switch (c->rs) {
        case RS_HEAD: case RS_CHUNK_LINE: case RS_TRAILER: {
            const char *nl = memchr(p + i, '\n', n - i);
            size_t take = nl ? (size_t)(nl - (p + i)) + 1 : n - i;
            put(&c->rh, p + i, take);
            i += take;
            if (!nl) break;
            if (c->rs == RS_CHUNK_LINE) {
                long long size = 0;
                for (size_t k = 0; k < c->rh.n && hexval(c->rh.p[k]) >= 0; k++) {
                    size = size * 16 + hexval(c->rh.p[k]);
                    if (size > (1LL << 40)) break;
                }
                c->rh.n = 0;
                if (size > (1LL << 40)) { c->rs = RS_UNTIL_CLOSE; *done = -1; break; } /* not uvicorn's */
                if (size == 0) c->rs = RS_TRAILER;
                else { c->rs = RS_CHUNK_DATA; c->rleft = size + 2; }
                break;
            }
            if (c->rs == RS_TRAILER) {
                if (c->rh.n <= 2) *done = 1; /* the blank line after the last chunk */
                c->rh.n = 0;
                break;
            }
            /* RS_HEAD: a whole line in; the head ends at a blank one */
            if (c->rh.n < 4 || memcmp(c->rh.p + c->rh.n - 4, "\r\n\r\n", 4) != 0) break;
            int status = c->rh.n > 12 ? atoi(c->rh.p + 9) : 0;
            const char *hs = memchr(c->rh.p, '\n', c->rh.n);
            hdr h[64];
            int nh = hs ? parse_headers(hs + 1, c->rh.p + c->rh.n - 2, h, 64) : -1;
            long long clen = -1;
            int chunked = 0;
            for (int k = 0; k < nh; k++) {
                if (name_is(&h[k], "content-length"))
                    clen = h[k].vlen && h[k].val[0] >= '0' && h[k].val[0] <= '9' ? strtoll(h[k].val, NULL, 10) : -1;
                else if (name_is(&h[k], "transfer-encoding")) chunked = 1;
                else if (name_is(&h[k], "connection") && h[k].vlen == 5 && !strncasecmp(h[k].val, "close", 5)) c->r_close = 1;
            }
            c->rh.n = 0;
            if (nh < 0 || status == 101) { c->rs = RS_UNTIL_CLOSE; *done = -1; break; }
            if (status >= 100 && status < 200) break; /* an interim answer: the real one follows */
            if (c->head_req || status == 204 || status == 304) *done = 1;
            else if (chunked) c->rs = RS_CHUNK_LINE;
            else if (clen >= 0) { c->rleft = clen; c->rs = RS_BODY; if (!clen) *done = 1; }
            else { c->rs = RS_UNTIL_CLOSE; *done = -1; }
            break;
        }
        case RS_BODY: case RS_CHUNK_DATA: {
            size_t take = (size_t)c->rleft < n - i ? (size_t)c->rleft : n - i;
            c->rleft -= (long long)take;
            i += take;
            if (c->rleft == 0) {
                if (c->rs == RS_BODY) *done = 1;
                else c->rs = RS_CHUNK_LINE;
            }
            break;
        }
        default:
            i = n;
            *done = -1;
        }
    }
    return i;
}

static void on_client(client *c, uint32_t events) {
    if (events & EPOLLOUT) {
        int held = c->out_c.n >= HIGH_WATER;
        if (!flush_to(c->fd, &c->out_c)) { client_close(c); return; }
        if (c->closing && !c->out_c.n) { client_close(c); return; }
        c_events(c);
        if (held && c->out_c.n < HIGH_WATER && c->mode == M_LANE && !c->job) client_done(c);
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || c->rd_eof) return;
    size_t cap = (size_t)max_body + MAX_HEAD;
    if (c->mode != M_PIPE && c->in.n >= cap && (events & (EPOLLHUP | EPOLLERR))) { client_close(c); return; }
    long r = c->mode == M_PIPE ? read_some(c->fd, &c->in) : read_upto(c->fd, &c->in, cap);
    c->last_active = mono();
    if (c->mode != M_PIPE && c->in.n >= cap) c_events(c); /* full: not read again until served */
    if (c->mode == M_PIPE) { /* pass it on */
        if (c->in.n) {
            if (!c_write(c, 1, c->in.p, c->in.n)) return;
            c->in.n = 0;
        }
        if (r < 0) { /* the caller is done sending: so is its pipe, Python's answer still comes */
            c->rd_eof = 1;
            shutdown(c->up, SHUT_WR);
            c_events(c);
        }
        return;
    }
    if (r < 0) { client_close(c); return; }
    if (c->mode == M_LANE && !c->job) on_request(c);
}

static void on_up(client *c, uint32_t events) {
    if (events & EPOLLOUT) {
        if (!flush_to(c->up, &c->out_up)) { close_when_flushed(c); return; }
        c_events(c);
    }
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    char tmp[65536];
    while (c->out_c.n < HIGH_WATER) {
        ssize_t r = recv(c->up, tmp, sizeof tmp, 0);
        if (r > 0) {
            size_t n = (size_t)r;
            int done = 0;
            if (c->mode == M_RELAY) n = resp_feed(c, tmp, n, &done);
            else if (c->mode == M_LANE) n = 0; /* nothing was asked: dropped */
            if (n && !c_write(c, 0, tmp, n)) return;
            if (done == 1) { /* the answer has passed: the connection is the lane's again */
                if (c->fd < 0 || c->r_close || c->close_after) { close_when_flushed(c); return; }
                c->mode = M_LANE;
                c->up_idle_since = mono();
                if (c->up_handoff) { /* the caller's next requests go to berth.sock, never here */
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->up, NULL);
                    close(c->up);
                    c->up = -1;
                    c->up_handoff = 0;
                }
                client_done(c);
                return;
            }
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) break;
        if (c->mode == M_LANE) { /* an idle keep-alive Python closed: the caller stays */
            epoll_ctl(ep, EPOLL_CTL_DEL, c->up, NULL);
            close(c->up);
            c->up = -1;
            c->out_up.n = 0;
            return;
        }
        close_when_flushed(c); /* Python closed: so does the caller's connection, once served */
        return;
    }
    c_events(c);
}

/* ------------------------------------------------------------------ HTTP requests */

/* berth's delivery id: a UUID laid out as version 7 (domain/ids.py) */
static void time_ordered_id(char out[37]) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    unsigned long long ms = (unsigned long long)tv.tv_sec * 1000 + (unsigned long long)tv.tv_usec / 1000;
    unsigned char b[16];
    if (getrandom(b + 6, 10, 0) != 10) die("getrandom");
    for (int i = 0; i < 6; i++) b[i] = (unsigned char)(ms >> (40 - 8 * i));
    b[6] = (unsigned char)(0x70 | (b[6] & 0x0f));
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
    sprintf(out, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

/* ------------------------------------------------------------------ canonical JSON reading */

/* In canonical JSON (compact, keys sorted, canon.h's output), the value that starts at p
   ends where this returns. */
static const char *skip_value(const char *p, const char *end) {
    if (p >= end) return end;
    if (*p == '"') {
        for (p++; p < end; p++) {
            if (*p == '\\') { p++; continue; }
            if (*p == '"') return p + 1;
        }
        return end;
    }
    if (*p == '{' || *p == '[') {
        int depth = 0;
        for (; p < end; p++) {
            if (*p == '"') { p = skip_value(p, end) - 1; continue; }
            if (*p == '{' || *p == '[') depth++;
            else if (*p == '}' || *p == ']') { if (--depth == 0) return p + 1; }
        }
        return end;
    }
    while (p < end && *p != ',' && *p != '}' && *p != ']') p++;
    return p;
}

/* The member `key` of the canonical object at [p, end): its value's span, or 0. Keys
   with escapes are not looked for (canon.h relays documents with escaped keys). */
static int member(const char *p, const char *end, const char *key, const char **vs, const char **ve) {
    if (p >= end || *p != '{') return 0;
    size_t klen = strlen(key);
    p++;
    while (p < end && *p == '"') {
        const char *ks = p + 1, *ke = skip_value(p, end) - 1;
        p = ke + 2; /* past the quote and the colon */
        const char *e = skip_value(p, end);
        if ((size_t)(ke - ks) == klen && memcmp(ks, key, klen) == 0) { *vs = p; *ve = e; return 1; }
        p = e;
        if (p < end && *p == ',') p++;
    }
    return 0;
}

/* ------------------------------------------------------------------ the database */

static sqlite3 *rdb, *wdb; /* the loop's reads, the writer's writes */
static sqlite3_stmt *q_cred, *q_ws, *w_accept, *w_settle, *w_renew;

static const char *Q_CRED =
    "SELECT subject FROM credentials WHERE secret_hash = ? AND revoked_at IS NULL AND role = 'caller'";

/* the workspace, if the lane may take a send to it: online, no deploy peer, the caller
   allowed, a queue limit above 0 (the guard of the accept checks the state again) */
static const char *Q_WS =
    "SELECT id, name, agent_url, CASE WHEN json_extract(capabilities, '$.native_session') THEN -1 "
    "ELSE max_concurrency END, run_token_hash, crash_count FROM workspaces WHERE (id = ?1 OR name = ?1) AND state = 'online' "
    "AND peer IS NULL AND NOT (?4 AND runtime = 'docker') AND (?2 = 'operator' OR EXISTS (SELECT 1 FROM json_each(allowed_callers) "
    "WHERE value IN ('*', ?2))) AND COALESCE(json_extract(limits, '$.max_queue'), ?3) > 0";

/* berth's in-flight accept (adapters/sql/sqlite_hot.py) with the lane's stricter guard:
   the workspace still online with no peer, nothing queued at all, a free slot */
static const char *W_ACCEPT =
    "INSERT INTO deliveries (id, workspace_id, caller, message_id, fingerprint, method, request, "
    "headers, status, attempts, forwards, lease_owner, lease_until, not_before, created_at, "
    "first_forwarded_at, updated_at) SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'in_flight', 0, 1, ?9, ?10, "
    "0, ?11, ?11, ?11 WHERE EXISTS (SELECT 1 FROM workspaces WHERE id = ?2 AND state = 'online' AND "
    "peer IS NULL) AND NOT EXISTS (SELECT 1 FROM deliveries INDEXED BY deliveries_queued WHERE "
    "workspace_id = ?2 AND status = 'queued') AND (?12 < 0 OR (SELECT count(*) FROM deliveries "
    "INDEXED BY deliveries_in_flight WHERE workspace_id = ?2 AND status = 'in_flight') < ?12) "
    "ON CONFLICT (workspace_id, caller, message_id) DO NOTHING RETURNING seq";

/* berth's settle of a replied forward (sqlite_deliveries.settle): done, the reply kept */
static const char *W_SETTLE =
    "UPDATE deliveries SET status = 'done', reason = NULL, not_before = 0, lease_owner = NULL, "
    "lease_until = NULL, updated_at = ?1, finished_at = ?1, reply = ?2, reply_status = ?3, "
    "reply_type = ?4 WHERE id = ?5 AND status = 'in_flight' AND lease_owner = ?6 AND forwards = 1 "
    "RETURNING seq";

/* the leases of the deliveries this lane is still working on, and no others: a row it
   gave up on (a hand-off Python never took) runs out and Python's upkeep redelivers it */
static const char *W_RENEW =
    "UPDATE deliveries SET lease_until = ?1 WHERE status = 'in_flight' AND lease_owner = ?2 "
    "AND id IN (SELECT value FROM json_each(?3))";

static void prepare(sqlite3 *db, const char *sql, sqlite3_stmt **s) {
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, s, NULL) != SQLITE_OK) {
        fprintf(stderr, "lane: cannot prepare (%s): %s\n", sqlite3_errmsg(db), sql);
        exit(1);
    }
}

static sqlite3 *open_db(void) {
    sqlite3 *db;
    if (sqlite3_open_v2(db_path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL) != SQLITE_OK) {
        fprintf(stderr, "lane: cannot open %s\n", db_path);
        exit(1);
    }
    sqlite3_busy_timeout(db, 10000);
    char sql[128];
    snprintf(sql, sizeof sql, "PRAGMA synchronous=%s", synchronous);
    sqlite3_exec(db, "PRAGMA journal_mode=WAL", 0, 0, 0);
    sqlite3_exec(db, sql, 0, 0, 0);
    return db;
}

/* ------------------------------------------------------------------ the writer (group commit) */

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
#define MAX_WRITERS 8
/* one queue a writer (one writer on SQLite): on PostgreSQL a workspace's writes go to one
   writer (by the name or id the caller used), so the lane's own flushes never wait for each
   other's claim locks (berth_lane_lock holds a workspace's until the flush commits) */
static pthread_cond_t cvs[MAX_WRITERS];
static job *todo_heads[MAX_WRITERS], *todo_tails[MAX_WRITERS], *done_head, *done_tail;
static int nqueues = 1;
static job renew_op;  /* the lease renewal, queued like a job */
static buf renew_ids; /* its JSON array of ids (rebuilt only while it is not queued) */

static int queue_of(const job *j) {
    if (nqueues == 1 || j == &renew_op) return 0;
    unsigned h = 2166136261u; /* FNV-1a of the workspace as the caller named it */
    for (const char *p = j->ref; *p; p++) h = (h ^ (unsigned char)*p) * 16777619u;
    return (int)(h % (unsigned)nqueues);
}

static void enqueue(job *j, int op) {
    j->op = op;
    j->next_op = NULL;
    int q = queue_of(j);
    pthread_mutex_lock(&mu);
    if (todo_tails[q]) todo_tails[q]->next_op = j; else todo_heads[q] = j;
    todo_tails[q] = j;
    pthread_cond_signal(&cvs[q]);
    pthread_mutex_unlock(&mu);
}

static int step_row(sqlite3_stmt *s) {
    int rc = sqlite3_step(s), got = rc == SQLITE_ROW;
    while (rc == SQLITE_ROW) rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_DONE ? got : -1;
}

static void run_op(job *j) {
    sqlite3_stmt *s;
    j->ok = 0;
    if (j->op == OP_ACCEPT) {
        s = w_accept;
        sqlite3_bind_text(s, 1, j->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 2, j->ws_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 3, j->caller, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 4, j->message_id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 5, j->fingerprint, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 6, j->method, -1, SQLITE_STATIC);
        sqlite3_bind_blob(s, 7, j->request, (int)j->request_len, SQLITE_STATIC);
        sqlite3_bind_text(s, 8, j->headers_json, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 9, owner, -1, SQLITE_STATIC);
        sqlite3_bind_double(s, 10, j->created + lease_s);
        sqlite3_bind_double(s, 11, j->created);
        sqlite3_bind_int64(s, 12, j->capacity);
        j->ok = step_row(s) == 1;
    } else if (j->op == OP_SETTLE) {
        s = w_settle;
        sqlite3_bind_double(s, 1, now_s());
        sqlite3_bind_blob(s, 2, j->reply, (int)j->reply_len, SQLITE_STATIC);
        sqlite3_bind_int(s, 3, j->status);
        sqlite3_bind_text(s, 4, j->ctype, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 5, j->id, -1, SQLITE_STATIC);
        sqlite3_bind_text(s, 6, owner, -1, SQLITE_STATIC);
        j->ok = step_row(s) == 1;
    } else {
        sqlite3_bind_double(w_renew, 1, now_s() + lease_s);
        sqlite3_bind_text(w_renew, 2, owner, -1, SQLITE_STATIC);
        sqlite3_bind_text(w_renew, 3, renew_ids.p, (int)renew_ids.n, SQLITE_STATIC);
        j->ok = step_row(w_renew) >= 0;
    }
}

static void *writer(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (!todo_heads[0]) pthread_cond_wait(&cvs[0], &mu);
        job *batch = todo_heads[0], *last = todo_tails[0];
        todo_heads[0] = todo_tails[0] = NULL;
        pthread_mutex_unlock(&mu);
        int committed = sqlite3_exec(wdb, "BEGIN IMMEDIATE", 0, 0, 0) == SQLITE_OK;
        if (committed) {
            for (job *j = batch; j; j = j->next_op) run_op(j);
            committed = sqlite3_exec(wdb, "COMMIT", 0, 0, 0) == SQLITE_OK;
            if (!committed) {
                fprintf(stderr, "lane: COMMIT failed: %s\n", sqlite3_errmsg(wdb));
                sqlite3_exec(wdb, "ROLLBACK", 0, 0, 0);
            }
        } else {
            fprintf(stderr, "lane: BEGIN failed: %s\n", sqlite3_errmsg(wdb));
        }
        if (!committed)
            for (job *j = batch; j; j = j->next_op) j->ok = 0; /* nothing of it is on disk */
        pthread_mutex_lock(&mu);
        if (done_tail) done_tail->next_op = batch; else done_head = batch;
        done_tail = last;
        pthread_mutex_unlock(&mu);
        uint64_t one = 1;
        if (write(efd, &one, 8) != 8) die("eventfd");
    }
    return NULL;
}

#ifdef LANE_PG
/* ------------------------------------------------------------------ the writer on PostgreSQL */

/* On PostgreSQL every read of the plain case is in the accept itself (berth_lane_write,
   adapters/sql/postgres_lane.py): the credential, the workspace and its rules, the guard,
   under the workspace's claim lock, with the row written in flight. A flush is one
   statement, berth_lane_write, given every write waiting as arrays (one round trip, one
   transaction, one commit, one fsync): the settles, the renewal, the claim locks of every
   workspace its accepts name (in berth's lock order), the accepts. `pg_writers` threads
   each flush on a connection of their own. */
static int pg_writers = 1; /* BERTH_LANE_PG_WRITERS (2 measured slower: smaller flushes, more commits) */
#define PG_BATCH 64 /* jobs a flush takes at most (the rest wait for the next one) */
#define PG_BATCH_BYTES (16L << 20) /* bodies a flush takes at most (sent hex: twice that) */

static const char *P_WRITE =
    "SELECT k, l_ws, l_url, l_cap, l_run, l_crashes, l_caller FROM berth_lane_write($1::text[], "
    "$2::bytea[], $3::integer[], $4::text[], $5::float8, $6, $7::float8, $8::text[], $9::text[], "
    "$10::text[], $11::text[], $12::text[], $13::text[], $14::bytea[], $15::text[], $16::float8[], "
    "$17::float8[], $18, $19::bigint, $20::boolean)";

static const char *pg_expect; /* BERTH_LANE_PG_EXPECT: "<database> <schema>", as berth's pool sees them */
static double last_refusal, last_said = -100;
#define PG_DEADLINE 35.0 /* seconds a flush may take, whatever the server or the network do */

static int pg_say(void) { /* a refusal is said at most once every 10 s while it lasts */
    if (mono() - last_said < 10) return 0;
    last_said = mono();
    return 1;
}

/* Until the socket is readable (or writable too): 1, 0 past the deadline, -1 failed. */
static int pg_wait(PGconn *pc, int for_write, double deadline) {
    for (;;) {
        double left = deadline - mono();
        if (left <= 0) return 0;
        struct pollfd p = {PQsocket(pc), (short)(POLLIN | (for_write ? POLLOUT : 0)), 0};
        int rc = poll(&p, 1, (int)(left * 1000) + 1);
        if (rc > 0) return 1;
        if (rc < 0 && errno != EINTR) return -1;
    }
}

static PGconn *pg_open(void) {
    /* the URL, then: a timeout for connecting, keepalives, and unacknowledged data given up
       after 30 s (a peer or a network that stalls) */
    const char *keys[] = {"dbname", "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
                          "keepalives_count", "tcp_user_timeout", NULL};
    const char *vals[] = {pg_url, "10", "1", "30", "10", "3", "30000", NULL};
    PGconn *pc = PQconnectdbParams(keys, vals, 1);
    if (PQstatus(pc) != CONNECTION_OK) {
        if (pg_say()) fprintf(stderr, "lane: cannot connect to PostgreSQL (its sends go to berth meanwhile): %s", PQerrorMessage(pc));
        last_refusal = mono();
        PQfinish(pc);
        return NULL;
    }
    /* a statement that waits on the server (a lock) gives up as berth's own do (30 s), and
       its sends go to berth; a flush's own deadline covers the rest (pg_flush) */
    PGresult *r = PQexec(pc, "SET application_name = 'berth-lane'; SET statement_timeout = '30s'");
    PQclear(r);
    if (pg_expect) { /* the database and schema berth itself uses, or no write at all */
        r = PQexec(pc, "SELECT current_database() || ' ' || current_schema()");
        int same = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !strcmp(PQgetvalue(r, 0, 0), pg_expect);
        if (!same && pg_say())
            fprintf(stderr, "lane: connected to %s, not berth's %s: writing nothing (its sends go to berth)\n",
                    PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "?", pg_expect);
        PQclear(r);
        if (!same) { last_refusal = mono(); PQfinish(pc); return NULL; }
    }
    r = PQprepare(pc, "write", P_WRITE, 0, NULL);
    int ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok && pg_say()) fprintf(stderr, "lane: cannot prepare its write: %s", PQresultErrorMessage(r));
    PQclear(r);
    if (!ok) { last_refusal = mono(); PQfinish(pc); return NULL; }
    if (PQsetnonblocking(pc, 1) != 0) { last_refusal = mono(); PQfinish(pc); return NULL; }
    return pc;
}

static char *pg_dup(PGresult *r, int row, int col) {
    return PQgetisnull(r, row, col) ? NULL : strdup(PQgetvalue(r, row, col));
}

/* An element of a text-format array literal: quoted, `"` and `\` escaped; NULL as NULL. */
static void arr_add(buf *a, const char *s, size_t n) {
    put(a, a->n > 1 ? ",\"" : "\"", a->n > 1 ? 2 : 1);
    if (!s) { a->n -= 1; puts_(a, "NULL"); return; }
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '"' || s[i] == '\\') put(a, "\\", 1);
        put(a, s + i, 1);
    }
    put(a, "\"", 1);
}

static void arr_str(buf *a, const char *s) { arr_add(a, s, s ? strlen(s) : 0); }

/* A bytea element: its hex form (\x...), the backslash escaped for the array literal. */
static void arr_bytes(buf *a, const char *p, size_t n) {
    static const char hex[] = "0123456789abcdef";
    put(a, a->n > 1 ? ",\"\\\\x" : "\"\\\\x", a->n > 1 ? 5 : 4);
    for (size_t i = 0; i < n; i++) {
        char two[2] = {hex[(unsigned char)p[i] >> 4], hex[(unsigned char)p[i] & 15]};
        put(a, two, 2);
    }
    put(a, "\"", 1);
}

static void arr_num(buf *a, const char *fmt, double v) {
    char t[40];
    snprintf(t, sizeof t, fmt, v);
    if (a->n > 1) put(a, ",", 1);
    puts_(a, t);
}

enum { A_S_ID, A_S_REPLY, A_S_STATUS, A_S_TYPE, A_ID, A_REF, A_CRED, A_MID, A_FP, A_METHOD, A_REQ,
       A_HDR, A_UNTIL, A_NOW, A_N };

/* One flush of `batch` (`n` jobs, each j->ok set): one statement, so one transaction,
   one round trip, one commit (berth_lane_write: the settles, the renewal, then the
   accepts under their workspaces' claim locks). 1 committed, 0 not (nothing of it is on
   disk), -1 not known (the connection failed once the statement was sent: an accept is
   then relayed, so Python answers a replay of a row that was written, or accepts one that
   was not; a settle is handed over, and Python settles it or finds it settled). */
static int pg_flush(PGconn *pc, job **batch, int n) {
    buf a[A_N] = {{0}};
    for (int i = 0; i < A_N; i++) puts_(&a[i], "{");
    job *renew = NULL;
    job *accepts[PG_BATCH], *settles[PG_BATCH];
    int na = 0, ns = 0;
    for (int i = 0; i < n; i++) {
        job *j = batch[i];
        if (j->op == OP_SETTLE) {
            settles[ns++] = j;
            arr_str(&a[A_S_ID], j->id);
            arr_bytes(&a[A_S_REPLY], j->reply ? j->reply : "", j->reply_len);
            arr_num(&a[A_S_STATUS], "%.0f", j->status);
            arr_str(&a[A_S_TYPE], j->ctype);
        } else if (j->op == OP_RENEW) {
            renew = j;
        } else if (j->op == OP_ACCEPT) {
            accepts[na++] = j;
            arr_str(&a[A_ID], j->id);
            arr_str(&a[A_REF], j->ref);
            arr_str(&a[A_CRED], j->cred[0] ? j->cred : NULL);
            arr_str(&a[A_MID], j->message_id);
            arr_str(&a[A_FP], j->fingerprint);
            arr_str(&a[A_METHOD], j->method);
            arr_bytes(&a[A_REQ], j->request, j->request_len);
            arr_str(&a[A_HDR], j->headers_json);
            arr_num(&a[A_UNTIL], "%.6f", j->created + lease_s);
            arr_num(&a[A_NOW], "%.6f", j->created);
        }
    }
    for (int i = 0; i < A_N; i++) put(&a[i], "}", 2); /* with its NUL */
    char now[40], until[40], queue[40];
    snprintf(now, sizeof now, "%.6f", now_s());
    snprintf(until, sizeof until, "%.6f", now_s() + lease_s);
    snprintf(queue, sizeof queue, "%ld", max_queue);
    char *ids = renew ? strndup(renew_ids.p, renew_ids.n) : NULL;
    const char *v[20] = {a[A_S_ID].p, a[A_S_REPLY].p, a[A_S_STATUS].p, a[A_S_TYPE].p, now, ids, until,
                         a[A_ID].p, a[A_REF].p, a[A_CRED].p, a[A_MID].p, a[A_FP].p, a[A_METHOD].p,
                         a[A_REQ].p, a[A_HDR].p, a[A_UNTIL].p, a[A_NOW].p, owner, queue,
                         in_docker ? "true" : "false"};
    int sent = PQsendQueryPrepared(pc, "write", 20, v, NULL, NULL, 0);
    for (int i = 0; i < A_N; i++) buf_free(&a[i]);
    free(ids);
    if (!sent) return PQstatus(pc) == CONNECTION_OK ? 0 : -1;
    /* the connection is non-blocking: sent and answered within PG_DEADLINE, else the
       outcome is unknown (-2: the caller closes the connection) */
    double deadline = mono() + PG_DEADLINE;
    int f;
    while ((f = PQflush(pc)) == 1) {
        if (pg_wait(pc, 1, deadline) <= 0) return -2;
        if (!PQconsumeInput(pc)) return -1;
    }
    if (f < 0) return -1;
    /* Every result to the end: the rows and CommandComplete come before the implicit
       COMMIT, whose error (a deferred constraint, a failed fsync) is a result after them,
       and a connection lost before ReadyForQuery leaves the commit unknown. */
    PGresult *r = NULL, *more;
    int failed = 0;
    for (;;) {
        while (PQisBusy(pc)) {
            if (pg_wait(pc, 0, deadline) <= 0) { PQclear(r); return -2; }
            if (!PQconsumeInput(pc)) break; /* lost: PQgetResult says so */
        }
        if (!(more = PQgetResult(pc))) break;
        if (PQresultStatus(more) == PGRES_TUPLES_OK && !r && !failed) { r = more; continue; }
        if (!failed) fprintf(stderr, "lane: a flush failed: %s", PQresultErrorMessage(more));
        failed = 1;
        PQclear(more);
    }
    if (PQstatus(pc) != CONNECTION_OK) { PQclear(r); return -1; }
    if (failed || !r) { PQclear(r); return 0; } /* rolled back: nothing of it is on disk */
    if (renew) renew->ok = 1;
    for (int row = 0; row < PQntuples(r); row++) { /* k: -n the nth settle done, n the nth accept taken */
        int k = atoi(PQgetvalue(r, row, 0));
        if (k < 0 && -k <= ns) {
            settles[-k - 1]->ok = 1;
        } else if (k > 0 && k <= na) { /* l_ws, l_url, l_cap, l_run, l_crashes, l_caller */
            job *j = accepts[k - 1];
            j->ok = 1;
            snprintf(j->ws_id, sizeof j->ws_id, "%s", PQgetvalue(r, row, 1));
            free(j->url);
            j->url = pg_dup(r, row, 2);
            j->capacity = PQgetisnull(r, row, 3) ? -1 : atoll(PQgetvalue(r, row, 3));
            const char *run = PQgetisnull(r, row, 4) ? "" : PQgetvalue(r, row, 4);
            j->run[0] = 0;
            if (strlen(run) < sizeof j->run && header_safe(run, strlen(run))) strcpy(j->run, run);
            j->crashes = atoll(PQgetvalue(r, row, 5));
            snprintf(j->caller, sizeof j->caller, "%s", PQgetvalue(r, row, 6));
        }
    }
    PQclear(r);
    return 1;
}

static long pg_flushes, pg_jobs; /* said at exit: how much a flush carried */
/* After a flush its writer waits (at most pg_linger seconds) for the loop to have taken
   the results: what they set off (a caller's next send, a settle) then rides the writer's
   next flush instead of waiting for the one after it */
static double pg_linger = 0.0005;
static long flushed_gen, taken_gen;
static pthread_cond_t taken_cv = PTHREAD_COND_INITIALIZER;

static void *pg_writer(void *arg) {
    int q = (int)(intptr_t)arg; /* its queue */
    PGconn *pc = NULL;
    for (;;) {
        job *batch[PG_BATCH];
        int n = 0;
        pthread_mutex_lock(&mu);
        while (!todo_heads[q]) pthread_cond_wait(&cvs[q], &mu);
        size_t bytes = 0; /* a flush's bodies, at most PG_BATCH_BYTES (one job, whatever its size) */
        while (todo_heads[q] && n < PG_BATCH && (n == 0 || bytes < PG_BATCH_BYTES)) { /* the rest: next flush */
            bytes += todo_heads[q]->request_len + todo_heads[q]->reply_len;
            batch[n++] = todo_heads[q];
            todo_heads[q] = todo_heads[q]->next_op;
        }
        if (!todo_heads[q]) todo_tails[q] = NULL;
        pthread_mutex_unlock(&mu);
        for (int i = 0; i < n; i++) batch[i]->ok = 0;
        if (pc && PQstatus(pc) != CONNECTION_OK) { PQfinish(pc); pc = NULL; }
        if (!pc && mono() - last_refusal >= 1.0) pc = pg_open(); /* else relayed at once */
        int committed = pc ? pg_flush(pc, batch, n) : 0;
        if (committed == -2) { /* no answer in time: this connection is done with */
            if (pg_say()) fprintf(stderr, "lane: a flush had no answer in %.0f s: connecting again\n", PG_DEADLINE);
            PQfinish(pc);
            pc = NULL;
            committed = -1;
        }
        __atomic_add_fetch(&pg_flushes, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&pg_jobs, n, __ATOMIC_RELAXED);
        if (committed != 1)
            for (int i = 0; i < n; i++) batch[i]->ok = 0; /* not on disk, or not known to be */
        for (int i = 0; i + 1 < n; i++) batch[i]->next_op = batch[i + 1];
        batch[n - 1]->next_op = NULL;
        pthread_mutex_lock(&mu);
        if (done_tail) done_tail->next_op = batch[0]; else done_head = batch[0];
        done_tail = batch[n - 1];
        long gen = ++flushed_gen;
        pthread_mutex_unlock(&mu);
        uint64_t one = 1;
        if (write(efd, &one, 8) != 8) die("eventfd");
        if (pg_linger > 0) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            long long ns = (long long)until.tv_nsec + (long long)(pg_linger * 1e9);
            until.tv_sec += (time_t)(ns / 1000000000LL);
            until.tv_nsec = (long)(ns % 1000000000LL);
            pthread_mutex_lock(&mu);
            while (taken_gen < gen && pthread_cond_timedwait(&taken_cv, &mu, &until) == 0) {}
            pthread_mutex_unlock(&mu);
        }
    }
    return NULL;
}
#endif

/* ------------------------------------------------------------------ answers */

/* uvicorn's status lines: Python's http.HTTPStatus phrases, "" for any other status */
static const char *reason_of(int status) {
    switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 102: return "Processing";
    case 103: return "Early Hints";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 203: return "Non-Authoritative Information";
    case 204: return "No Content";
    case 205: return "Reset Content";
    case 206: return "Partial Content";
    case 207: return "Multi-Status";
    case 208: return "Already Reported";
    case 226: return "IM Used";
    case 300: return "Multiple Choices";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 305: return "Use Proxy";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 407: return "Proxy Authentication Required";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Request Entity Too Large";
    case 414: return "Request-URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Requested Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 418: return "I'm a Teapot";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Entity";
    case 423: return "Locked";
    case 424: return "Failed Dependency";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    case 506: return "Variant Also Negotiates";
    case 507: return "Insufficient Storage";
    case 508: return "Loop Detected";
    case 510: return "Not Extended";
    case 511: return "Network Authentication Required";
    default: return "";
    }
}

/* The caller's answer as Python's proxy writes it (api/a2a.render under uvicorn). */
static int answer(client *c, int status, const char *ctype, const char *body, size_t n, const job *j) {
    char date[64];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    buf out = {0};
    putf(&out, "HTTP/1.1 %d %s\r\ndate: %s\r\nserver: uvicorn\r\nx-berth-delivery-id: %s\r\n"
               "x-berth-message-id: %s\r\ncontent-length: %zu\r\ncontent-type: %s\r\n",
         status, reason_of(status), date, j->id, j->message_id, n, ctype);
    if (c->close_after) puts_(&out, "connection: close\r\n");
    puts_(&out, "\r\n");
    put(&out, body, n);
    int ok = c_write(c, 0, out.p, out.n);
    buf_free(&out);
    if (!ok) return 0;
    if (c->close_after) { close_when_flushed(c); return 0; }
    return 1;
}

/* An answer of the lane's own, without a delivery (404 for the hand-off route). */
static void answer_plain(client *c, int status, const char *ctype, const char *body, size_t n, size_t clen) {
    char date[64];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    buf out = {0};
    putf(&out, "HTTP/1.1 %d %s\r\ndate: %s\r\nserver: uvicorn\r\ncontent-length: %zu\r\ncontent-type: %s\r\n%s\r\n",
         status, reason_of(status), date, clen, ctype, c->close_after ? "connection: close\r\n" : "");
    put(&out, body, n);
    int ok = c_write(c, 0, out.p, out.n);
    buf_free(&out);
    if (ok) { if (c->close_after) close_when_flushed(c); else client_done(c); }
}

/* ------------------------------------------------------------------ jobs */

static void job_link(job *j) { j->next = jobs; if (jobs) jobs->prev = j; jobs = j; }

static void agent_close(agent *a);

static void job_free(job *j) {
    if (j->prev) j->prev->next = j->next; else jobs = j->next;
    if (j->next) j->next->prev = j->prev;
    if (j->c) j->c->job = NULL;
    if (j->a) { agent_close(j->a); j->a = NULL; }
    free(j->request);
    free(j->headers_json);
    free(j->fwd_headers);
    free(j->url);
    free(j->reply);
    free(j);
}

/* Back to reading requests. Its next one (already buffered, pipelined) is taken after this
   turn of the loop, never from inside an answer: a caller pipelining thousands of requests
   the lane answers itself would otherwise nest a call per request (a stack overflow). */
static void client_done(client *c) {
    if (!c || c->dead) return;
    c->job = NULL;
    /* idle from its answer on, as uvicorn's keep-alive counts: a send answered after more
       than IDLE_CLIENT was closed at the next tick, and the caller's next request reset */
    c->last_active = mono();
    c_events(c);
    if (c->in.n && !c->queued) {
        c->queued = 1;
        c->next_ready = ready;
        ready = c;
    }
}

static void serve_ready(void) { /* one request of each ready caller per turn of the loop */
    client *list = ready;
    ready = NULL;
    while (list) {
        client *c = list;
        list = c->next_ready;
        c->queued = 0;
        if (c->dead || c->mode != M_LANE || c->job) continue;
        if (c->out_c.n >= HIGH_WATER) continue; /* taken up again once its answers are out */
        on_request(c);
    }
}

static void agent_release(agent *a, int reuse);
static void forward(job *j);

/* The delivery goes to Python (docs/fast-lane.md, the hand-off): what came back from the
   agent, or how the forward failed. A caller still waiting gets Python's answer, and its
   connection is Python's from then on. */
static void handoff(job *j, const char *outcome, const char *detail) {
    feed_flush(); /* Python hears of the forward before it is handed the delivery */
    buf req = {0};
    double left = j->c ? j->wait_deadline - mono() : 0;
    if (left < 0) left = 0;
    putf(&req, "POST /v1/lane/handoff/%s HTTP/1.1\r\nhost: berth\r\nx-berth-lane-secret: %s\r\n"
               "x-berth-lane-outcome: %s\r\nx-berth-lane-status: %d\r\nx-berth-lane-wait: %.3f\r\n",
         j->id, secret, outcome, j->status, left);
    if (j->ctype[0]) putf(&req, "content-type: %s\r\n", j->ctype);
    putf(&req, "x-berth-lane-run: %s\r\nx-berth-lane-crashes: %lld\r\n", j->run, j->crashes);
    if (detail) {
        puts_(&req, "x-berth-lane-detail: ");
        for (const char *p = detail; *p; p++) if (*p >= 0x20 && *p < 0x7f) put(&req, p, 1);
        puts_(&req, "\r\n");
    }
    if (!j->c || j->c->close_after) puts_(&req, "connection: close\r\n");
    putf(&req, "content-length: %zu\r\n\r\n", j->reply_len);
    if (j->reply_len) put(&req, j->reply, j->reply_len);
    client *c = j->c;
    if (c) {
        c->job = NULL;
        j->c = NULL;
        if (c->up >= 0) { /* a connection of its own: nothing the caller sent before shares it */
            epoll_ctl(ep, EPOLL_CTL_DEL, c->up, NULL);
            close(c->up);
            c->up = -1;
            c->out_up.n = 0;
        }
        relay_one(c, req.p, req.n, 0, 0); /* Python's answer is the caller's */
    } else {
        /* nobody waits: Python's answer is read and dropped by a connection of its own */
        client *ghost = calloc(1, sizeof *ghost);
        ghost->e.kind = K_CLIENT;
        ghost->fd = -1;
        ghost->up = -1;
        ghost->next = clients;
        if (clients) clients->prev = ghost;
        clients = ghost;
        relay_one(ghost, req.p, req.n, 0, 0);
    }
    buf_free(&req);
    job_free(j);
}

/* ------------------------------------------------------------------ agents */

static void agent_close(agent *a) { /* freed by reap(), as a client */
    if (a->dead) return;
    a->dead = 1;
    a->job = NULL;
    epoll_ctl(ep, EPOLL_CTL_DEL, a->fd, NULL);
    close(a->fd);
    a->next = dead_agents;
    dead_agents = a;
}

static void agent_release(agent *a, int reuse) {
    a->job = NULL;
    if (!reuse || stopping) { agent_close(a); return; }
    a->out.n = 0;
    a->idle_since = mono();
    a->next = idle_agents;
    idle_agents = a;
    ep_mod(a->fd, &a->e, EPOLLIN); /* an idle connection the agent closes is noticed */
}

static agent *agent_take(const char *host, int port) {
    double t = mono();
    for (agent **pp = &idle_agents; *pp;) {
        agent *a = *pp;
        if (t - a->idle_since > IDLE_REUSE) { *pp = a->next; agent_close(a); continue; }
        if (a->port == port && strcmp(a->host, host) == 0) {
            *pp = a->next;
            char b;
            ssize_t r = recv(a->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
            if (r == 0 || r > 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) { agent_close(a); continue; }
            /* nothing unasked waiting on it, and the agent has not closed it: reused */
            return a;
        }
        pp = &a->next;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", port);
    if (getaddrinfo(host, ps, &hints, &res) != 0) return NULL;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int rc = fd < 0 ? -1 : connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (fd < 0 || (rc < 0 && errno != EINPROGRESS)) { if (fd >= 0) close(fd); return NULL; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    agent *a = calloc(1, sizeof *a);
    a->e.kind = K_AGENT;
    a->fd = fd;
    snprintf(a->host, sizeof a->host, "%s", host);
    a->port = port;
    a->connected = rc == 0;
    ep_add(fd, &a->e, EPOLLIN | (a->connected ? 0 : EPOLLOUT));
    return a;
}

/* The forward's bytes go out as the agent takes them (an agent that does not read never
   holds up the loop); its answer is parsed as it comes, each byte once. */
static void agent_flush(agent *a) {
    int ok = flush_to(a->fd, &a->out);
    (void)ok; /* a failed write shows as the answer's failure (EPOLLERR / EOF) */
    ep_mod(a->fd, &a->e, EPOLLIN | (a->out.n ? EPOLLOUT : 0));
}

static void send_request(job *j) {
    agent *a = j->a;
    a->out.n = 0;
    putf(&a->out, "POST %s HTTP/1.1\r\nHost: %s\r\n%sx-berth-caller: %s\r\nContent-Length: %zu\r\n\r\n",
         j->agent_path, j->host_header, j->fwd_headers, j->caller, j->request_len);
    put(&a->out, j->request, j->request_len);
    a->rs = RS_HEAD;
    a->line.n = a->body.n = 0;
    a->got = 0;
    a->status = 0;
    a->keep = 1;
    a->encoded = 0;
    j->ctype[0] = 0;
    agent_flush(a);
}

static void forward(job *j) {
    j->state = J_FORWARDING;
    j->a = agent_take(j->agent_host, j->agent_port);
    if (!j->a) { handoff(j, "unreached", "cannot connect to the agent"); return; }
    j->a->job = j;
    if (j->a->connected) send_request(j);
}

#define MAX_ANSWER (64L << 20) /* an agent's answer larger than this is a failed forward */

/* The agent's answer, fed as it arrives: 1 once it is whole (status, content type, body
   kept in the agent), 0 not yet, -1 malformed. `eof`: the agent closed. */
static int agent_feed(agent *a, job *j, const char *p, size_t n, int eof) {
    size_t i = 0;
    a->got += n;
    while (i < n) {
        if (a->rs == RS_HEAD || a->rs == RS_CHUNK_LINE || a->rs == RS_TRAILER) {
            const char *nl = memchr(p + i, '\n', n - i);
            size_t take = nl ? (size_t)(nl - (p + i)) + 1 : n - i;
            put(&a->line, p + i, take);
            i += take;
            if (a->line.n > MAX_HEAD) return -1;
            if (!nl) break;
            if (a->rs == RS_CHUNK_LINE) {
                long long size = 0;
                size_t k = 0;
                for (; k < a->line.n && hexval(a->line.p[k]) >= 0; k++) {
                    size = size * 16 + hexval(a->line.p[k]);
                    if (size > MAX_ANSWER) return -1;
                }
                if (k == 0) return -1;
                a->line.n = 0;
                if (size == 0) a->rs = RS_TRAILER;
                else { a->rs = RS_CHUNK_DATA; a->left = size + 2; }
                continue;
            }
            if (a->rs == RS_TRAILER) {
                int blank = a->line.n <= 2;
                a->line.n = 0;
                if (blank) return i == n ? 1 : (a->keep = 0, 1);
                continue;
            }
            if (a->line.n < 4 || memcmp(a->line.p + a->line.n - 4, "\r\n\r\n", 4) != 0) continue;
            /* a whole head */
            char *h0 = a->line.p;
            if (a->line.n < 12 || strncmp(h0, "HTTP/1.", 7) != 0) return -1;
            int status = atoi(h0 + 9);
            if (status < 100 || status > 999) return -1;
            const char *hs = memchr(h0, '\n', a->line.n);
            hdr h[64];
            int nh = parse_headers(hs + 1, h0 + a->line.n - 2, h, 64);
            if (nh < 0) return -1;
            long long clen = -1;
            int chunked = 0;
            a->keep = h0[7] != '0';
            for (int k = 0; k < nh; k++) {
                if (name_is(&h[k], "content-length")) {
                    char *e;
                    if (clen >= 0 || !h[k].vlen || h[k].val[0] < '0' || h[k].val[0] > '9') return -1;
                    clen = strtoll(h[k].val, &e, 10);
                    if (e != h[k].val + h[k].vlen || clen < 0 || clen > MAX_ANSWER) return -1;
                } else if (name_is(&h[k], "transfer-encoding")) {
                    /* chunked alone: another coding is one Python's client would decode */
                    if (chunked || h[k].vlen != 7 || strncasecmp(h[k].val, "chunked", 7) != 0) return -1;
                    chunked = 1;
                } else if (name_is(&h[k], "connection")) {
                    if (h[k].vlen == 5 && strncasecmp(h[k].val, "close", 5) == 0) a->keep = 0;
                } else if (name_is(&h[k], "content-encoding")) {
                    a->encoded = !(h[k].vlen == 8 && strncasecmp(h[k].val, "identity", 8) == 0);
                } else if (name_is(&h[k], "content-type")) {
                    if (h[k].vlen >= sizeof j->ctype) return -1;
                    memcpy(j->ctype, h[k].val, h[k].vlen);
                    j->ctype[h[k].vlen] = 0;
                }
            }
            a->line.n = 0;
            if (status < 200) { j->ctype[0] = 0; continue; } /* an interim answer: the real one follows */
            a->status = status;
            if (status == 204 || status == 304) return i == n ? 1 : (a->keep = 0, 1);
            if (chunked && clen >= 0) return -1; /* both: a smuggling shape, refused as h11 does */
            if (chunked) a->rs = RS_CHUNK_LINE;
            else if (clen >= 0) {
                a->rs = RS_BODY;
                a->left = clen;
                if (clen == 0) return i == n ? 1 : (a->keep = 0, 1);
            } else { a->rs = RS_UNTIL_CLOSE; a->keep = 0; }
            continue;
        }
        if (a->rs == RS_BODY || a->rs == RS_CHUNK_DATA) {
            size_t take = (size_t)a->left < n - i ? (size_t)a->left : n - i;
            size_t data = take;
            if (a->rs == RS_CHUNK_DATA && (long long)take > a->left - 2) data = a->left - 2 > 0 ? (size_t)(a->left - 2) : 0;
            if (data > take) data = take;
            if (a->rs == RS_CHUNK_DATA) /* the CRLF after a chunk's data, byte by byte */
                for (size_t k = data; k < take; k++) {
                    long long pos = a->left - (long long)k; /* 2: the CR, 1: the LF */
                    if (p[i + k] != (pos == 2 ? '\r' : '\n')) return -1;
                }
            put(&a->body, p + i, data);
            if ((long)a->body.n > MAX_ANSWER) return -1;
            a->left -= (long long)take;
            i += take;
            if (a->left == 0) {
                if (a->rs == RS_BODY) return i == n ? 1 : (a->keep = 0, 1);
                a->rs = RS_CHUNK_LINE;
            }
            continue;
        }
        /* RS_UNTIL_CLOSE */
        put(&a->body, p + i, n - i);
        if ((long)a->body.n > MAX_ANSWER) return -1;
        i = n;
    }
    if (eof) return a->rs == RS_UNTIL_CLOSE && a->status ? 1 : -1;
    return 0;
}

/* services/replies.classify: a JSON-RPC answer (a result, or an error that is not a
   DRAINING refusal) is the agent's reply; anything else is Python's to judge. */
static int replied(const job *j) {
    const char *b = j->reply;
    size_t n = j->reply_len;
    if (!memmem(b, n, "\"jsonrpc\"", 9)) return 0;
    int result = memmem(b, n, "\"result\"", 8) != NULL, error = memmem(b, n, "\"error\"", 7) != NULL;
    if (!result && !error) return 0;
    if (error && memmem(b, n, "DRAINING", 8)) return 0;
    return 1;
}

static void on_agent(agent *a, uint32_t events) {
    job *j = a->job;
    if (!j) { agent *x; /* idle: the agent closed it, or sent something unasked */
        for (agent **pp = &idle_agents; (x = *pp); pp = &x->next)
            if (x == a) { *pp = a->next; break; }
        agent_close(a);
        return;
    }
    if (!a->connected) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(a->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (events & (EPOLLERR | EPOLLHUP))) {
            agent_close(a);
            j->a = NULL;
            handoff(j, "unreached", "cannot connect to the agent");
            return;
        }
        a->connected = 1;
        send_request(j);
        return;
    }
    if (events & EPOLLOUT) agent_flush(a);
    if (!(events & (EPOLLIN | EPOLLHUP | EPOLLERR))) return;
    char tmp[65536];
    int got = 0;
    for (;;) {
        ssize_t r = recv(a->fd, tmp, sizeof tmp, 0);
        if (r > 0) {
            got = agent_feed(a, j, tmp, (size_t)r, 0);
            if (got) break;
            continue;
        }
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
        got = agent_feed(a, j, tmp, 0, 1);
        if (got == 1) a->keep = 0;
        break;
    }
    if (got < 0) { /* as Python's client says it: a failed forward (no second try here) */
        agent_close(a);
        j->a = NULL;
        handoff(j, "transport", "the agent's answer was cut or malformed");
        return;
    }
    if (a->encoded) { /* Python's client inflates it; the lane hands it over as a failed forward */
        agent_close(a);
        j->a = NULL;
        handoff(j, "transport", "the agent's answer is content-encoded");
        return;
    }
    j->status = a->status;
    free(j->reply);
    j->reply_len = a->body.n;
    j->reply = malloc(a->body.n + 1);
    if (a->body.n) memcpy(j->reply, a->body.p, a->body.n);
    a->body.n = 0;
    agent_release(a, a->keep && !a->out.n);
    j->a = NULL;
    j->fwd_s = mono() - j->forwarded_at;
    if (!replied(j)) { handoff(j, "reply", NULL); return; }
    /* a content type the lane writes as text into PostgreSQL's statement: printable ASCII
       (a byte that is not UTF-8 there would fail every write of its flush); else Python's */
    for (const char *p = j->ctype; pg_url && *p; p++)
        if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e) { handoff(j, "reply", NULL); return; }
    j->state = J_SETTLING;
    enqueue(j, OP_SETTLE);
}

/* ------------------------------------------------------------------ a request */

/* URL of a loopback agent: host, port, path, Host header; 0 if the lane does not forward to it */
static int agent_target(const char *url, job *j) {
    const char *p;
    if (strncmp(url, "http://", 7) != 0) return 0;
    p = url + 7;
    const char *host_end;
    char host[64];
    if (*p == '[') {
        host_end = strchr(p, ']');
        if (!host_end || host_end - p - 1 >= (long)sizeof host) return 0;
        memcpy(host, p + 1, (size_t)(host_end - p - 1));
        host[host_end - p - 1] = 0;
        host_end++;
    } else {
        host_end = p + strcspn(p, ":/?#");
        if (host_end - p >= (long)sizeof host) return 0;
        memcpy(host, p, (size_t)(host_end - p));
        host[host_end - p] = 0;
    }
    if (strcmp(host, "127.0.0.1") && strcmp(host, "localhost") && strcmp(host, "::1")) return 0;
    if (*host_end != ':') return 0;
    char *pe;
    long port = strtol(host_end + 1, &pe, 10);
    if (port <= 0 || port > 65535) return 0;
    const char *path = *pe ? pe : "/";
    if (*path != '/' || strlen(path) >= sizeof j->agent_path || strpbrk(path, " \r\n#\"\\")) return 0;
    snprintf(j->agent_host, sizeof j->agent_host, "%s", host);
    j->agent_port = (int)port;
    snprintf(j->agent_path, sizeof j->agent_path, "%s", path);
    snprintf(j->host_header, sizeof j->host_header, "%.*s", (int)(pe - p), p);
    return 1;
}

/* services/envelope.wait_seconds for the values the lane takes: digits, maybe a fraction,
   from 0 to 86400; -1 for anything else (Python answers it, an error included). */
static double wait_value(const char *v, size_t n) {
    size_t i = 0, digits = 0;
    while (i < n && v[i] >= '0' && v[i] <= '9') { i++; digits++; }
    if (!digits || digits > 5) return -1;
    if (i < n && v[i] == '.') {
        size_t f = ++i;
        while (i < n && v[i] >= '0' && v[i] <= '9') i++;
        if (i == f || i - f > 6) return -1;
    }
    if (i != n) return -1;
    char tmp[16];
    memcpy(tmp, v, n);
    tmp[n] = 0;
    double w = atof(tmp);
    return w <= 86400 ? w : -1;
}

static const char *FORWARDED[] = {"a2a-version", "a2a-extensions", "x-a2a-extensions", "content-type"};

/* The whole request is in c->in. Take it (a job, its accept queued), or relay it. */
static void on_request(client *c) {
    int why = 0;
    if (c->mode != M_LANE || c->job || !c->in.n) return;
    char *p = c->in.p;
    size_t n = c->in.n;
    char *end = n >= 4 ? memmem(p, n, "\r\n\r\n", 4) : NULL;
    if (!end) { if (n > MAX_HEAD) client_pipe(c); return; }
    size_t head = (size_t)(end - p) + 4;
    char *eol = memmem(p, head, "\r\n", 2);
    /* the request's framing: where it ends; a pipe to Python when the lane cannot tell */
    size_t req_len;
    int head_req = n >= 5 && !memcmp(p, "HEAD ", 5);
    if (head > MAX_HEAD) { client_pipe(c); return; } /* past one read-ahead: Python's to read */
    {
        hdr fh[64];
        int fn = parse_headers(eol + 2, end + 2, fh, 64), seen = 0;
        long long fl = 0;
        if (fn < 0 || eol - p < 9 || memcmp(eol - 9, " HTTP/1.1", 9) != 0) { client_pipe(c); return; }
        for (int i = 0; i < fn; i++) {
            if (name_is(&fh[i], "transfer-encoding") || name_is(&fh[i], "upgrade") || name_is(&fh[i], "expect")) {
                client_pipe(c);
                return;
            }
            if (name_is(&fh[i], "connection") && fh[i].vlen == 5 && !strncasecmp(fh[i].val, "close", 5))
                c->close_after = 1;
            if (name_is(&fh[i], "content-length")) {
                char *e;
                if (!fh[i].vlen || fh[i].val[0] < '0' || fh[i].val[0] > '9') { client_pipe(c); return; }
                fl = strtoll(fh[i].val, &e, 10);
                if (seen++ || fh[i].vlen == 0 || e != fh[i].val + fh[i].vlen || fl < 0) { client_pipe(c); return; }
            }
        }
        if (fl > max_body) { client_pipe(c); return; }
        req_len = head + (size_t)fl;
        if (n < req_len) return; /* the body is still coming */
    }
    {   /* the hand-off route is the lane's alone: from outside, an unknown route */
        const char *sp = memchr(p, ' ', (size_t)(eol - p));
        if (sp && eol - sp > 10 && !memcmp(sp + 1, "/v1/lane/", 9)) {
            drop(&c->in, req_len);
            static const char nf[] = "{\"error\":{\"code\":\"not_found\",\"message\":\"Not Found\"}}";
            answer_plain(c, 404, "application/json", head_req ? "" : nf, head_req ? 0 : sizeof nf - 1,
                         sizeof nf - 1);
            return;
        }
    }
    /* the request line: POST /v1/workspaces/<ref>/a2a[/] HTTP/1.1 */
    static const char pre[] = "POST /v1/workspaces/";
    char ref[128];
    if (stopping || (size_t)(eol - p) < sizeof pre || memcmp(p, pre, sizeof pre - 1) != 0) { why = __LINE__; goto relay; }
    {
        const char *r = p + sizeof pre - 1, *slash = memchr(r, '/', (size_t)(eol - r));
        if (!slash || slash == r || slash - r >= (long)sizeof ref) { why = __LINE__; goto relay; }
        for (const char *q = r; q < slash; q++)
            if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '-' || *q == '_' || *q == '.')) { why = __LINE__; goto relay; }
        memcpy(ref, r, (size_t)(slash - r));
        ref[slash - r] = 0;
        size_t rest = (size_t)(eol - slash);
        if (!((rest == 13 && memcmp(slash, "/a2a HTTP/1.1", 13) == 0) || (rest == 14 && memcmp(slash, "/a2a/ HTTP/1.1", 14) == 0))) { why = __LINE__; goto relay; }
    }
    hdr h[64];
    int nh = parse_headers(eol + 2, end + 2, h, 64);
    if (nh < 0) { why = __LINE__; goto relay; }
    long clen = -1;
    double wait = -1;
    const hdr *auth = NULL, *fwd[4] = {0};
    int close_after = 0;
    for (int i = 0; i < nh; i++) {
        if (name_is(&h[i], "content-length")) {
            if (clen >= 0 || h[i].vlen == 0 || h[i].vlen > 12) { why = __LINE__; goto relay; }
            clen = 0;
            for (size_t k = 0; k < h[i].vlen; k++) {
                if (h[i].val[k] < '0' || h[i].val[k] > '9') { why = __LINE__; goto relay; }
                clen = clen * 10 + (h[i].val[k] - '0');
            }
        } else if (name_is(&h[i], "authorization")) {
            if (auth) { why = __LINE__; goto relay; }
            auth = &h[i];
        } else if (name_is(&h[i], "connection")) {
            if (h[i].vlen == 5 && strncasecmp(h[i].val, "close", 5) == 0) close_after = 1;
            else if (!(h[i].vlen == 10 && strncasecmp(h[i].val, "keep-alive", 10) == 0)) { why = __LINE__; goto relay; }
        } else if (name_is(&h[i], "transfer-encoding") || name_is(&h[i], "expect") || name_is(&h[i], "upgrade")) {
            { why = __LINE__; goto relay; }
        } else if (name_is(&h[i], "x-berth-wait")) {
            if (wait >= 0 || (wait = wait_value(h[i].val, h[i].vlen)) < 0) { why = __LINE__; goto relay; }
        } else if (h[i].nlen > 8 && strncasecmp(h[i].name, "x-berth-", 8) == 0 && !name_is(&h[i], "x-berth-caller")) {
            { why = __LINE__; goto relay; } /* X-Berth-Wait, X-Berth-Ttl and whatever berth reads next */
        } else {
            for (int k = 0; k < 4; k++)
                if (name_is(&h[i], FORWARDED[k])) {
                    if (fwd[k] || !plain_value(h[i].val, h[i].vlen)) { why = __LINE__; goto relay; }
                    fwd[k] = &h[i];
                }
        }
    }
    if (clen < 0 || clen > max_body || !auth) { why = __LINE__; goto relay; }
    if (n < head + (size_t)clen) return; /* the body is still coming */
    const char *body = p + head;

    /* who calls */
    if (auth->vlen < 8 || strncasecmp(auth->val, "bearer ", 7) != 0) { why = __LINE__; goto relay; }
    const char *tok = auth->val + 7;
    size_t tlen = auth->vlen - 7;
    while (tlen && *tok == ' ') { tok++; tlen--; }
    if (!tlen) { why = __LINE__; goto relay; }
    unsigned char tsha[32];
    SHA256((const unsigned char *)tok, tlen, tsha);
    char caller[300], cred_hex[65] = "";
    if (have_admin && CRYPTO_memcmp(tsha, admin_sha, 32) == 0) {
        strcpy(caller, "operator");
    } else if (pg_url) { /* the accept reads it, in the transaction that writes the row */
        for (int i = 0; i < 32; i++) sprintf(cred_hex + 2 * i, "%02x", tsha[i]);
        caller[0] = 0;
    } else {
        char hex[65];
        for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", tsha[i]);
        sqlite3_bind_text(q_cred, 1, hex, 64, SQLITE_TRANSIENT);
        int rc = sqlite3_step(q_cred);
        int found = rc == SQLITE_ROW && sqlite3_column_bytes(q_cred, 0) < (int)sizeof caller;
        if (found) snprintf(caller, sizeof caller, "%s", (const char *)sqlite3_column_text(q_cred, 0));
        sqlite3_reset(q_cred);
        if (!found || !plain_value(caller, strlen(caller))) { why = __LINE__; goto relay; }
    }

    /* the body: a strict parse, berth's canonical form; its fields read from that */
    cbuf canon = {0};
    if (canon_doc(body, (size_t)clen, &canon) != 0) { free(canon.p); { why = __LINE__; goto relay; } }
    const char *ce = canon.p + canon.n, *vs, *ve, *ms, *me, *is, *ie;
    int plain = canon.n && canon.p[0] == '{';
    /* only jsonrpc, id, method, params */
    if (plain) {
        const char *q = canon.p + 1;
        while (q < ce && *q == '"') {
            const char *ks = q + 1, *ke = skip_value(q, ce) - 1;
            size_t kl = (size_t)(ke - ks);
            if (!((kl == 2 && !memcmp(ks, "id", 2)) || (kl == 7 && !memcmp(ks, "jsonrpc", 7)) ||
                  (kl == 6 && !memcmp(ks, "method", 6)) || (kl == 6 && !memcmp(ks, "params", 6)))) { plain = 0; break; }
            q = skip_value(ke + 2, ce);
            if (q < ce && *q == ',') q++;
        }
    }
    plain = plain && member(canon.p, ce, "jsonrpc", &vs, &ve) && ve - vs == 5 && !memcmp(vs, "\"2.0\"", 5);
    /* the method as the caller spelt it (A2A 0.3 or 1.0): berth's record keeps it */
    const char *method = NULL;
    if (plain && member(canon.p, ce, "method", &vs, &ve)) {
        if (ve - vs == 14 && !memcmp(vs, "\"message/send\"", 14)) method = "message/send";
        else if (ve - vs == 13 && !memcmp(vs, "\"SendMessage\"", 13)) method = "SendMessage";
    }
    plain = plain && method;
    if (plain && member(canon.p, ce, "id", &is, &ie)) /* a string or an integer */
        plain = *is == '"' || *is == '-' || (*is >= '0' && *is <= '9');
    else plain = 0;
    const char *ps = NULL, *pe = NULL;
    plain = plain && member(canon.p, ce, "params", &ps, &pe) && *ps == '{' &&
            member(ps, pe, "message", &ms, &me) && *ms == '{' && member(ms, me, "messageId", &vs, &ve) &&
            *vs == '"' && ve - vs >= 3 && ve - vs <= 258 && header_safe(vs + 1, (size_t)(ve - vs - 2));
    if (!plain) { free(canon.p); { why = __LINE__; goto relay; } }
    char message_id[257], fingerprint[65];
    memcpy(message_id, vs + 1, (size_t)(ve - vs - 2));
    message_id[ve - vs - 2] = 0;
    sha_hex(ps, (size_t)(pe - ps), fingerprint);
    free(canon.p);

    /* the workspace */
    job *j = NULL;
    if (pg_url) { /* read by the accept (berth_lane_write), with every other rule */
        j = calloc(1, sizeof *j);
        snprintf(j->ref, sizeof j->ref, "%s", ref);
        memcpy(j->cred, cred_hex, sizeof j->cred);
        j->capacity = -1;
        goto take;
    }
    sqlite3_bind_text(q_ws, 1, ref, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(q_ws, 2, caller, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(q_ws, 3, max_queue);
    sqlite3_bind_int(q_ws, 4, in_docker);
    if (sqlite3_step(q_ws) == SQLITE_ROW) {
        const char *url = (const char *)sqlite3_column_text(q_ws, 2);
        j = calloc(1, sizeof *j);
        if (!url || sqlite3_column_bytes(q_ws, 0) >= (int)sizeof j->ws_id ||
            !agent_target(url, j)) {
            free(j);
            j = NULL;
        } else {
            snprintf(j->ws_id, sizeof j->ws_id, "%s", (const char *)sqlite3_column_text(q_ws, 0));
            j->capacity = sqlite3_column_int64(q_ws, 3);
            const char *run = (const char *)sqlite3_column_text(q_ws, 4);
            if (run && strlen(run) < sizeof j->run && header_safe(run, strlen(run))) strcpy(j->run, run);
            j->crashes = sqlite3_column_int64(q_ws, 5);
        }
    }
    sqlite3_reset(q_ws);
    if (!j) { why = __LINE__; goto relay; }

take:
    /* the job: berth's row, the forward's headers */
    time_ordered_id(j->id);
    snprintf(j->caller, sizeof j->caller, "%s", caller);
    snprintf(j->message_id, sizeof j->message_id, "%s", message_id);
    snprintf(j->fingerprint, sizeof j->fingerprint, "%s", fingerprint);
    j->method = method;
    j->request = malloc((size_t)clen + 1);
    memcpy(j->request, body, (size_t)clen);
    j->request_len = (size_t)clen;
    buf hj = {0}, fh = {0};
    puts_(&hj, "{");
    int first = 1;
    for (int i = 0; i < nh; i++) /* the kept headers in the caller's order, as Python keeps them */
        for (int k = 0; k < 4; k++)
            if (fwd[k] == &h[i]) {
                putf(&hj, "%s\"%s\":\"%.*s\"", first ? "" : ",", FORWARDED[k], (int)h[i].vlen, h[i].val);
                first = 0;
            }
    if (pg_url) puts_(&hj, first ? "" : ","); /* the accept ends it with the caller it read */
    else putf(&hj, "%s\"x-berth-caller\":\"%s\"}", first ? "" : ",", caller);
    put(&hj, "", 1);
    j->headers_json = hj.p;
    if (!fwd[3]) puts_(&fh, "content-type: application/json\r\n");
    for (int i = 0; i < nh; i++)
        for (int k = 0; k < 4; k++)
            if (fwd[k] == &h[i]) putf(&fh, "%s: %.*s\r\n", FORWARDED[k], (int)h[i].vlen, h[i].val);
    put(&fh, "", 1); /* x-berth-caller is added as the forward is written (send_request) */
    j->fwd_headers = fh.p;
    j->created = now_s();
    j->wait_deadline = mono() + (wait >= 0 ? wait : wait_s);
    j->wait0 = wait == 0;
    j->state = J_ACCEPTING;
    j->c = c;
    c->job = j;
    c->close_after = close_after;
    j->req_len = req_len; /* stays in c->in until the accept is on disk (relayed if not taken) */
    job_link(j);
    enqueue(j, OP_ACCEPT);
    return;
relay:
    if (debug) fprintf(stderr, "lane: relayed (line %d)\n", why);
    relay_one(c, NULL, 0, req_len, head_req);
}

/* 202 with the body Python writes (proxy._accepted); the caller is done with this send. */
static void answer_accepted(job *j) {
    client *c = j->c;
    char b[256];
    int bn = snprintf(b, sizeof b, "{\"delivery_id\": \"%s\", \"status\": \"in_flight\", \"status_url\": \"/v1/deliveries/%s\"}", j->id, j->id);
    j->c = NULL;
    c->job = NULL;
    if (answer(c, 202, "application/json", b, (size_t)bn, j)) client_done(c);
}

/* ------------------------------------------------------------------ writes done */

static void feed_str(const char *k, const char *v) { putf(&feed, ",\"%s\":\"%s\"", k, v); }

#ifdef LANE_LOG_BENCH
/* ------------------------------------------------------------------ the log alone (a bench build) */

/* bench/delivery_log.py's `proxy` shape through this lane's own writers, with no HTTP and
   no agent: built only with -DLANE_LOG_BENCH (never by berth). BERTH_LANE_LOG_BENCH is
   "<producers> <seconds> <workspace> ...": each producer accepts its next message (the
   operator's, to the workspaces in turn) as soon as its last accept is on disk; a taken
   message is forwarded at once to an agent that answers at once (nothing is sent), so its
   settle is queued with the producer's next accept. At the end, one JSON line on stderr. */
static int bench_producers, bench_nrefs, bench_stopping;
static char **bench_refs;
static double bench_until, bench_t0;
static long bench_seq, bench_accepted, bench_refused, bench_settled, bench_lat_n;
static double *bench_lat;
static const char BENCH_BODY[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"SendMessage\",\"params\":"
                                 "{\"message\":{\"role\":\"ROLE_USER\",\"messageId\":\"m\",\"parts\":[{\"text\":\"hi\"}]}}}";
static const char BENCH_REPLY[] = "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"message\":{\"role\":\"ROLE_AGENT\","
                                  "\"messageId\":\"r\",\"parts\":[{\"text\":\"hi\"}]}}}";

static void bench_next(int p) {
    if (mono() >= bench_until) { bench_stopping = 1; return; }
    job *j = calloc(1, sizeof *j);
    j->bench_p = p;
    snprintf(j->ref, sizeof j->ref, "%s", bench_refs[bench_seq % bench_nrefs]);
    time_ordered_id(j->id);
    snprintf(j->message_id, sizeof j->message_id, "b-%d-%ld-%s", p, bench_seq++, j->id);
    memset(j->fingerprint, 'f', 64);
    j->method = "SendMessage";
    j->request = malloc(sizeof BENCH_BODY);
    memcpy(j->request, BENCH_BODY, sizeof BENCH_BODY);
    j->request_len = sizeof BENCH_BODY - 1;
    j->headers_json = strdup("{\"content-type\":\"application/json\",");
    j->capacity = -1;
    j->created = now_s();
    j->forwarded_at = mono();
    j->state = J_ACCEPTING;
    job_link(j);
    enqueue(j, OP_ACCEPT);
}

/* A write of the bench committed: 1 if the job is the bench's (handled here). */
static int bench_done(job *j) {
    if (!bench_producers) return 0;
    if (j->op == OP_ACCEPT) {
        int p = j->bench_p;
        if (!j->ok) { bench_refused++; job_free(j); bench_next(p); return 1; }
        bench_accepted++;
        if (bench_lat_n < 4000000) bench_lat[bench_lat_n++] = mono() - j->forwarded_at;
        j->status = 200;
        snprintf(j->ctype, sizeof j->ctype, "application/json");
        j->reply = malloc(sizeof BENCH_REPLY);
        memcpy(j->reply, BENCH_REPLY, sizeof BENCH_REPLY);
        j->reply_len = sizeof BENCH_REPLY - 1;
        j->state = J_SETTLING;
        enqueue(j, OP_SETTLE);
        bench_next(p);
    } else if (j->op == OP_SETTLE) {
        if (j->ok) bench_settled++;
        job_free(j);
    }
    return 1;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void bench_end(void) {
    if (!bench_producers || !bench_stopping || jobs) return;
    double secs = mono() - bench_t0;
    qsort(bench_lat, (size_t)bench_lat_n, sizeof *bench_lat, cmp_double);
    double p50 = bench_lat_n ? bench_lat[bench_lat_n / 2] : 0, p99 = bench_lat_n ? bench_lat[bench_lat_n * 99 / 100] : 0;
    fprintf(stderr, "{\"accepted\": %ld, \"refused\": %ld, \"settled\": %ld, \"seconds\": %.6f, "
                    "\"accept_p50_ms\": %.3f, \"accept_p99_ms\": %.3f, \"flushes\": %ld, \"writes\": %ld}\n",
            bench_accepted, bench_refused, bench_settled, secs, p50 * 1e3, p99 * 1e3, pg_flushes, pg_jobs);
    exit(0);
}

static void bench_start(const char *spec) {
    char *copy = strdup(spec), *save = NULL;
    double seconds = 5;
    char *tok = strtok_r(copy, " ", &save);
    bench_producers = tok ? atoi(tok) : 8;
    tok = strtok_r(NULL, " ", &save);
    if (tok) seconds = atof(tok);
    bench_refs = calloc(256, sizeof *bench_refs);
    while ((tok = strtok_r(NULL, " ", &save)) && bench_nrefs < 256) bench_refs[bench_nrefs++] = tok;
    if (bench_producers < 1 || !bench_nrefs) { fprintf(stderr, "lane: BERTH_LANE_LOG_BENCH: producers seconds refs...\n"); exit(2); }
    bench_lat = malloc(4000000 * sizeof *bench_lat);
    bench_t0 = mono();
    bench_until = bench_t0 + seconds;
    for (int p = 0; p < bench_producers; p++) bench_next(p);
}
#else
static int bench_done(job *j) { (void)j; return 0; }
static void bench_end(void) {}
#endif

static void on_committed(void) {
    uint64_t n;
    if (read(efd, &n, 8) != 8) return;
    pthread_mutex_lock(&mu);
    job *j = done_head;
    done_head = done_tail = NULL;
#ifdef LANE_PG
    long gen = flushed_gen;
#endif
    pthread_mutex_unlock(&mu);
    /* the feed: what this commit wrote, for Python (sent within FEED_DELAY, batched) */
    for (job *x = j; x; x = x->next_op) {
        if (x->op == OP_ACCEPT && x->ok) {
            puts_(&feed, "{\"e\":\"f\"");
            feed_str("id", x->id); feed_str("ws", x->ws_id); feed_str("mid", x->message_id); feed_str("caller", x->caller);
            putf(&feed, ",\"created\":%.6f}\n", x->created);
        } else if (x->op == OP_SETTLE && x->ok) {
            puts_(&feed, "{\"e\":\"d\"");
            feed_str("id", x->id); feed_str("ws", x->ws_id); feed_str("mid", x->message_id);
            putf(&feed, ",\"created\":%.6f,\"finished\":%.6f,\"fwd\":%.6f}\n", x->created, now_s(), x->fwd_s);
        }
    }
    if (feed.n && !feed_due) feed_due = mono() + FEED_DELAY;
    while (j) {
        job *next = j->next_op;
        if (j == &renew_op) { renew_op.state = 0; j = next; continue; }
        if (bench_done(j)) { j = next; continue; }
        if (j->op == OP_ACCEPT) {
            client *c = j->c;
            size_t j_req_len = j->req_len;
            if (!j->ok) { /* not taken (or not written): nothing is on disk, Python decides */
                j->c = NULL;
                job_free(j);
                if (c) { c->job = NULL; relay_one(c, NULL, 0, j_req_len, 0); } /* the request, as it came */
            } else {
                if (c) { drop(&c->in, j->req_len); c_events(c); }
                j->forwarded_at = mono();
                j->forward_deadline = j->forwarded_at + forward_timeout;
                if (c && j->wait0) answer_accepted(j); /* Python's answer to X-Berth-Wait: 0 */
                if (pg_url && !(j->url && agent_target(j->url, j)))
                    /* berth_lane_write's URL test is a little wider than agent_target's:
                       Python forwards it (never taken: the agent was not reached) */
                    handoff(j, "unreached", "an agent URL the lane does not forward to");
                else forward(j);
            }
        } else if (j->op == OP_SETTLE) {
            if (!j->ok) handoff(j, "reply", NULL); /* not settled here: Python settles or waits */
            else {
                client *c = j->c;
                if (c) {
                    c->job = NULL;
                    j->c = NULL;
                    char ct[300];
                    snprintf(ct, sizeof ct, "%s", j->ctype[0] ? j->ctype : "application/json");
                    if (!strncasecmp(ct, "text/event-stream", 17)) strcpy(ct, "application/json");
                    else if (!strncasecmp(ct, "text/", 5) && !strcasestr(ct, "charset="))
                        strcat(ct, "; charset=utf-8"); /* as Starlette's Response writes a text type */
                    int alive = answer(c, j->status, ct, j->reply, j->reply_len, j);
                    job_free(j);
                    if (alive) client_done(c);
                } else {
                    job_free(j);
                }
            }
        }
        j = next;
    }
#ifdef LANE_PG
    pthread_mutex_lock(&mu); /* what these set off is queued: the writers may flush it */
    if (gen > taken_gen) taken_gen = gen;
    pthread_cond_broadcast(&taken_cv);
    pthread_mutex_unlock(&mu);
#endif
}

/* ------------------------------------------------------------------ timers, stop */

static double last_renew;

static void on_tick(void) {
    uint64_t n;
    if (read(tfd, &n, 8) != 8) return;
    double t = mono();
    for (job *j = jobs, *next; j; j = next) {
        next = j->next;
        if (j->state != J_FORWARDING) continue;
        if (j->c && t > j->wait_deadline) answer_accepted(j); /* as Python answers a wait run out */
        if (t > j->forward_deadline && j->a) {
            agent_release(j->a, 0);
            j->a = NULL;
            handoff(j, "transport", "TimeoutError: no answer within the forward timeout");
        }
    }
    if (t - last_renew > lease_s / 3 && renew_op.state == 0) {
        last_renew = t;
        renew_ids.n = 0;
        puts_(&renew_ids, "[");
        for (job *j = jobs; j; j = j->next)
            if (j->state == J_FORWARDING || j->state == J_SETTLING)
                putf(&renew_ids, "%s\"%s\"", renew_ids.n > 1 ? "," : "", j->id);
        puts_(&renew_ids, "]");
        if (renew_ids.n > 2) {
            renew_op.state = 1;
            enqueue(&renew_op, OP_RENEW);
        }
    }
    for (client *c = clients, *next; c; c = next) { /* idle callers: closed at 5 s, as uvicorn */
        next = c->next;
        if (c->fd >= 0 && c->mode == M_LANE && !c->job && !c->out_c.n && t - c->last_active > IDLE_CLIENT)
            client_close(c);
    }
    int relaying = 0; /* a caller waiting on Python (Python finishes what it started) */
    for (client *c = clients; c && !relaying; c = c->next)
        relaying = c->mode != M_LANE || c->out_c.n;
    if (stopping && ((!jobs && !relaying) || t > stop_deadline)) {
#ifdef LANE_PG
        if (pg_url)
            fprintf(stderr, "lane: %ld flushes, %.1f writes a flush\n", pg_flushes,
                    pg_flushes ? (double)pg_jobs / pg_flushes : 0.0);
#endif
        fcntl(1, F_SETFL, fcntl(1, F_GETFL) & ~O_NONBLOCK); /* the last of the feed, whole */
        feed_flush();
        exit(0);
    }
}

static void on_signal(void) {
    struct signalfd_siginfo si;
    if (read(sfd, &si, sizeof si) != sizeof si) return;
    if (stopping) return;
    stopping = 1; /* no new sends: idle callers are closed, waiting ones answered first */
    stop_deadline = mono() + grace_s;
    for (int i = 0; i < nlisten; i++) { epoll_ctl(ep, EPOLL_CTL_DEL, listen_fds[i], NULL); close(listen_fds[i]); }
    for (client *c = clients, *next; c; c = next) {
        next = c->next;
        if (!c->job && c->mode == M_LANE && !c->out_c.n) client_close(c);
        else c->close_after = 1; /* answered, then closed */
    }
    fprintf(stderr, "lane: stopping (grace %.0f s, %s sends running)\n", grace_s, jobs ? "some" : "no");
}

/* ------------------------------------------------------------------ main */

static double env_f(const char *k, double d) { const char *v = getenv(k); return v && *v ? atof(v) : d; }

static const char *env_s(const char *k) {
    const char *v = getenv(k);
    if (!v || !*v) { fprintf(stderr, "lane: %s is required\n", k); exit(2); }
    return v;
}

int main(void) {
    /* berth killed (-9 included) takes its lane along: a lane left behind would keep its
       port from the next berth and accept sends no Python hears of. What it had in flight
       is in flight on disk: the next berth's recovery redelivers it. */
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0 || getppid() != parent) return 3;
    signal(SIGPIPE, SIG_IGN);
    pg_url = getenv("BERTH_LANE_PG");
    if (pg_url && !*pg_url) pg_url = NULL;
#ifndef LANE_PG
    if (pg_url) { fprintf(stderr, "lane: built without PostgreSQL (libpq)\n"); return 2; }
#endif
    if (!pg_url) db_path = env_s("BERTH_LANE_DB");
    upstream_path = env_s("BERTH_LANE_UPSTREAM");
    handoff_path = env_s("BERTH_LANE_HANDOFF");
    owner = env_s("BERTH_LANE_OWNER");
    secret = env_s("BERTH_LANE_SECRET");
    const char *admin = getenv("BERTH_LANE_ADMIN_SHA256");
    if (admin && strlen(admin) == 64) {
        have_admin = 1;
        for (int i = 0; i < 32; i++) {
            int hi = hexval(admin[2 * i]), lo = hexval(admin[2 * i + 1]);
            if (hi < 0 || lo < 0) { have_admin = 0; break; }
            admin_sha[i] = (unsigned char)(hi << 4 | lo);
        }
    }
    (void)canon_params;
    debug = getenv("BERTH_LANE_DEBUG") != NULL;
    wait_s = env_f("BERTH_LANE_WAIT", 300);
    forward_timeout = env_f("BERTH_LANE_FORWARD_TIMEOUT", 600);
    lease_s = env_f("BERTH_LANE_LEASE", 30);
    grace_s = env_f("BERTH_LANE_GRACE", 10);
    max_body = (long)env_f("BERTH_LANE_MAX_BODY", 1 << 20);
    max_queue = (long)env_f("BERTH_LANE_MAX_QUEUE", 10000);
    in_docker = env_f("BERTH_LANE_IN_DOCKER", 0) != 0;
    if (getenv("BERTH_LANE_SYNCHRONOUS") && *getenv("BERTH_LANE_SYNCHRONOUS")) synchronous = getenv("BERTH_LANE_SYNCHRONOUS");
    if (strcasecmp(synchronous, "FULL") && strcasecmp(synchronous, "NORMAL") && strcasecmp(synchronous, "EXTRA")) synchronous = "FULL";

#ifdef LANE_LOG_BENCH
    const char *bench_spec = getenv("BERTH_LANE_LOG_BENCH");
    const char *fds = bench_spec ? "" : env_s("BERTH_LANE_LISTEN_FDS");
#else
    const char *fds = env_s("BERTH_LANE_LISTEN_FDS");
#endif
    for (const char *q = fds; *q && nlisten < MAX_LISTEN;) {
        listen_fds[nlisten++] = (int)strtol(q, (char **)&q, 10);
        if (*q == ',') q++;
    }

#ifdef LANE_PG
    if (pg_url) { /* said once: what a commit is on disk by */
        pg_expect = getenv("BERTH_LANE_PG_EXPECT");
        if (pg_expect && !*pg_expect) pg_expect = NULL;
        pg_linger = env_f("BERTH_LANE_PG_LINGER", pg_linger);
        pg_writers = (int)env_f("BERTH_LANE_PG_WRITERS", pg_writers);
        if (pg_writers < 1 || pg_writers > MAX_WRITERS) pg_writers = 1;
        nqueues = pg_writers;
        PGconn *pc = pg_open(); /* none: the lane serves all the same, its sends relayed */
        if (pc) {
            PGresult *r = PQexec(pc, "SHOW synchronous_commit");
            fprintf(stderr, "lane: writing to PostgreSQL with synchronous_commit=%s, %d writers\n",
                    PQresultStatus(r) == PGRES_TUPLES_OK ? PQgetvalue(r, 0, 0) : "?", pg_writers);
            PQclear(r);
            PQfinish(pc);
        }
    }
#endif
    if (!pg_url) { /* SQLite: said once, read back from the writer's own connection: what a commit is on disk by */
        rdb = open_db();
        wdb = open_db();
        prepare(rdb, Q_CRED, &q_cred);
        prepare(rdb, Q_WS, &q_ws);
        prepare(wdb, W_ACCEPT, &w_accept);
        prepare(wdb, W_SETTLE, &w_settle);
        prepare(wdb, W_RENEW, &w_renew);
        sqlite3_stmt *q;
        int level = -1;
        if (sqlite3_prepare_v2(wdb, "PRAGMA synchronous", -1, &q, NULL) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
            level = sqlite3_column_int(q, 0);
        sqlite3_finalize(q);
        fprintf(stderr, "lane: writing with synchronous=%d (2: FULL, fsynced before any answer)\n", level);
    }

    for (int i = 0; i < MAX_WRITERS; i++) pthread_cond_init(&cvs[i], NULL);
    ep = epoll_create1(EPOLL_CLOEXEC);
    efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct itimerspec its = {{0, 50000000}, {0, 50000000}}; /* waits end within 50 ms */
    timerfd_settime(tfd, 0, &its, NULL);
    sigset_t ss;
    sigemptyset(&ss);
    sigaddset(&ss, SIGTERM);
    sigaddset(&ss, SIGINT);
    sigprocmask(SIG_BLOCK, &ss, NULL);
    sfd = signalfd(-1, &ss, SFD_NONBLOCK | SFD_CLOEXEC);
    for (int i = 0; i < nlisten; i++) {
        fcntl(listen_fds[i], F_SETFL, O_NONBLOCK);
        ep_add(listen_fds[i], &listen_e, EPOLLIN);
    }
    ep_add(efd, &event_e, EPOLLIN);
    ep_add(tfd, &timer_e, EPOLLIN);
    ep_add(sfd, &signal_e, EPOLLIN);
    pthread_t t;
#ifdef LANE_PG
    if (pg_url)
        for (int i = 0; i < pg_writers; i++) pthread_create(&t, NULL, pg_writer, (void *)(intptr_t)i);
    else
#endif
        pthread_create(&t, NULL, writer, NULL);
    last_renew = mono();
#ifdef LANE_LOG_BENCH
    if (bench_spec) bench_start(bench_spec);
#endif
    puts_(&feed, "{\"e\":\"ready\"}\n");
    feed_flush();
    fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK); /* a slow reader never stalls the loop */

    struct epoll_event evs[256];
    for (;;) {
        int wait_ms = ready ? 0 : -1;
        if (feed_due && !ready) {
            double left = feed_due - mono();
            wait_ms = left <= 0 ? 0 : (int)(left * 1000) + 1;
        }
        int n = epoll_wait(ep, evs, 256, wait_ms);
        if (n < 0 && errno == EINTR) continue;
        for (int i = 0; i < n; i++) {
            ev *tag = evs[i].data.ptr;
            switch (tag->kind) {
            case K_LISTEN:
                for (int k = 0; k < nlisten; k++) {
                    int fd;
                    while ((fd = accept4(listen_fds[k], NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                        int one = 1;
                        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                        client *c = calloc(1, sizeof *c);
                        c->e.kind = K_CLIENT;
                        c->fd = fd;
                        c->up = -1;
                        c->last_active = mono();
                        c->next = clients;
                        if (clients) clients->prev = c;
                        clients = c;
                        ep_add(fd, &c->e, EPOLLIN);
                    }
                }
                break;
            case K_CLIENT: if (!((client *)tag)->dead) on_client((client *)tag, evs[i].events); break;
            case K_UP: {
                client *c = (client *)((char *)tag - offsetof(client, up_e));
                if (!c->dead) on_up(c, evs[i].events);
                break;
            }
            case K_AGENT: if (!((agent *)tag)->dead) on_agent((agent *)tag, evs[i].events); break;
            case K_EVENT: on_committed(); break;
            case K_TIMER: on_tick(); break;
            case K_SIGNAL: on_signal(); break;
            }
        }
        serve_ready();
        bench_end();
        if (feed_due && mono() >= feed_due) feed_flush();
        reap();
    }
}
