/* The libuv loop: accept, frame, dispatch to workers, reply, drain. */
#define _GNU_SOURCE
#include "server.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include "log.h"
#include "pool.h"

#define IN_BUF (64u << 10)
#define MAX_QUEUED 64u               /* requests read ahead per connection */
#define MAX_OUT_BYTES (256u << 20)   /* unsent reply bytes before reading pauses */

struct conn;

struct job {
	struct pool_job pj;           /* first: the pool hands it back */
	struct job *next;             /* connection queue, then done list */
	struct conn *conn;
	struct request req;
	uint8_t *payload;             /* owned */
	int preset;                   /* a framing error found while reading */
	int rc;
};

struct reply {
	struct reply *next;
	uint8_t hdr[PROTO_HEADER_SIZE];
	uint8_t *payload;             /* owned */
	size_t len;                   /* header + payload */
	size_t off;
};

struct conn {
	struct conn *next, *prev;
	struct server *srv;
	int fd;
	uv_poll_t poll;
	int events;
	uid_t uid;
	pid_t pid;
	uint64_t id;

	uint8_t in[IN_BUF];
	size_t in_off, in_len;
	uint64_t rx_total;            /* bytes received so far */
	uint64_t rx_parsed;           /* bytes framed so far */
	bool in_payload;
	struct proto_header h;
	uint64_t h_pos;               /* stream position of the current header */
	uint8_t *payload;
	uint32_t pay_have;
	int pending_fd;
	/* The fd came with the stream bytes [lo, hi): the frame that carried it
	 * starts there (a recvmsg may glue earlier bytes before it, never later). */
	uint64_t pending_fd_lo, pending_fd_hi;

	struct job *qhead, *qtail;
	unsigned qlen;
	bool busy;
	bool read_stopped;            /* EOF, fatal error or draining */
	bool closing;

	struct reply *ohead, *otail;
	size_t obytes;

	struct shm_arena arena;
};

struct server {
	struct daemon_ctx *d;
	uv_loop_t loop;
	int listen_fd;
	uv_poll_t listen_poll;
	uv_async_t done_async;
	uv_signal_t sig_term, sig_int;
	uv_timer_t drain_timer;
	pthread_mutex_t done_mu;
	struct job *done;
	struct conn *conns;
	uint64_t next_conn_id;
	bool draining;
};

int req_error(struct request *r, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(r->err, sizeof(r->err), fmt, ap);
	va_end(ap);
	return rc;
}

static void conn_update_poll(struct conn *c);
static void conn_close(struct conn *c);
static void conn_dispatch(struct conn *c);
static void check_drained(struct server *s);

/* ---- writing ---- */

static int conn_flush(struct conn *c)
{
	while (c->ohead) {
		struct reply *r = c->ohead;
		struct iovec iov[2];
		int n = 0;
		if (r->off < PROTO_HEADER_SIZE) {
			iov[n++] = (struct iovec){ r->hdr + r->off, PROTO_HEADER_SIZE - r->off };
			if (r->len > PROTO_HEADER_SIZE)
				iov[n++] = (struct iovec){ r->payload, r->len - PROTO_HEADER_SIZE };
		} else {
			iov[n++] = (struct iovec){ r->payload + (r->off - PROTO_HEADER_SIZE), r->len - r->off };
		}
		struct msghdr msg = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t w = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			log_debug("ipc", "conn %llu: send: %s", (unsigned long long)c->id, strerror(errno));
			return -errno;
		}
		r->off += (size_t)w;
		c->obytes -= (size_t)w;
		if (r->off < r->len)
			continue;
		c->ohead = r->next;
		if (!c->ohead)
			c->otail = NULL;
		free(r->payload);
		free(r);
	}
	return 0;
}

/* Queue a reply frame; takes @p payload. */
static void conn_reply(struct conn *c, uint16_t op, uint64_t req_id, int status,
		       uint8_t *payload, size_t len)
{
	struct reply *r = calloc(1, sizeof(*r));
	if (!r) {
		free(payload);
		log_err("ipc", "conn %llu: out of memory for a reply; closing", (unsigned long long)c->id);
		c->read_stopped = true;
		return;
	}
	struct proto_header h = {
		.magic = PROTO_MAGIC, .version = PROTO_VERSION, .opcode = op,
		.flags = PROTO_FLAG_REPLY, .status = status, .req_id = req_id,
		.length = (uint32_t)len,
	};
	proto_header_encode(r->hdr, &h);
	r->payload = payload;
	r->len = PROTO_HEADER_SIZE + len;
	if (c->otail)
		c->otail->next = r;
	else
		c->ohead = r;
	c->otail = r;
	c->obytes += r->len;
}

