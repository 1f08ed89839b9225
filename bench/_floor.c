/* The durable floor of bench/proxy.py in C: what a compiled durable hop costs here.

     gcc -O2 -o floor bench/_floor.c -lsqlite3 -lpthread -lcrypto
     ./floor PORT AGENT_PORT DB_FILE [BERTH_SQL_FILE]

   The same work as `bench/_trivial.py durable`, without Python: an HTTP/1.1 keep-alive
   server on 127.0.0.1:PORT; each POST's body is inserted into SQLite (WAL,
   synchronous=FULL) and committed before it is forwarded to the agent on
   127.0.0.1:AGENT_PORT (one keep-alive connection per client connection); the agent's
   answer is written to the row and committed before it is passed back to the caller as
   the agent sent it. Concurrent writes share one transaction and one fsync: one thread
   drains a queue, runs everything waiting in one transaction, commits, and wakes the event
   loop once (an eventfd). GET /healthz answers "ok synchronous=N". Requests must carry a
   Content-Length; answers may be chunked (the trivial agent's are); a caller sends its next
   request after its answer (no pipelining). A bench baseline, not a server: no limits, no
   timeouts, errors close the connection.

   With BERTH_SQL_FILE ("berth rows"): the database is berth's own (its schema, migrated
   by bench/proxy.py) and the two writes are berth's own statements, given in that file
   (line 1: the in-flight accept of adapters/sql/sqlite_hot.py, with its guard: nothing
   claimable queued, the capacity; line 2: the settle, RETURNING the row as berth's does).
   Each request also gets what berth computes for its row before the accept: a
   time-ordered id, the messageId read from the body, berth's fingerprint (the SHA-256 of
   the params' canonical form, src/berth/lane/canon.h: a strict parse of the whole body), a SHA-256 of
   the bearer credential. What a compiled data plane for berth would write
   and hash per message, without berth's other rules (those are Python's, or the lane's to
   come: docs/benchmarks.md). */

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/sha.h>
#include <poll.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "../src/berth/lane/canon.h"

enum { IDLE, LOGGING_IN, FORWARDING, LOGGING_OUT };
enum { UP_TAG = 1 };

typedef struct buf { char *p; size_t n, cap; } buf;

typedef struct conn {
    int fd, up;            /* the caller's socket, the agent's (or -1) */
    int state;
    buf in, upin;          /* bytes read from the caller, from the agent */
    size_t req_len, body_off, body_len, rsp_len;
    sqlite3_int64 row;
    struct conn *next;     /* in a commit queue */
    int is_insert;
    /* berth rows: what the accept writes besides the body */
    char id[37], fingerprint[65], message_id[257], caller_hash[65];
    double now;
} conn;

static int ep, efd, agent_port, synchronous, berth_rows;
static sqlite3 *db;
static sqlite3_stmt *ins, *upd;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static conn *todo_head, *todo_tail, *done_head, *done_tail;

static void die(const char *what) { perror(what); exit(1); }

