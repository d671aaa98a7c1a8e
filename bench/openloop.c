/*
 * openloop: constant-rate HTTP/1.1 load over keep-alive connections, open loop.
 *
 * Why this exists beside vegeta: on the bench machine (2 shared vCPUs) vegeta's own CPU,
 * about 170 us a request, is twice the edge sidecar's, and when the load client and the
 * server hold both vCPUs at once the host takes whole milliseconds from one of them: the
 * p99 measured was the client's and the host's, not the server's (NGINX answering a
 * static 200 measured p99 2.8-4.6 ms under vegeta, 0.5-0.8 ms under this client, in the
 * same session). This client is one thread: epoll for the connections, a timerfd armed at
 * each request's intended send time, no allocation once running, about a third of
 * vegeta's CPU a request.
 *
 * What it measures, per request: the time it was intended to be sent (t0 + seq / rate),
 * the time it was written, and the time its whole answer was read, all CLOCK_MONOTONIC
 * ns. A request due while every connection is busy waits for one, and that wait counts
 * from its intended time (no coordinated omission, as wrk2 counts).
 *
 * Usage: openloop PORT RATE COUNT CONNECTIONS REQUESTS OUT [EXPECT]
 *   COUNT     requests to send, the first at once, then one each 1/RATE s
 *   REQUESTS  raw HTTP/1.1 requests, each as its length in bytes on a line of its own,
 *             then exactly that many bytes; they are sent in turn, cycling
 *   OUT       one line per request: seq intended_ns written_ns answered_ns status matched
 *   EXPECT    bytes the answer must contain for `matched` to be 1 (default: none, 1)
 * Exits non-zero, saying why, on anything a bench must not average over: a refused or
 * lost connection, a chunked or oversized answer, a request unanswered after 10 s.
 * The answers' statuses are written, not judged (bench/loadgen.py judges them).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define ANSWER_MAX 65536
#define STALL_NS 10000000000LL

typedef struct {
    char *data;
    size_t len;
} request_t;

typedef struct {
    int fd;
    long seq; /* the request in flight, or -1 */
    size_t got;
    char buf[ANSWER_MAX];
} conn_t;

static struct sockaddr_in target;
static int epfd;
static const char *expect;

static void die(const char *what) {
    fprintf(stderr, "openloop: %s\n", what);
    exit(1);
}

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void dial(conn_t *c) {
    int one = 1;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0) die("socket failed");
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&target, sizeof target) < 0) {
        perror("openloop: connect");
        exit(1);
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl failed");
    c->seq = -1;
    c->got = 0;
}

static void redial(conn_t *c) {
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    dial(c);
}

/* Whether the header line starting at `line` (ending at `eol`) names `name`. */
static int header_is(const char *line, const char *eol, const char *name) {
    size_t n = strlen(name);
    return (size_t)(eol - line) > n && strncasecmp(line, name, n) == 0 && line[n] == ':';
}

/* Whether the header value between `from` and `eol` contains `word`, ignoring case. */
static int value_has(const char *from, const char *eol, const char *word) {
    size_t n = strlen(word);
    for (const char *p = from; p + n <= eol; p++)
        if (strncasecmp(p, word, n) == 0) return 1;
    return 0;
}

/* A whole answer is in c->buf: returns its length and sets *status, *matched (its body
 * holds `expect`) and *closing; 0 while it is still incomplete. */
static size_t answer_length(const conn_t *c, int *status, int *matched, int *closing) {
    const char *head_end = memmem(c->buf, c->got, "\r\n\r\n", 4);
    if (!head_end) {
        if (c->got == ANSWER_MAX) die("answer head over 64 KiB");
        return 0;
    }
    if (c->got < 12 || strncmp(c->buf, "HTTP/1.", 7) != 0) die("not an HTTP/1.x answer");
    size_t content_length = 0;
    *closing = 0;
    const char *line = memmem(c->buf, head_end + 2 - c->buf, "\r\n", 2) + 2;
    while (line < head_end + 2) {
        const char *eol = memmem(line, head_end + 2 - line, "\r\n", 2);
        if (header_is(line, eol, "content-length"))
            content_length = strtoul(line + 15, NULL, 10);
        else if (header_is(line, eol, "transfer-encoding"))
            die("chunked answers are not supported");
        else if (header_is(line, eol, "connection") && value_has(line + 11, eol, "close"))
            *closing = 1;
        line = eol + 2;
    }
    size_t total = (size_t)(head_end + 4 - c->buf) + content_length;
    if (total > ANSWER_MAX) die("answer over 64 KiB");
    if (c->got < total) return 0;
    if (c->got > total) die("bytes after the answer (the server pipelined?)");
    *status = atoi(c->buf + 9);
    *matched = !expect || memmem(head_end + 4, content_length, expect, strlen(expect)) != NULL;
    return total;
}