/* ---- requests ---- */

static void job_free(struct job *j)
{
	if (j->req.fd >= 0)
		close(j->req.fd);
	wbuf_free(&j->req.out);
	free(j->payload);
	free(j);
}

static void job_run(struct pool_job *pj)
{
	struct job *j = (struct job *)pj;
	struct server *s = j->conn->srv;
	j->rc = handlers[j->req.h.opcode].fn(&j->req);
	pthread_mutex_lock(&s->done_mu);
	j->next = s->done;
	s->done = j;
	pthread_mutex_unlock(&s->done_mu);
	uv_async_send(&s->done_async);
}

/* A request finished (on the loop thread): reply and go on with the next. */
static void job_complete(struct job *j)
{
	struct conn *c = j->conn;
	struct request *r = &j->req;
	struct daemon_ctx *d = c->srv->d;
	c->busy = false;
	atomic_fetch_add(&d->requests, 1);
	if (!c->closing) {
		if (j->rc < 0) {
			atomic_fetch_add(&d->errors, 1);
			if (!r->err[0])
				snprintf(r->err, sizeof(r->err), "%s", strerror(-j->rc));
			log_msg(r->fatal ? LOG_WARN : LOG_DEBUG,
				"ipc", "conn %llu uid %u: %s #%llu: %s (%s)%s",
				 (unsigned long long)c->id, (unsigned)c->uid, proto_op_name(r->h.opcode),
				 (unsigned long long)r->h.req_id, r->err, strerror(-j->rc),
				 r->fatal ? "; closing" : "");
			struct wbuf e;
			wbuf_init(&e);
			msg_error_encode(&e, r->err);
			size_t len;
			uint8_t *p = wbuf_steal(&e, &len);
			conn_reply(c, r->h.opcode, r->h.req_id, j->rc, p, len);
		} else if (r->out.err) {
			atomic_fetch_add(&d->errors, 1);
			struct wbuf e;
			wbuf_init(&e);
			msg_error_encode(&e, "out of memory building the reply");
			size_t len;
			uint8_t *p = wbuf_steal(&e, &len);
			conn_reply(c, r->h.opcode, r->h.req_id, -ENOMEM, p, len);
		} else {
			size_t len;
			uint8_t *p = wbuf_steal(&r->out, &len);
			conn_reply(c, r->h.opcode, r->h.req_id, 0, p, len);
		}
		if (r->fatal) {
			/* nothing after a protocol error is trusted: drop the read-ahead */
			c->read_stopped = true;
			while (c->qhead) {
				struct job *q = c->qhead;
				c->qhead = q->next;
				job_free(q);
			}
			c->qtail = NULL;
			c->qlen = 0;
		}
	}
	job_free(j);
	if (c->closing) {
		conn_close(c);
		return;
	}
	if (conn_flush(c)) {
		conn_close(c);
		return;
	}
	conn_dispatch(c);
	if (!c->busy && c->read_stopped && !c->qhead && !c->ohead) {
		conn_close(c);
		return;
	}
	conn_update_poll(c);
}

static void conn_dispatch(struct conn *c)
{
	while (!c->busy && !c->closing && c->qhead) {
		struct job *j = c->qhead;
		c->qhead = j->next;
		if (!c->qhead)
			c->qtail = NULL;
		c->qlen--;
		c->busy = true;
		if (j->preset) {
			j->rc = j->preset;
			j->req.fatal = true;
			job_complete(j);
			return;
		}
		const struct handler *hd = &handlers[j->req.h.opcode];
		if (hd->on_loop) {
			j->rc = hd->fn(&j->req);
			job_complete(j);
			return;
		}
		pool_submit(c->srv->d->pool, &j->pj);
	}
}