static double now_s(void) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void sha_hex(const void *p, size_t n, char out[65]) {
    unsigned char d[SHA256_DIGEST_LENGTH];
    SHA256(p, n, d);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

/* berth's delivery id: a UUID laid out as version 7 (domain/ids.py) */
static void time_ordered_id(char out[37]) {
    struct timeval tv;
    gettimeofday(&tv, NULL);
    unsigned long long ms = (unsigned long long)tv.tv_sec * 1000 + (unsigned long long)tv.tv_usec / 1000;
    unsigned char r[10];
    if (getrandom(r, sizeof r, 0) != sizeof r) die("getrandom");
    unsigned char b[16];
    for (int i = 0; i < 6; i++) b[i] = (unsigned char)(ms >> (40 - 8 * i));
    memcpy(b + 6, r, 10);
    b[6] = (unsigned char)(0x70 | (b[6] & 0x0f));
    b[8] = (unsigned char)(0x80 | (b[8] & 0x3f));
    sprintf(out, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
}

/* The body's "messageId" string (the bench's are plain: no escapes); "" if none. */
static void message_id_of(const char *body, size_t n, char out[257]) {
    out[0] = 0;
    const char *k = memmem(body, n, "\"messageId\"", 11);
    if (!k) return;
    const char *q = memchr(k + 11, '"', n - (size_t)(k + 11 - body));
    if (!q) return;
    const char *e = memchr(q + 1, '"', n - (size_t)(q + 1 - body));
    if (!e || e - q - 1 > 256) return;
    memcpy(out, q + 1, (size_t)(e - q - 1));
    out[e - q - 1] = 0;
}

/* The bearer credential's hash (berth looks a caller's credential up by it). */
static void caller_hash_of(const char *head, size_t n, char out[65]) {
    const char *a = memmem(head, n, "\r\nauthorization: Bearer ", 24);
    if (!a) a = memmem(head, n, "\r\nAuthorization: Bearer ", 24);
    if (!a) { sha_hex("", 0, out); return; }
    const char *v = a + 24, *e = memmem(v, n - (size_t)(v - head), "\r\n", 2);
    sha_hex(v, e ? (size_t)(e - v) : 0, out);
}

static const char *HEADERS_JSON = "{\"content-type\":\"application/json\",\"x-berth-caller\":\"operator\"}";

static void bind_berth_accept(sqlite3_stmt *s, conn *c) {
    int i = 1;
    double t = c->now;
    sqlite3_bind_text(s, i++, c->id, -1, SQLITE_STATIC);              /* id */
    sqlite3_bind_text(s, i++, "w-bench", -1, SQLITE_STATIC);          /* workspace_id */
    sqlite3_bind_text(s, i++, "operator", -1, SQLITE_STATIC);         /* caller */
    sqlite3_bind_text(s, i++, c->message_id, -1, SQLITE_STATIC);      /* message_id */
    sqlite3_bind_text(s, i++, c->fingerprint, -1, SQLITE_STATIC);     /* fingerprint */
    sqlite3_bind_text(s, i++, "message/send", -1, SQLITE_STATIC);     /* method */
    sqlite3_bind_blob(s, i++, c->in.p + c->body_off, (int)c->body_len, SQLITE_STATIC);
    sqlite3_bind_text(s, i++, HEADERS_JSON, -1, SQLITE_STATIC);       /* headers */
    sqlite3_bind_text(s, i++, "in_flight", -1, SQLITE_STATIC);        /* status */
    sqlite3_bind_int(s, i++, 0);                                      /* attempts */
    sqlite3_bind_int(s, i++, 1);                                      /* forwards */
    sqlite3_bind_null(s, i++);                                        /* reply */
    sqlite3_bind_null(s, i++);                                        /* reply_status */
    sqlite3_bind_null(s, i++);                                        /* reply_type */
    sqlite3_bind_null(s, i++);                                        /* reason */
    sqlite3_bind_text(s, i++, "bench-floor", -1, SQLITE_STATIC);      /* lease_owner */
    sqlite3_bind_double(s, i++, t + 30);                              /* lease_until */
    sqlite3_bind_double(s, i++, 0);                                   /* not_before */
    sqlite3_bind_null(s, i++);                                        /* expires_at */
    sqlite3_bind_double(s, i++, t);                                   /* created_at */
    sqlite3_bind_double(s, i++, t);                                   /* first_forwarded_at */
    sqlite3_bind_null(s, i++);                                        /* finished_at */
    sqlite3_bind_double(s, i++, t);                                   /* updated_at */
    /* the guard: not_before <= now, nothing claimable queued, in flight under capacity */
    sqlite3_bind_double(s, i++, 0);
    sqlite3_bind_double(s, i++, t);
    sqlite3_bind_text(s, i++, "w-bench", -1, SQLITE_STATIC);
    sqlite3_bind_double(s, i++, t);
    sqlite3_bind_null(s, i++);
    sqlite3_bind_text(s, i++, "w-bench", -1, SQLITE_STATIC);
    sqlite3_bind_null(s, i++);
}

static void bind_berth_settle(sqlite3_stmt *s, conn *c) {
    double t = now_s();
    sqlite3_bind_double(s, 1, t);                                     /* updated_at, finished_at */
    sqlite3_bind_blob(s, 2, c->upin.p, (int)c->rsp_len, SQLITE_STATIC); /* reply */
    sqlite3_bind_text(s, 3, c->id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, "bench-floor", -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 5, 1);                                        /* the attempt it ends */
}

static void put(buf *b, const char *p, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 4096;
        b->p = realloc(b->p, b->cap);
        if (!b->p) die("realloc");
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
}

static void drop(buf *b, size_t n) {
    memmove(b->p, b->p + n, b->n - n);
    b->n -= n;
}

/* Length of the whole message at the start of b (head + Content-Length body), 0 if not
   all there yet, -1 if malformed. *body_off: where the body starts. */
static long message_len(buf *b, size_t *body_off) {
    if (b->n < 4) return 0;
    char *end = memmem(b->p, b->n, "\r\n\r\n", 4);
    if (!end) return 0;
    size_t head = (size_t)(end - b->p) + 4;
    long len = 0;
    int chunked = 0;
    for (char *line = memchr(b->p, '\n', head); line && line < end; line = memchr(line + 1, '\n', (size_t)(end - line))) {
        if (strncasecmp(line + 1, "content-length:", 15) == 0) len = strtol(line + 16, NULL, 10);
        if (strncasecmp(line + 1, "transfer-encoding: chunked", 26) == 0) chunked = 1;
    }
    if (len < 0) return -1;
    *body_off = head;
    if (chunked) { /* up to the last chunk (bodies here are JSON: no such bytes inside) */
        char *last = b->n - head >= 5 ? memmem(b->p + head, b->n - head, "0\r\n\r\n", 5) : NULL;
        return last ? (long)(last + 5 - b->p) : 0;
    }
    return b->n >= head + (size_t)len ? (long)(head + (size_t)len) : 0;
}

static void send_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) { p += w; n -= (size_t)w; continue; }
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pf = {fd, POLLOUT, 0};
            poll(&pf, 1, 1000);
            continue;
        }
        return; /* the peer left: its read will see it */
    }
}

