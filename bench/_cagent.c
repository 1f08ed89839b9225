/* A trivial A2A agent in C for bench/lane_log.py: it costs berth's host next to nothing.
 *
 *   cagent PORT
 *
 * An HTTP/1.1 keep-alive server on 127.0.0.1:PORT, one thread, epoll. It answers
 * `GET /.well-known/agent-card.json` with a small card (berth's prober reads it to bring
 * the workspace online), any other GET with 404, and every POST with 200 and one fixed
 * JSON-RPC result, a Message, whose "id" is the request's top-level "id" copied as it was
 * written (null when there is none). berth classifies that answer as a reply
 * (services/replies.classify: "jsonrpc" and "result"), as it does bench/_trivial.py's.
 * Requests carry Content-Length (chunked requests are not read: the connection is
 * closed). Pipelined requests are answered in order. Prints `ready` once listening.
 *
 *   gcc -O2 -o cagent bench/_cagent.c
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_HEAD 65536
#define MAX_BODY (64 << 20)
#define CARD_PATH "/.well-known/agent-card.json"

typedef struct {
    int fd;
    char *in;
    size_t inlen, incap;
    char *out;
    size_t outlen, outoff, outcap;
    int closing; /* close once out is written */
    int want_out; /* EPOLLOUT registered */
} conn_t;

static int g_ep;
static char g_card[1024];
static size_t g_cardlen;

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void grow(char **p, size_t *cap, size_t need) {
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 16384;
    while (c < need) c *= 2;
    *p = realloc(*p, c);
    if (!*p) die("realloc");
    *cap = c;
}

static void out_add(conn_t *c, const char *p, size_t n) {
    grow(&c->out, &c->outcap, c->outlen + n);
    memcpy(c->out + c->outlen, p, n);
    c->outlen += n;
}