static void on_done(uv_async_t *a)
{
	struct server *s = a->data;
	pthread_mutex_lock(&s->done_mu);
	struct job *list = s->done;
	s->done = NULL;
	pthread_mutex_unlock(&s->done_mu);
	/* the list is newest first; replies per connection are one at a time anyway */
	while (list) {
		struct job *j = list;
		list = j->next;
		job_complete(j);
	}
	check_drained(s);
}

/* ---- reading ---- */

static struct job *job_new(struct conn *c)
{
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->pj.fn = job_run;
	j->conn = c;
	j->req.d = c->srv->d;
	j->req.uid = c->uid;
	j->req.pid = c->pid;
	j->req.arena = &c->arena;
	j->req.fd = -1;
	wbuf_init(&j->req.out);
	return j;
}

static void conn_enqueue(struct conn *c, struct job *j)
{
	j->next = NULL;
	if (c->qtail)
		c->qtail->next = j;
	else
		c->qhead = j;
	c->qtail = j;
	c->qlen++;
}

/* A framing error: answer it in order, then close. */
static void conn_framing_error(struct conn *c, const struct proto_header *h, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void conn_framing_error(struct conn *c, const struct proto_header *h, int rc, const char *fmt, ...)
{
	c->read_stopped = true;
	struct job *j = job_new(c);
	if (!j) {
		conn_close(c);
		return;
	}
	j->req.h = *h;
	if (j->req.h.opcode >= OP_COUNT)
		j->req.h.opcode = 0;
	j->preset = rc;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(j->req.err, sizeof(j->req.err), fmt, ap);
	va_end(ap);
	conn_enqueue(c, j);
}

/* Frame whatever is in the input buffer. Returns false once reading must stop. */
static bool conn_parse(struct conn *c)
{
	const uint32_t max_frame = (uint32_t)c->srv->d->cfg->max_frame;
	while (!c->read_stopped) {
		size_t avail = c->in_len - c->in_off;
		if (!c->in_payload) {
			if (avail < PROTO_HEADER_SIZE)
				break;
			proto_header_decode(c->in + c->in_off, &c->h);
			c->h_pos = c->rx_parsed;
			if (c->pending_fd >= 0 && c->h_pos >= c->pending_fd_hi) {
				conn_framing_error(c, &c->h, -EBADMSG,
						   "a file descriptor came with a frame other than SHM_ATTACH");
				return false;
			}
			c->in_off += PROTO_HEADER_SIZE;
			c->rx_parsed += PROTO_HEADER_SIZE;
			int rc = proto_header_check(&c->h, max_frame, false);
			if (rc) {
				const char *why = rc == -EMSGSIZE ? "payload length over max-frame" :
						  rc == -EPROTONOSUPPORT ? "unsupported protocol version" :
						  "bad frame header (magic, flags or reserved bits)";
				conn_framing_error(c, &c->h, rc, "%s", why);
				return false;
			}
			if (c->h.opcode >= OP_COUNT || !handlers[c->h.opcode].fn) {
				conn_framing_error(c, &c->h, -EBADRQC, "unknown opcode %u", c->h.opcode);
				return false;
			}
			c->payload = malloc(c->h.length ? c->h.length : 1);
			if (!c->payload) {
				conn_framing_error(c, &c->h, -ENOMEM, "out of memory for a %u-byte payload", c->h.length);
				return false;
			}
			c->pay_have = 0;
			c->in_payload = true;
			avail = c->in_len - c->in_off;
		}
		size_t take = c->h.length - c->pay_have;
		if (take > avail)
			take = avail;
		memcpy(c->payload + c->pay_have, c->in + c->in_off, take);
		c->pay_have += (uint32_t)take;
		c->in_off += take;
		c->rx_parsed += take;
		if (c->pay_have < c->h.length)
			break;

		struct job *j = job_new(c);
		if (!j) {
			conn_framing_error(c, &c->h, -ENOMEM, "out of memory");
			return false;
		}
		j->req.h = c->h;
		j->payload = c->payload;
		j->req.payload = c->payload;
		j->req.len = c->h.length;
		c->payload = NULL;
		c->in_payload = false;
		/* An fd belongs to the SHM_ATTACH frame that starts where it came. */
		if (c->pending_fd >= 0 && c->h.opcode == OP_SHM_ATTACH &&
		    c->h_pos >= c->pending_fd_lo && c->h_pos < c->pending_fd_hi) {
			j->req.fd = c->pending_fd;
			c->pending_fd = -1;
		}
		conn_enqueue(c, j);
	}
	if (c->in_off == c->in_len)
		c->in_off = c->in_len = 0;
	return !c->read_stopped;
}

static bool conn_backpressured(const struct conn *c)
{
	return c->qlen >= MAX_QUEUED || c->obytes >= MAX_OUT_BYTES;
}

static void conn_read(struct conn *c)
{
	for (;;) {
		if (c->read_stopped || conn_backpressured(c))
			break;
		uint8_t *dst;
		size_t want;
		bool direct = c->in_payload && c->in_off == c->in_len &&
			      c->h.length - c->pay_have >= IN_BUF / 2;
		if (direct) {
			/* big payloads go straight to their buffer, not through ours */
			dst = c->payload + c->pay_have;
			want = c->h.length - c->pay_have;
		} else {
			if (c->in_off > 0) {
				memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
				c->in_len -= c->in_off;
				c->in_off = 0;
			}
			dst = c->in + c->in_len;
			want = IN_BUF - c->in_len;
		}
		int fds[2], nfds = 0;
		ssize_t n = sock_recv_fds(c->fd, dst, want, fds, 2, &nfds);
		if (n == -EAGAIN)
			break;
		if (nfds > 0) {
			bool bad = nfds > 1 || c->pending_fd >= 0;
			if (bad) {
				for (int i = 0; i < nfds; i++)
					close(fds[i]);
				struct proto_header h = { .opcode = 0 };
				conn_framing_error(c, &h, -EBADMSG, "more than one file descriptor at once");
				break;
			}
			c->pending_fd = fds[0];
			c->pending_fd_lo = c->rx_total;
			c->pending_fd_hi = c->rx_total + (n > 0 ? (uint64_t)n : 0);
		}
		if (n == -EBADMSG) {
			struct proto_header h = { .opcode = 0 };
			conn_framing_error(c, &h, -EBADMSG, "truncated control data");
			break;
		}
		if (n < 0) {
			log_debug("ipc", "conn %llu: recv: %s", (unsigned long long)c->id, strerror((int)-n));
			c->read_stopped = true;
			conn_close(c);
			return;
		}
		if (n == 0) {
			if (c->in_payload || c->in_len > c->in_off)
				log_info("ipc", "conn %llu: peer left mid-frame", (unsigned long long)c->id);
			c->read_stopped = true;
			if (!c->busy && !c->qhead) {
				conn_close(c);
				return;
			}
			break;
		}
		c->rx_total += (uint64_t)n;
		if (direct) {
			c->pay_have += (uint32_t)n;
			c->rx_parsed += (uint64_t)n;
		} else {
			c->in_len += (size_t)n;
		}
		if (!conn_parse(c))
			break;
		if ((size_t)n < want)
			break;     /* the socket is drained; poll tells us about more */
	}
	conn_dispatch(c);
	if (!c->closing && c->read_stopped && !c->busy && !c->qhead && !c->ohead)
		conn_close(c);
}

/* ---- connection lifetime ---- */

static void on_conn_poll(uv_poll_t *p, int status, int events)
{
	struct conn *c = p->data;
	if (status < 0) {
		conn_close(c);
		return;
	}
	if (events & UV_WRITABLE) {
		if (conn_flush(c)) {
			conn_close(c);
			return;
		}
		if (!c->ohead && c->read_stopped && !c->busy && !c->qhead) {
			conn_close(c);
			return;
		}
	}
	if (events & UV_READABLE)
		conn_read(c);
	if (!c->closing)
		conn_update_poll(c);
}

static void conn_update_poll(struct conn *c)
{
	if (c->closing)
		return;
	int ev = 0;
	if (!c->read_stopped && !conn_backpressured(c))
		ev |= UV_READABLE;
	if (c->ohead)
		ev |= UV_WRITABLE;
	if (ev == c->events)
		return;
	c->events = ev;
	if (ev)
		uv_poll_start(&c->poll, ev, on_conn_poll);
	else
		uv_poll_stop(&c->poll);
}

static void on_conn_closed(uv_handle_t *h)
{
	struct conn *c = h->data;
	struct server *s = c->srv;
	while (c->qhead) {
		struct job *j = c->qhead;
		c->qhead = j->next;
		job_free(j);
	}
	while (c->ohead) {
		struct reply *r = c->ohead;
		c->ohead = r->next;
		free(r->payload);
		free(r);
	}
	if (c->pending_fd >= 0)
		close(c->pending_fd);
	free(c->payload);
	shm_arena_close(&c->arena);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	atomic_fetch_sub(&s->d->connections, 1);
	log_debug("ipc", "conn %llu closed", (unsigned long long)c->id);
	free(c);
	check_drained(s);
}

/* Close now, or as soon as the running request comes back. */
static void conn_close(struct conn *c)
{
	if (!c->closing) {
		c->closing = true;
		c->read_stopped = true;
		uv_poll_stop(&c->poll);
	}
	if (c->busy || uv_is_closing((uv_handle_t *)&c->poll))
		return;
	uv_close((uv_handle_t *)&c->poll, on_conn_closed);
}

static void on_accept(uv_poll_t *p, int status, int events)
{
	struct server *s = p->data;
	(void)events;
	if (status < 0)
		return;
	for (;;) {
		int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
				log_warn("ipc", "accept: %s", strerror(errno));
			return;
		}
		struct ucred cred;
		socklen_t cl = sizeof(cred);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &cl) < 0) {
			log_warn("ipc", "SO_PEERCRED: %s; refusing the connection", strerror(errno));
			close(fd);
			continue;
		}
		if (atomic_load(&s->d->connections) >= s->d->cfg->max_connections) {
			log_warn("ipc", "max-connections (%u) reached; refusing pid %d",
				 s->d->cfg->max_connections, (int)cred.pid);
			close(fd);
			continue;
		}
		struct conn *c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			continue;
		}
		c->srv = s;
		c->fd = fd;
		c->uid = cred.uid;
		c->pid = cred.pid;
		c->id = ++s->next_conn_id;
		c->pending_fd = -1;
		c->arena.fd = -1;
		uv_poll_init(&s->loop, &c->poll, fd);
		c->poll.data = c;
		c->next = s->conns;
		if (s->conns)
			s->conns->prev = c;
		s->conns = c;
		atomic_fetch_add(&s->d->connections, 1);
		log_debug("ipc", "conn %llu from pid %d uid %u", (unsigned long long)c->id,
			  (int)cred.pid, (unsigned)cred.uid);
		conn_update_poll(c);
	}
}