static void close_conn(conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->up >= 0) { epoll_ctl(ep, EPOLL_CTL_DEL, c->up, NULL); close(c->up); }
    if (c->state == IDLE || c->state == FORWARDING) { free(c->in.p); free(c->upin.p); free(c); }
    else c->fd = -1; /* in the committer's hands: freed when it comes back */
}

static void enqueue(conn *c, int is_insert) {
    c->is_insert = is_insert;
    c->next = NULL;
    pthread_mutex_lock(&mu);
    if (todo_tail) todo_tail->next = c; else todo_head = c;
    todo_tail = c;
    pthread_cond_signal(&cv);
    pthread_mutex_unlock(&mu);
}

static void *committer(void *arg) {
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&mu);
        while (!todo_head) pthread_cond_wait(&cv, &mu);
        conn *batch = todo_head;
        todo_head = todo_tail = NULL;
        pthread_mutex_unlock(&mu);
        if (sqlite3_exec(db, "BEGIN", 0, 0, 0) != SQLITE_OK) die("BEGIN");
        conn *last = NULL;
        for (conn *c = batch; c; c = c->next) {
            if (berth_rows && c->is_insert) {
                bind_berth_accept(ins, c);
                if (sqlite3_step(ins) != SQLITE_ROW) die("berth's accept took no row");
                c->row = sqlite3_column_int64(ins, 0); /* RETURNING seq */
                while (sqlite3_step(ins) == SQLITE_ROW) {}
                sqlite3_reset(ins);
            } else if (berth_rows) {
                bind_berth_settle(upd, c);
                if (sqlite3_step(upd) != SQLITE_ROW) die("berth's settle found no row");
                for (int k = 0; k < sqlite3_column_count(upd); k++) (void)sqlite3_column_value(upd, k);
                while (sqlite3_step(upd) == SQLITE_ROW) {}
                sqlite3_reset(upd);
            } else if (c->is_insert) {
                sqlite3_bind_blob(ins, 1, c->in.p + c->body_off, (int)c->body_len, SQLITE_STATIC);
                if (sqlite3_step(ins) != SQLITE_DONE) die("INSERT");
                c->row = sqlite3_last_insert_rowid(db);
                sqlite3_reset(ins);
            } else {
                sqlite3_bind_blob(upd, 1, c->upin.p, (int)c->rsp_len, SQLITE_STATIC);
                sqlite3_bind_int64(upd, 2, c->row);
                if (sqlite3_step(upd) != SQLITE_DONE) die("UPDATE");
                sqlite3_reset(upd);
            }
            last = c;
        }
        if (sqlite3_exec(db, "COMMIT", 0, 0, 0) != SQLITE_OK) die("COMMIT");
        pthread_mutex_lock(&mu);
        if (done_tail) done_tail->next = batch; else done_head = batch;
        done_tail = last;
        pthread_mutex_unlock(&mu);
        uint64_t one = 1;
        if (write(efd, &one, 8) != 8) die("eventfd");
    }
    return NULL;
}