static void conn_free(conn_t *c) {
    epoll_ctl(g_ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

/* the raw text of the body's top-level "id" member's value, or NULL */
static const char *find_id(const char *b, size_t n, size_t *idlen) {
    size_t i = 0;
    int depth = 0;
    int expect_key = 0; /* at depth 1, the next string is a key */
    while (i < n) {
        char ch = b[i];
        if (ch == '"') {
            size_t s = i++;
            while (i < n && b[i] != '"') i += b[i] == '\\' ? 2 : 1;
            if (i >= n) return NULL;
            i++; /* past the closing quote */
            if (depth == 1 && expect_key) {
                int is_id = i - s == 4 && memcmp(b + s, "\"id\"", 4) == 0;
                expect_key = 0;
                while (i < n && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n'))
                    i++;
                if (i >= n || b[i] != ':') return NULL;
                i++;
                while (i < n && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n'))
                    i++;
                if (!is_id) continue;
                size_t v = i;
                if (i < n && b[i] == '"') {
                    i++;
                    while (i < n && b[i] != '"') i += b[i] == '\\' ? 2 : 1;
                    if (i >= n) return NULL;
                    i++;
                } else if (i < n && (b[i] == '{' || b[i] == '[')) {
                    return NULL; /* not an id JSON-RPC allows: answered as null */
                } else {
                    while (i < n && b[i] != ',' && b[i] != '}' && b[i] != ' ' && b[i] != '\t' &&
                           b[i] != '\r' && b[i] != '\n')
                        i++;
                }
                if (i == v) return NULL;
                *idlen = i - v;
                return b + v;
            }
            continue;
        }
        if (ch == '{' || ch == '[') {
            depth++;
            if (depth == 1 && ch == '{') expect_key = 1;
        } else if (ch == '}' || ch == ']') {
            depth--;
        } else if (ch == ',' && depth == 1) {
            expect_key = 1;
        }
        i++;
    }
    return NULL;
}

static int header_is(const char *line, size_t n, const char *name, const char **value) {
    size_t k = strlen(name);
    if (n <= k || strncasecmp(line, name, k) != 0 || line[k] != ':') return 0;
    const char *v = line + k + 1;
    while (v < line + n && (*v == ' ' || *v == '\t')) v++;
    *value = v;
    return 1;
}

/* Answer every whole request in c->in; -1: close the connection now. */
static int serve(conn_t *c) {
    size_t at = 0;
    while (at < c->inlen && !c->closing) {
        char *p = c->in + at;
        size_t left = c->inlen - at;
        char *end = left >= 4 ? memmem(p, left, "\r\n\r\n", 4) : NULL;
        if (!end) {
            if (left > MAX_HEAD) return -1;
            break;
        }
        size_t head = (size_t)(end - p) + 4;
        char *eol = memchr(p, '\n', head);
        int is_post = strncmp(p, "POST ", 5) == 0, is_get = strncmp(p, "GET ", 4) == 0;
        char *path = strchr(p, ' ');
        if (!path || path > eol) return -1;
        path++;
        char *path_end = memchr(path, ' ', (size_t)(eol - path));
        if (!path_end) return -1;
        int http10 = memmem(path_end, (size_t)(eol - path_end), "HTTP/1.0", 8) != NULL;
        long clen = 0;
        int close_after = http10;
        for (char *line = eol + 1; line < p + head - 2;) {
            char *e = memchr(line, '\n', (size_t)(p + head - line));
            size_t n = (size_t)(e - line);
            if (n && line[n - 1] == '\r') n--;
            const char *v;
            if (header_is(line, n, "content-length", &v)) clen = strtol(v, NULL, 10);
            else if (header_is(line, n, "transfer-encoding", &v)) return -1;
            else if (header_is(line, n, "connection", &v)) {
                if (strncasecmp(v, "close", 5) == 0) close_after = 1;
                else if (strncasecmp(v, "keep-alive", 10) == 0) close_after = 0;
            }
            line = e + 1;
        }
        if (clen < 0 || clen > MAX_BODY) return -1;
        if (left < head + (size_t)clen) break; /* the body is not all here yet */
        const char *body = p + head;
        char hdr[256];
        const char *conn_hdr = close_after ? "Connection: close\r\n" : "";
        if (is_post) {
            size_t idlen = 4;
            const char *id = find_id(body, (size_t)clen, &idlen);
            if (!id) {
                id = "null";
                idlen = 4;
            }
            static const char a[] = "{\"jsonrpc\":\"2.0\",\"id\":";
            static const char b[] =
                ",\"result\":{\"kind\":\"message\",\"role\":\"agent\",\"messageId\":\"r\","
                "\"parts\":[{\"kind\":\"text\",\"text\":\"ok\"}]}}";
            size_t blen = sizeof a - 1 + idlen + sizeof b - 1;
            int hn = snprintf(hdr, sizeof hdr,
                              "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              "Content-Length: %zu\r\n%s\r\n",
                              blen, conn_hdr);
            out_add(c, hdr, (size_t)hn);
            out_add(c, a, sizeof a - 1);
            out_add(c, id, idlen);
            out_add(c, b, sizeof b - 1);
        } else if (is_get && (size_t)(path_end - path) == sizeof CARD_PATH - 1 &&
                   memcmp(path, CARD_PATH, sizeof CARD_PATH - 1) == 0) {
            int hn = snprintf(hdr, sizeof hdr,
                              "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                              "Content-Length: %zu\r\n%s\r\n",
                              g_cardlen, conn_hdr);
            out_add(c, hdr, (size_t)hn);
            out_add(c, g_card, g_cardlen);
        } else {
            static const char nf[] = "{\"error\":\"not found\"}";
            int hn = snprintf(hdr, sizeof hdr,
                              "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\n"
                              "Content-Length: %zu\r\n%s\r\n",
                              sizeof nf - 1, conn_hdr);
            out_add(c, hdr, (size_t)hn);
            out_add(c, nf, sizeof nf - 1);
        }
        if (close_after) c->closing = 1;
        at += head + (size_t)clen;
    }
    memmove(c->in, c->in + at, c->inlen - at);
    c->inlen -= at;
    return 0;
}

/* write what is pending; -1: close now */
static int flush_out(conn_t *c) {
    while (c->outoff < c->outlen) {
        ssize_t k = send(c->fd, c->out + c->outoff, c->outlen - c->outoff, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            return -1;
        }
        c->outoff += (size_t)k;
    }
    if (c->outoff == c->outlen) {
        c->outoff = c->outlen = 0;
        if (c->closing) return -1;
    }
    int want = c->outlen > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(g_ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    signal(SIGPIPE, SIG_IGN);
    g_cardlen = (size_t)snprintf(
        g_card, sizeof g_card,
        "{\"name\":\"c-trivial\",\"version\":\"1\",\"url\":\"http://127.0.0.1:%d/\","
        "\"capabilities\":{},\"skills\":[],\"defaultInputModes\":[\"text\"],"
        "\"defaultOutputModes\":[\"text\"],\"description\":\"c trivial\"}",
        port);
    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (ls < 0) die("socket");
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&sa, sizeof sa) < 0) die("bind");
    if (listen(ls, 1024) < 0) die("listen");
    g_ep = epoll_create1(EPOLL_CLOEXEC);
    if (g_ep < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(g_ep, EPOLL_CTL_ADD, ls, &lev);
    printf("ready\n");
    fflush(stdout);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(g_ep, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    if (!nc) die("calloc");
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(g_ep, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            int drop = 0, peer_closed = 0;
            if (evs[i].events & EPOLLIN) {
                for (;;) {
                    grow(&c->in, &c->incap, c->inlen + 65536);
                    size_t room = c->incap - c->inlen;
                    ssize_t k = recv(c->fd, c->in + c->inlen, room, 0);
                    if (k > 0) {
                        c->inlen += (size_t)k;
                        if ((size_t)k < room) break; /* drained */
                        continue;
                    }
                    if (k == 0) peer_closed = 1;
                    else if (errno == EINTR) continue;
                    else if (errno != EAGAIN && errno != EWOULDBLOCK) drop = 1;
                    break;
                }
                if (!drop && !c->closing && serve(c) < 0) drop = 1;
                if (peer_closed) c->closing = 1; /* what it asked for is answered, then closed */
            }
            if (!drop && (evs[i].events & (EPOLLERR | EPOLLHUP)) && !(evs[i].events & EPOLLIN))
                drop = 1;
            if (!drop && flush_out(c) < 0) drop = 1;
            if (drop) conn_free(c);
        }
    }
}