/* ---- start, drain, stop ---- */

int mkdir_p(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	if (strlen(path) >= sizeof(buf))
		return -ENAMETOOLONG;
	strcpy(buf, path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(buf, mode) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(buf, mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}

static int parent_dir(const char *path, char *out, size_t cap)
{
	const char *slash = strrchr(path, '/');
	if (!slash) {
		snprintf(out, cap, ".");
		return 0;
	}
	size_t n = (size_t)(slash - path);
	if (n == 0)
		n = 1;
	if (n >= cap)
		return -ENAMETOOLONG;
	memcpy(out, path, n);
	out[n] = 0;
	return 0;
}

static int listen_socket(const char *path, int *out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char dir[PATH_MAX];
	int rc;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		log_err("daemon", "socket path %s is longer than %zu bytes", path, sizeof(sa.sun_path) - 1);
		return -ENAMETOOLONG;
	}
	strcpy(sa.sun_path, path);
	if ((rc = parent_dir(path, dir, sizeof(dir))) || (rc = mkdir_p(dir, 0700))) {
		log_err("daemon", "cannot create the socket's folder %s: %s", dir, strerror(-rc));
		return rc;
	}
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* A socket file that nobody answers on is left from a crash: replace it.
	 * One that answers belongs to a running daemon: refuse to steal it. */
	int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (probe >= 0) {
		if (connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0) {
			close(probe);
			close(fd);
			log_err("daemon", "another mnemod is already serving %s", path);
			return -EADDRINUSE;
		}
		close(probe);
	}
	unlink(path);
	mode_t old = umask(0177);
	rc = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
	umask(old);
	if (rc < 0 || chmod(path, 0600) < 0 || listen(fd, 128) < 0) {
		rc = -errno;
		log_err("daemon", "cannot listen on %s: %s", path, strerror(-rc));
		close(fd);
		return rc;
	}
	*out = fd;
	return 0;
}

static void close_walk(uv_handle_t *h, void *arg)
{
	(void)arg;
	if (!uv_is_closing(h))
		uv_close(h, NULL);
}

static void check_drained(struct server *s)
{
	if (s->draining && !s->conns) {
		log_info("daemon", "drained; stopping");
		uv_stop(&s->loop);
	}
}

static void on_drain_timeout(uv_timer_t *t)
{
	struct server *s = t->data;
	log_warn("daemon", "drain-seconds passed with requests still running; stopping anyway");
	uv_stop(&s->loop);
}

static void on_signal(uv_signal_t *sig, int signum)
{
	struct server *s = sig->data;
	if (s->draining) {
		log_warn("daemon", "second %s: stopping without waiting", strsignal(signum));
		uv_stop(&s->loop);
		return;
	}
	s->draining = true;
	log_info("daemon", "%s: no new connections; draining in-flight requests", strsignal(signum));
	uv_poll_stop(&s->listen_poll);
	close(s->listen_fd);
	s->listen_fd = -1;
	unlink(s->d->cfg->socket);
	for (struct conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		/* what the client sent before the signal still runs and is answered */
		if (!c->closing)
			conn_read(c);
		if (c->closing)
			continue;
		c->read_stopped = true;
		if (!c->busy && !c->qhead && !c->ohead)
			conn_close(c);
		else
			conn_update_poll(c);
	}
	if (s->d->cfg->drain_seconds) {
		uv_timer_start(&s->drain_timer, on_drain_timeout, s->d->cfg->drain_seconds * 1000ull, 0);
	}
	check_drained(s);
}

int server_run(struct daemon_ctx *d)
{
	struct server *s = calloc(1, sizeof(*s));
	int rc;
	if (!s)
		return -ENOMEM;
	s->d = d;
	s->listen_fd = -1;
	pthread_mutex_init(&s->done_mu, NULL);
	signal(SIGPIPE, SIG_IGN);

	if ((rc = -uv_loop_init(&s->loop)) != 0)
		goto out_free;
	if ((rc = listen_socket(d->cfg->socket, &s->listen_fd)) != 0)
		goto out_loop;

	uv_poll_init(&s->loop, &s->listen_poll, s->listen_fd);
	s->listen_poll.data = s;
	uv_poll_start(&s->listen_poll, UV_READABLE, on_accept);
	uv_async_init(&s->loop, &s->done_async, on_done);
	s->done_async.data = s;
	uv_signal_init(&s->loop, &s->sig_term);
	uv_signal_init(&s->loop, &s->sig_int);
	s->sig_term.data = s->sig_int.data = s;
	uv_signal_start(&s->sig_term, on_signal, SIGTERM);
	uv_signal_start(&s->sig_int, on_signal, SIGINT);
	uv_timer_init(&s->loop, &s->drain_timer);
	s->drain_timer.data = s;

	log_info("daemon", "listening on %s (workers %u, host-mem %llu MiB, block %u tokens)",
		 d->cfg->socket, pool_size(d->pool), (unsigned long long)(d->cfg->host_mem >> 20),
		 d->cfg->block_tokens);
	uv_run(&s->loop, UV_RUN_DEFAULT);

	/* Stopped: wait for requests still on workers, then close everything. */
	for (;;) {
		bool busy = false;
		for (struct conn *c = s->conns; c; c = c->next)
			busy |= c->busy;
		if (!busy)
			break;
		uv_run(&s->loop, UV_RUN_ONCE);
	}
	for (struct conn *c = s->conns, *next; c; c = next) {
		next = c->next;
		conn_close(c);
	}
	uv_walk(&s->loop, close_walk, NULL);
	uv_run(&s->loop, UV_RUN_DEFAULT);
	if (s->listen_fd >= 0) {
		close(s->listen_fd);
		unlink(d->cfg->socket);
	}
	rc = 0;
out_loop:
	if (uv_loop_close(&s->loop))
		log_warn("daemon", "loop closed with handles open");
out_free:
	pthread_mutex_destroy(&s->done_mu);
	free(s);
	return rc;
}