static int connect_agent(void) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)agent_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0 && errno != EINPROGRESS) die("connect");
    struct pollfd pf = {fd, POLLOUT, 0};
    poll(&pf, 1, 5000);
    return fd;
}

static void forward(conn *c) {
    if (c->fd < 0) { free(c->in.p); free(c->upin.p); free(c); return; } /* the caller left */
    if (c->up < 0) {
        c->up = connect_agent();
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = ((uint64_t)(uintptr_t)c) | UP_TAG};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->up, &ev);
    }
    c->state = FORWARDING;
    send_all(c->up, c->in.p, c->req_len); /* the caller's request as it came */
}

static void answer(conn *c) {
    if (c->fd < 0) { free(c->in.p); free(c->upin.p); free(c); return; }
    send_all(c->fd, c->upin.p, c->rsp_len);
    drop(&c->upin, c->rsp_len);
    drop(&c->in, c->req_len);
    c->state = IDLE;
}

static void on_request(conn *c);

/* Everything the socket has now into b: 0 once the peer has closed or failed. */
static int read_all(int fd, buf *b) {
    char tmp[65536];
    for (;;) {
        ssize_t r = recv(fd, tmp, sizeof tmp, 0);
        if (r > 0) { put(b, tmp, (size_t)r); continue; }
        return r < 0 && errno == EAGAIN;
    }
}

static void on_caller(conn *c) {
    if (!read_all(c->fd, &c->in)) { close_conn(c); return; }
    on_request(c);
}

static void on_request(conn *c) {
    if (c->state != IDLE) return; /* one request at a time per connection */
    size_t off;
    long len = message_len(&c->in, &off);
    if (len < 0) { close_conn(c); return; }
    if (len == 0) return;
    c->req_len = (size_t)len;
    if (strncmp(c->in.p, "GET /healthz", 12) == 0) {
        char rsp[128];
        int n = snprintf(rsp, sizeof rsp, "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n\r\nok synchronous=%d",
                         (int)strlen("ok synchronous=") + 1, synchronous);
        send_all(c->fd, rsp, (size_t)n);
        drop(&c->in, c->req_len);
        on_request(c);
        return;
    }
    c->body_off = off;
    c->body_len = c->req_len - off;
    if (berth_rows) { /* on the loop, as berth computes them before its accept */
        c->now = now_s();
        time_ordered_id(c->id);
        message_id_of(c->in.p + off, c->body_len, c->message_id);
        cbuf canon = {0}; /* berth's fingerprint: its params, canonical (canon.h) */
        if (canon_params(c->in.p + off, c->body_len, &canon) == 1) sha_hex(canon.p, canon.n, c->fingerprint);
        else sha_hex(c->in.p + off, c->body_len, c->fingerprint); /* the lane would relay it */
        free(canon.p);
        caller_hash_of(c->in.p, off, c->caller_hash);
    }
    c->state = LOGGING_IN;
    enqueue(c, 1);
}