static request_t *read_requests(const char *path, size_t *count) {
    FILE *f = fopen(path, "rb");
    if (!f) die("cannot open the requests file");
    request_t *reqs = NULL;
    size_t n = 0, cap = 0, len;
    while (fscanf(f, "%zu", &len) == 1 && fgetc(f) == '\n') {
        if (n == cap) {
            cap = cap ? cap * 2 : 1024;
            reqs = realloc(reqs, cap * sizeof *reqs);
            if (!reqs) die("out of memory");
        }
        reqs[n].data = malloc(len);
        reqs[n].len = len;
        if (!reqs[n].data || fread(reqs[n].data, 1, len, f) != len) die("truncated requests file");
        n++;
    }
    fclose(f);
    if (n == 0) die("no request in the requests file");
    *count = n;
    return reqs;
}

static void arm(int tfd, long long at) {
    struct itimerspec when = {0};
    when.it_value.tv_sec = at / 1000000000LL;
    when.it_value.tv_nsec = at % 1000000000LL;
    if (timerfd_settime(tfd, TFD_TIMER_ABSTIME, &when, NULL) < 0) die("timerfd_settime failed");
}

int main(int argc, char **argv) {
    if (argc != 7 && argc != 8) {
        fprintf(stderr, "usage: openloop PORT RATE COUNT CONNECTIONS REQUESTS OUT [EXPECT]\n");
        return 2;
    }
    expect = argc == 8 ? argv[7] : NULL;
    int port = atoi(argv[1]), nconn = atoi(argv[4]);
    double rate = atof(argv[2]);
    long total = atol(argv[3]);
    if (port <= 0 || rate <= 0 || total <= 0 || nconn <= 0) die("bad arguments");
    size_t nreq;
    request_t *reqs = read_requests(argv[5], &nreq);

    long long *intended = malloc(total * sizeof(long long));
    long long *written = malloc(total * sizeof(long long));
    long long *answered = malloc(total * sizeof(long long));
    int *status = malloc(total * sizeof(int));
    char *matches = malloc(total);
    conn_t *conns = calloc(nconn, sizeof *conns);
    if (!intended || !written || !answered || !status || !matches || !conns) die("out of memory");

    memset(&target, 0, sizeof target);
    target.sin_family = AF_INET;
    target.sin_port = htons(port);
    target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    epfd = epoll_create1(0);
    for (int i = 0; i < nconn; i++) dial(&conns[i]);
    int tfd = timerfd_create(CLOCK_MONOTONIC, 0);
    struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, tfd, &tev);

    long long t0 = now_ns() + 1000000;
    for (long i = 0; i < total; i++) intended[i] = t0 + (long long)(i * 1e9 / rate);
    arm(tfd, intended[0]);
    long armed = 0; /* the request the timer is set for */
    long due = 0;  /* requests [0, due) are due */
    long sent = 0; /* requests [0, sent) are written */
    long done = 0;
    struct epoll_event events[64];
    while (done < total) {
        int n = epoll_wait(epfd, events, 64, 1000);
        if (n < 0 && errno != EINTR) die("epoll_wait failed");
        for (int k = 0; k < n; k++) {
            conn_t *c = events[k].data.ptr;
            if (!c) {
                unsigned long long expirations;
                if (read(tfd, &expirations, sizeof expirations) < 0 && errno != EAGAIN)
                    die("timerfd read failed");
                continue;
            }
            ssize_t r = read(c->fd, c->buf + c->got, ANSWER_MAX - c->got);
            if (r <= 0) {
                if (r < 0 && errno == EINTR) continue;
                if (c->seq >= 0) die("connection lost with a request in flight");
                redial(c); /* the server closed an idle keep-alive connection */
                continue;
            }
            c->got += (size_t)r;
            int code, matched, closing;
            if (c->seq < 0) die("bytes on an idle connection");
            if (!answer_length(c, &code, &matched, &closing)) continue;
            answered[c->seq] = now_ns();
            status[c->seq] = code;
            matches[c->seq] = (char)matched;
            done++;
            c->seq = -1;
            c->got = 0;
            if (closing) redial(c);
        }
        long long t = now_ns();
        while (due < total && intended[due] <= t) due++;
        for (int i = 0; i < nconn; i++) {
            conn_t *c = &conns[i];
            if (c->seq >= 0) {
                if (t - written[c->seq] > STALL_NS) die("a request unanswered after 10 s");
                continue;
            }
            if (sent == due) continue;
            const request_t *q = &reqs[sent % nreq];
            c->seq = sent;
            written[sent] = now_ns();
            if (write(c->fd, q->data, q->len) != (ssize_t)q->len) die("short write");
            sent++;
        }
        if (due < total && due != armed) {
            arm(tfd, intended[due]);
            armed = due;
        }
    }

    FILE *out = fopen(argv[6], "w");
    if (!out) die("cannot open the output file");
    for (long i = 0; i < total; i++)
        fprintf(out, "%ld %lld %lld %lld %d %d\n", i, intended[i], written[i], answered[i],
                status[i], matches[i]);
    if (fclose(out) != 0) die("cannot write the output file");
    return 0;
}