static void on_agent(conn *c) {
    if (!read_all(c->up, &c->upin)) { close_conn(c); return; }
    size_t off;
    long len = message_len(&c->upin, &off);
    if (len < 0) { close_conn(c); return; }
    if (len == 0 || c->state != FORWARDING) return;
    c->rsp_len = (size_t)len;
    c->state = LOGGING_OUT;
    enqueue(c, 0);
}

static void on_committed(void) {
    uint64_t n;
    if (read(efd, &n, 8) != 8) return;
    pthread_mutex_lock(&mu);
    conn *c = done_head;
    done_head = done_tail = NULL;
    pthread_mutex_unlock(&mu);
    while (c) {
        conn *next = c->next;
        if (c->is_insert) forward(c);
        else {
            int alive = c->fd >= 0;
            answer(c);
            if (alive) on_request(c); /* a pipelined next request */
        }
        c = next;
    }
}

int main(int argc, char **argv) {
    if (argc != 4 && argc != 5) { fprintf(stderr, "usage: floor PORT AGENT_PORT DB [BERTH_SQL_FILE]\n"); return 2; }
    int port = atoi(argv[1]);
    agent_port = atoi(argv[2]);
    if (sqlite3_open(argv[3], &db) != SQLITE_OK) die("sqlite3_open");
    sqlite3_exec(db, "PRAGMA journal_mode=WAL", 0, 0, 0);
    sqlite3_exec(db, "PRAGMA synchronous=FULL", 0, 0, 0);
    sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, body BLOB, reply BLOB)", 0, 0, 0);
    sqlite3_stmt *q;
    sqlite3_prepare_v2(db, "PRAGMA synchronous", -1, &q, 0);
    sqlite3_step(q);
    synchronous = sqlite3_column_int(q, 0);
    sqlite3_finalize(q);
    if (argc == 5) { /* berth rows: berth's schema is there, its two statements in the file */
        berth_rows = 1;
        FILE *f = fopen(argv[4], "r");
        if (!f) die("BERTH_SQL_FILE");
        static char accept_sql[8192], settle_sql[8192];
        if (!fgets(accept_sql, sizeof accept_sql, f) || !fgets(settle_sql, sizeof settle_sql, f)) die("BERTH_SQL_FILE: two lines");
        fclose(f);
        if (sqlite3_prepare_v2(db, accept_sql, -1, &ins, 0) != SQLITE_OK) { fprintf(stderr, "%s\n", sqlite3_errmsg(db)); die("prepare accept"); }
        if (sqlite3_prepare_v2(db, settle_sql, -1, &upd, 0) != SQLITE_OK) { fprintf(stderr, "%s\n", sqlite3_errmsg(db)); die("prepare settle"); }
    } else {
        if (sqlite3_prepare_v2(db, "INSERT INTO log (body) VALUES (?)", -1, &ins, 0) != SQLITE_OK) die("prepare");
        if (sqlite3_prepare_v2(db, "UPDATE log SET reply = ? WHERE id = ?", -1, &upd, 0) != SQLITE_OK) die("prepare");
    }

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 1024) < 0) die("listen");
    ep = epoll_create1(0);
    efd = eventfd(0, EFD_NONBLOCK);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = 0};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    ev.data.u64 = 2;
    epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev);
    pthread_t t;
    pthread_create(&t, NULL, committer, NULL);

    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;
            if (tag == 0) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn *c = calloc(1, sizeof *c);
                    c->fd = fd;
                    c->up = -1;
                    struct epoll_event ce = {.events = EPOLLIN, .data.u64 = (uint64_t)(uintptr_t)c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ce);
                }
            } else if (tag == 2) {
                on_committed();
            } else if (tag & UP_TAG) {
                on_agent((conn *)(uintptr_t)(tag & ~(uint64_t)UP_TAG));
            } else {
                on_caller((conn *)(uintptr_t)tag);
            }
        }
    }
}
