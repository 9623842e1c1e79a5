/* libmnemo: blocking client over the Unix socket, with pipelining. */
#define _GNU_SOURCE
#include "mnemo.h"
#include "proto.h"
#include "sock.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

/* A reply that arrived while the caller waited for another one. */
struct stashed {
	struct stashed *next;
	struct proto_header h;
	uint8_t *payload;
};

struct mnemo_client {
	int fd;
	uint64_t next_id;
	uint32_t max_frame;
	struct shm_arena arena;
	struct stashed *stash;
	uint64_t geom_ctx;              /* the context whose shape ATTEND last needed */
	uint32_t geom_q_heads, geom_head_dim;
	char err[PROTO_MAX_ERRMSG + 64];
};

const char *mnemo_default_socket(void)
{
	static char path[512];
	const char *env = getenv("MNEMO_SOCKET");
	if (env && *env)
		return env;
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	if (xdg && *xdg)
		snprintf(path, sizeof(path), "%s/mnemo/mnemod.sock", xdg);
	else
		snprintf(path, sizeof(path), "var/run/mnemod.sock");
	return path;
}

static int set_err(mnemo_client *c, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int set_err(mnemo_client *c, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->err, sizeof(c->err), fmt, ap);
	va_end(ap);
	return rc;
}

int mnemo_connect(const char *path, mnemo_client **out)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	if (!path)
		path = mnemo_default_socket();
	if (strlen(path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, path);
	mnemo_client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->arena.fd = -1;
	c->next_id = 1;
	c->max_frame = PROTO_DEFAULT_MAX_FRAME;
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		int rc = -errno;
		free(c);
		return rc;
	}
	if (connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		int rc = -errno;
		close(c->fd);
		free(c);
		return rc;
	}
	*out = c;
	return 0;
}

void mnemo_close(mnemo_client *c)
{
	if (!c)
		return;
	while (c->stash) {
		struct stashed *s = c->stash;
		c->stash = s->next;
		free(s->payload);
		free(s);
	}
	shm_arena_close(&c->arena);
	close(c->fd);
	free(c);
}

const char *mnemo_last_error(const mnemo_client *c)
{
	return c->err;
}

size_t mnemo_dtype_size(enum mnemo_dtype t)
{
	return proto_dtype_size((uint32_t)t);
}

/* Send one request frame whose payload is in @p b; @p pass_fd rides along. */
static int send_frame(mnemo_client *c, uint16_t op, struct wbuf *b, const void *tail,
		      size_t tail_len, int pass_fd, uint64_t *req_id)
{
	if (b->err)
		return set_err(c, b->err, "out of memory encoding %s", proto_op_name(op));
	size_t len = b->len + tail_len;
	if (len > c->max_frame)
		return set_err(c, -EMSGSIZE, "%s payload of %zu bytes is over the daemon's %u",
			       proto_op_name(op), len, c->max_frame);
	struct proto_header h = {
		.magic = PROTO_MAGIC, .version = PROTO_VERSION, .opcode = op,
		.req_id = c->next_id++, .length = (uint32_t)len,
	};
	uint8_t hdr[PROTO_HEADER_SIZE];
	proto_header_encode(hdr, &h);
	int rc = sock_send_all(c->fd, hdr, sizeof(hdr), pass_fd);
	if (!rc && b->len)
		rc = sock_send_all(c->fd, b->data, b->len, -1);
	if (!rc && tail_len)
		rc = sock_send_all(c->fd, tail, tail_len, -1);
	if (rc)
		return set_err(c, rc, "sending %s: %s", proto_op_name(op), strerror(-rc));
	*req_id = h.req_id;
	return 0;
}

/* Read frames until the reply to @p req_id arrives; park the others. */
static int recv_reply(mnemo_client *c, uint64_t req_id, uint16_t op,
		      uint8_t **payload, uint32_t *len)
{
	struct proto_header h;
	for (struct stashed **pp = &c->stash; *pp; pp = &(*pp)->next) {
		if ((*pp)->h.req_id == req_id) {
			struct stashed *s = *pp;
			*pp = s->next;
			h = s->h;
			*payload = s->payload;
			free(s);
			goto got;
		}
	}
	for (;;) {
		uint8_t hdr[PROTO_HEADER_SIZE];
		int rc = sock_recv_all(c->fd, hdr, sizeof(hdr));
		if (rc)
			return set_err(c, rc, "reading reply to %s: %s", proto_op_name(op),
				       rc == -ECONNRESET ? "daemon closed the connection" : strerror(-rc));
		proto_header_decode(hdr, &h);
		rc = proto_header_check(&h, UINT32_MAX, true);
		if (rc)
			return set_err(c, -EPROTO, "malformed reply header from daemon");
		uint8_t *p = malloc(h.length ? h.length : 1);
		if (!p)
			return set_err(c, -ENOMEM, "out of memory for a %u-byte reply", h.length);
		rc = sock_recv_all(c->fd, p, h.length);
		if (rc) {
			free(p);
			return set_err(c, rc, "reading reply payload: %s", strerror(-rc));
		}
		if (h.req_id == req_id) {
			*payload = p;
			goto got;
		}
		struct stashed *s = malloc(sizeof(*s));
		if (!s) {
			free(p);
			return set_err(c, -ENOMEM, "out of memory");
		}
		s->h = h;
		s->payload = p;
		s->next = c->stash;
		c->stash = s;
	}
got:
	if (h.status < 0) {
		const char *msg = "";
		uint16_t n = 0;
		if (msg_error_decode(*payload, h.length, &msg, &n))
			n = 0;
		set_err(c, h.status, "%s: %.*s", proto_op_name(h.opcode), (int)n, msg);
		free(*payload);
		*payload = NULL;
		return h.status;
	}
	if (h.opcode != op) {
		free(*payload);
		*payload = NULL;
		return set_err(c, -EPROTO, "reply opcode %u to a %s", h.opcode, proto_op_name(op));
	}
	*len = h.length;
	c->err[0] = 0;
	return 0;
}

/* One round trip: send @p b as @p op and return the reply payload. */
static int call(mnemo_client *c, uint16_t op, struct wbuf *b, const void *tail,
		size_t tail_len, int pass_fd, uint8_t **payload, uint32_t *len)
{
	uint64_t id;
	int rc = send_frame(c, op, b, tail, tail_len, pass_fd, &id);
	wbuf_free(b);
	if (rc)
		return rc;
	return recv_reply(c, id, op, payload, len);
}

static int bad_reply(mnemo_client *c, uint16_t op)
{
	return set_err(c, -EPROTO, "malformed %s reply", proto_op_name(op));
}

static void copy_name(char *dst, size_t cap, const char *s, size_t n)
{
	if (n >= cap)
		n = cap - 1;
	memcpy(dst, s, n);
	dst[n] = 0;
}

int mnemo_hello(mnemo_client *c, struct mnemo_server_info *info)
{
	struct wbuf b;
	wbuf_init(&b);
	msg_hello_req_encode(&b, &(struct msg_hello_req){ .proto = PROTO_VERSION });
	uint8_t *p;
	uint32_t n;
	int rc = call(c, OP_HELLO, &b, NULL, 0, -1, &p, &n);
	if (rc)
		return rc;
	struct msg_hello_rep m;
	rc = msg_hello_rep_decode(p, n, &m);
	if (!rc) {
		c->max_frame = m.max_frame;
		if (info) {
			info->proto = m.proto;
			info->block_tokens = m.block_tokens;
			info->max_frame = m.max_frame;
			info->workers = m.workers;
			info->peer_uid = m.peer_uid;
			info->host_budget = m.host_budget;
			copy_name(info->version, sizeof(info->version), m.version, m.version_len);
		}
	}
	free(p);
	return rc ? bad_reply(c, OP_HELLO) : 0;
}

static void geom_to_wire(const struct mnemo_geometry *g, struct proto_geometry *w)
{
	*w = (struct proto_geometry){
		.n_layers = g->n_layers, .n_kv_heads = g->n_kv_heads,
		.n_q_heads = g->n_q_heads, .head_dim = g->head_dim,
		.dtype = (uint32_t)g->dtype, .rope_theta = g->rope_theta,
	};
}

int mnemo_create(mnemo_client *c, const char *name, const struct mnemo_geometry *g, uint64_t *id)
{
	struct msg_create_req m = { .name = name, .name_len = (uint16_t)strnlen(name, 256) };
	if (m.name_len == 0 || m.name_len > PROTO_MAX_NAME)
		return set_err(c, -EINVAL, "a context name is 1..255 bytes");
	geom_to_wire(g, &m.geom);
	const char *why;
	if (proto_geometry_check(&m.geom, &why))
		return set_err(c, -EINVAL, "bad geometry: %s", why);
	struct wbuf b;
	wbuf_init(&b);
	msg_create_req_encode(&b, &m);
	uint8_t *p;
	uint32_t n;
	int rc = call(c, OP_CREATE, &b, NULL, 0, -1, &p, &n);
	if (rc)
		return rc;
	struct msg_create_rep r;
	rc = msg_create_rep_decode(p, n, &r);
	free(p);
	if (rc)
		return bad_reply(c, OP_CREATE);
	*id = r.id;
	return 0;
}

int mnemo_continue(mnemo_client *c, uint64_t parent, const char *name, uint64_t *id)
{
	struct msg_continue_req m = { .parent = parent, .name = name, .name_len = (uint16_t)strnlen(name, 256) };
	if (m.name_len == 0 || m.name_len > PROTO_MAX_NAME)
		return set_err(c, -EINVAL, "a context name is 1..255 bytes");
	if (!parent)
		return set_err(c, -EINVAL, "CONTINUE needs a parent context id");
	struct wbuf b;
	wbuf_init(&b);
	msg_continue_req_encode(&b, &m);
	uint8_t *p;
	uint32_t n;
	int rc = call(c, OP_CONTINUE, &b, NULL, 0, -1, &p, &n);
	if (rc)
		return rc;
	struct msg_create_rep r;
	rc = msg_create_rep_decode(p, n, &r);
	free(p);
	if (rc)
		return bad_reply(c, OP_CONTINUE);
	*id = r.id;
	return 0;
}

static bool in_arena(const mnemo_client *c, const void *p, size_t len)
{
	const uint8_t *b = p;
	return c->arena.base && b >= c->arena.base && len <= c->arena.size &&
	       (size_t)(b - c->arena.base) <= c->arena.size - len;
}

int mnemo_submit_append_ex(mnemo_client *c, uint64_t ctx, uint32_t layer_begin,
			   uint32_t layer_count, uint64_t token_begin, uint32_t n_tokens,
			   const void *data, size_t len, uint32_t flags, uint64_t *req_id)
{
	_Static_assert(MNEMO_APPEND_STREAM == PROTO_APPEND_STREAM && MNEMO_APPEND_SYNC == PROTO_APPEND_SYNC,
		       "flag values are the wire's");
	if (flags & ~PROTO_APPEND_FLAGS)
		return set_err(c, -EINVAL, "unknown APPEND flags 0x%x", flags & ~PROTO_APPEND_FLAGS);
	struct msg_append_req m = {
		.ctx = ctx, .layer_begin = layer_begin, .layer_count = layer_count,
		.token_begin = token_begin, .n_tokens = n_tokens, .flags = flags,
	};
	const void *tail = NULL;
	size_t tail_len = 0;
	if (in_arena(c, data, len)) {
		m.source = PROTO_SRC_SHM;
		m.shm_offset = (uint64_t)((const uint8_t *)data - c->arena.base);
		m.shm_length = len;
	} else {
		m.source = PROTO_SRC_INLINE;
		tail = data;      /* sent straight from the caller's buffer, not copied */
		tail_len = len;
	}
	struct wbuf b;
	wbuf_init(&b);
	struct msg_append_req hdr = m;
	hdr.data = NULL;
	hdr.data_len = 0;
	msg_append_req_encode(&b, &hdr);
	int rc = send_frame(c, OP_APPEND, &b, tail, tail_len, -1, req_id);
	wbuf_free(&b);
	return rc;
}

int mnemo_submit_append(mnemo_client *c, uint64_t ctx, uint32_t layer_begin,
			uint32_t layer_count, uint64_t token_begin, uint32_t n_tokens,
			const void *data, size_t len, uint64_t *req_id)
{
	return mnemo_submit_append_ex(c, ctx, layer_begin, layer_count, token_begin, n_tokens, data, len, 0,
				      req_id);
}

int mnemo_wait_append(mnemo_client *c, uint64_t req_id, uint64_t *context_tokens)
{
	uint8_t *p;
	uint32_t n;
	int rc = recv_reply(c, req_id, OP_APPEND, &p, &n);
	if (rc)
		return rc;
	struct msg_append_rep r;
	rc = msg_append_rep_decode(p, n, &r);
	free(p);
	if (rc)
		return bad_reply(c, OP_APPEND);
	if (context_tokens)
		*context_tokens = r.context_tokens;
	return 0;
}

int mnemo_append(mnemo_client *c, uint64_t ctx, uint32_t layer_begin, uint32_t layer_count,
		 uint64_t token_begin, uint32_t n_tokens, const void *data, size_t len,
		 uint64_t *context_tokens)
{
	uint64_t id;
	int rc = mnemo_submit_append(c, ctx, layer_begin, layer_count, token_begin, n_tokens,
				     data, len, &id);
	return rc ? rc : mnemo_wait_append(c, id, context_tokens);
}

static int ctxref_call(mnemo_client *c, uint16_t op, uint64_t id, const char *name,
		       uint8_t **p, uint32_t *n)
{
	struct proto_ctxref r = { .id = id, .name = name ? name : "",
				  .name_len = name ? (uint16_t)strnlen(name, 256) : 0 };
	if (r.name_len > PROTO_MAX_NAME)
		return set_err(c, -EINVAL, "a context name is 1..255 bytes");
	struct wbuf b;
	wbuf_init(&b);
	msg_ctxref_encode(&b, &r);
	return call(c, op, &b, NULL, 0, -1, p, n);
}

int mnemo_seal(mnemo_client *c, uint64_t ctx, uint64_t *tokens)
{
	uint8_t *p;
	uint32_t n;
	int rc = ctxref_call(c, OP_SEAL, ctx, NULL, &p, &n);
	if (rc)
		return rc;
	uint64_t t;
	rc = msg_u64_decode(p, n, &t);
	free(p);
	if (rc)
		return bad_reply(c, OP_SEAL);
	if (tokens)
		*tokens = t;
	return 0;
}

int mnemo_tokens(mnemo_client *c, uint64_t ctx, uint64_t salt, uint64_t token_begin, const uint32_t *ids,
		 uint32_t n, uint64_t *chunks)
{
	/* u32 ids on the wire are little-endian, as on every host libmnemo supports */
	struct msg_tokens_req m = { .ctx = ctx, .salt = salt, .token_begin = token_begin, .n = n,
				    .ids = (const uint8_t *)ids };
	struct wbuf b;
	wbuf_init(&b);
	msg_tokens_req_encode(&b, &m);
	uint8_t *p;
	uint32_t len;
	int rc = call(c, OP_TOKENS, &b, NULL, 0, -1, &p, &len);
	if (rc)
		return rc;
	struct msg_tokens_rep r;
	rc = msg_tokens_rep_decode(p, len, &r);
	free(p);
	if (rc)
		return bad_reply(c, OP_TOKENS);
	if (chunks)
		*chunks = r.chunks;
	return 0;
}

/* The query heads and head_dim of @p ctx in c->geom_*; ids are never reused, so they are remembered. */
static int ctx_shape(mnemo_client *c, uint64_t ctx)
{
	if (c->geom_ctx == ctx)
		return 0;
	struct mnemo_context_info ci;
	int rc = mnemo_stat(c, ctx, NULL, &ci);
	if (rc)
		return rc;
	c->geom_ctx = ctx;
	c->geom_q_heads = ci.geom.n_q_heads;
	c->geom_head_dim = ci.geom.head_dim;
	return 0;
}

static int queries_frame(mnemo_client *c, uint64_t ctx, uint32_t layer, uint64_t first, uint32_t n_pos,
			 const float *q, size_t bytes, struct msg_queries_rep *rep)
{
	struct msg_queries_req m = { .ctx = ctx, .layer = layer, .n_positions = n_pos, .first = first };
	struct wbuf b;
	wbuf_init(&b);
	msg_queries_req_encode(&b, &m);
	uint8_t *p;
	uint32_t len;
	/* f32 on the wire is little-endian, as on every host libmnemo supports */
	int rc = call(c, OP_QUERIES, &b, q, bytes, -1, &p, &len);
	if (rc)
		return rc;
	rc = msg_queries_rep_decode(p, len, rep);
	free(p);
	return rc ? bad_reply(c, OP_QUERIES) : 0;
}

int mnemo_queries(mnemo_client *c, uint64_t ctx, uint32_t layer, uint64_t first, uint32_t n_pos,
		  const float *q, struct mnemo_queries_info *info)
{
	if (!n_pos || !q)
		return set_err(c, -EINVAL, "QUERIES needs at least one position");
	int rc = ctx_shape(c, ctx);
	if (rc)
		return rc;
	const size_t heads = c->geom_q_heads, d = c->geom_head_dim, row = d * sizeof(float);
	const size_t per_frame = (c->max_frame - 64) / (heads * row);
	if (!per_frame)
		return set_err(c, -EMSGSIZE, "one position's queries are over the daemon's %u-byte frames", c->max_frame);
	struct msg_queries_rep rep = { 0 };
	if (n_pos <= per_frame) {
		rc = queries_frame(c, ctx, layer, first, n_pos, q, heads * n_pos * row, &rep);
	} else {
		/* a frame carries [heads][chunk][d]: gather each chunk's rows */
		float *buf = malloc(heads * per_frame * row);
		if (!buf)
			return set_err(c, -ENOMEM, "out of memory");
		for (uint32_t t = 0; !rc && t < n_pos;) {
			uint32_t k = n_pos - t < per_frame ? n_pos - t : (uint32_t)per_frame;
			for (size_t h = 0; h < heads; h++)
				memcpy(buf + h * k * d, q + (h * n_pos + t) * d, k * row);
			rc = queries_frame(c, ctx, layer, first + t, k, buf, heads * k * row, &rep);
			t += k;
		}
		free(buf);
	}
	if (!rc && info) {
		info->kept = rep.kept;
		info->seen = rep.seen;
	}
	return rc;
}

int mnemo_surprise(mnemo_client *c, uint64_t ctx, uint64_t first, uint32_t n, const float *s,
		   struct mnemo_surprise_info *info)
{
	if (!n || !s)
		return set_err(c, -EINVAL, "SURPRISE needs at least one token");
	const uint32_t per_frame = (c->max_frame - 64) / 4;
	struct msg_surprise_rep rep = { 0 };
	int rc = 0;
	for (uint32_t t = 0; !rc && t < n;) {
		uint32_t k = n - t < per_frame ? n - t : per_frame;
		struct msg_surprise_req m = { .ctx = ctx, .first = first + t, .n = k };
		struct wbuf b;
		wbuf_init(&b);
		msg_surprise_req_encode(&b, &m);
		uint8_t *p;
		uint32_t len;
		/* f32 on the wire is little-endian, as on every host libmnemo supports */
		if ((rc = call(c, OP_SURPRISE, &b, s + t, (size_t)k * 4, -1, &p, &len)))
			break;
		rc = msg_surprise_rep_decode(p, len, &rep) ? bad_reply(c, OP_SURPRISE) : 0;
		free(p);
		t += k;
	}
	if (!rc && info) {
		info->seen = rep.seen;
		info->events = rep.events;
	}
	return rc;
}

size_t mnemo_prefix_hashes(uint64_t salt, const uint32_t *ids, size_t n, uint64_t *out)
{
	size_t k = n / MNEMO_CHUNK_TOKENS;
	for (size_t i = 0; i < k; i++)
		out[i] = proto_chunk_hash(i ? out[i - 1] : 0, salt, ids + i * MNEMO_CHUNK_TOKENS);
	return k;
}

static int lookup_call(mnemo_client *c, const struct msg_lookup_req *m, struct mnemo_lookup_info *out)
{
	struct wbuf b;
	wbuf_init(&b);
	msg_lookup_req_encode(&b, m);
	uint8_t *p;
	uint32_t len;
	int rc = call(c, OP_LOOKUP, &b, NULL, 0, -1, &p, &len);
	if (rc)
		return rc;
	struct msg_lookup_rep r;
	rc = msg_lookup_rep_decode(p, len, &r);
	free(p);
	if (rc)
		return bad_reply(c, OP_LOOKUP);
	out->ctx = r.ctx;
	out->tokens = r.tokens;
	out->probes = r.probes;
	return 0;
}

int mnemo_lookup(mnemo_client *c, uint64_t salt, const uint32_t *ids, uint32_t n, struct mnemo_lookup_info *out)
{
	struct msg_lookup_req m = { .salt = salt, .kind = PROTO_LOOKUP_IDS, .n = n, .data = (const uint8_t *)ids };
	return lookup_call(c, &m, out);
}

int mnemo_lookup_hashes(mnemo_client *c, const uint64_t *hashes, uint32_t n, struct mnemo_lookup_info *out)
{
	struct msg_lookup_req m = { .kind = PROTO_LOOKUP_HASHES, .n = n, .data = (const uint8_t *)hashes };
	return lookup_call(c, &m, out);
}

int mnemo_index(mnemo_client *c, uint64_t ctx, enum mnemo_policy policy, uint32_t layer_begin,
		uint32_t layer_count, struct mnemo_index_info *info)
{
	struct msg_index_req m = { .ctx = ctx, .policy = (uint32_t)policy, .layer_begin = layer_begin,
				   .layer_count = layer_count };
	struct wbuf b;
	wbuf_init(&b);
	msg_index_req_encode(&b, &m);
	uint8_t *p;
	uint32_t n;
	int rc = call(c, OP_INDEX, &b, NULL, 0, -1, &p, &n);
	if (rc)
		return rc;
	struct msg_index_rep r;
	rc = msg_index_rep_decode(p, n, &r);
	free(p);
	if (rc)
		return bad_reply(c, OP_INDEX);
	if (info) {
		info->built = r.built;
		info->loaded = r.loaded;
		info->present = r.present;
		info->elapsed_ns = r.build_ns;
	}
	return 0;
}

int mnemo_submit_attend(mnemo_client *c, uint64_t ctx, uint32_t layer, enum mnemo_policy policy,
			uint32_t budget, uint64_t token_begin, uint64_t token_end, const float *q,
			uint32_t n_floats, uint64_t *req_id)
{
	struct mnemo_attend_opts o = { .budget = budget };
	return mnemo_submit_attend_opts(c, ctx, layer, policy, &o, token_begin, token_end, q, n_floats, req_id);
}

int mnemo_submit_attend_opts(mnemo_client *c, uint64_t ctx, uint32_t layer, enum mnemo_policy policy,
			     const struct mnemo_attend_opts *opts, uint64_t token_begin, uint64_t token_end,
			     const float *q, uint32_t n_floats, uint64_t *req_id)
{
	struct msg_attend_req m = {
		.ctx = ctx, .layer = layer, .policy = (uint32_t)policy,
		.budget = opts ? opts->budget : 0, .sinks = opts ? opts->sinks : 0, .window = opts ? opts->window : 0,
		.token_begin = token_begin, .token_end = token_end,
	};
	struct wbuf b;
	wbuf_init(&b);
	msg_attend_req_encode(&b, &m);
	/* f32 on the wire is little-endian, as on every host libmnemo supports */
	int rc = send_frame(c, OP_ATTEND, &b, q, (size_t)n_floats * 4, -1, req_id);
	wbuf_free(&b);
	return rc;
}

int mnemo_wait_attend(mnemo_client *c, uint64_t req_id, float *o, float *lse,
		      uint32_t n_q_heads, uint32_t head_dim, struct mnemo_attend_info *info)
{
	uint8_t *p;
	uint32_t n;
	int rc = recv_reply(c, req_id, OP_ATTEND, &p, &n);
	if (rc)
		return rc;
	struct msg_attend_rep r;
	rc = msg_attend_rep_decode(p, n, &r);
	if (!rc && (r.n_q_heads != n_q_heads || r.head_dim != head_dim))
		rc = -EPROTO;
	if (!rc) {
		proto_f32_from_wire(o, r.o, (size_t)n_q_heads * head_dim);
		proto_f32_from_wire(lse, r.lse, n_q_heads);
		if (info) {
			info->scanned = r.scanned;
			info->loaded = r.loaded;
			info->compute_ns = r.compute_ns;
		}
	}
	free(p);
	return rc ? bad_reply(c, OP_ATTEND) : 0;
}

int mnemo_attend(mnemo_client *c, uint64_t ctx, uint32_t layer, enum mnemo_policy policy,
		 uint64_t token_begin, uint64_t token_end, const float *q,
		 float *o, float *lse, struct mnemo_attend_info *info)
{
	return mnemo_attend_ex(c, ctx, layer, policy, 0, token_begin, token_end, q, o, lse, info);
}

int mnemo_attend_ex(mnemo_client *c, uint64_t ctx, uint32_t layer, enum mnemo_policy policy,
		    uint32_t budget, uint64_t token_begin, uint64_t token_end, const float *q,
		    float *o, float *lse, struct mnemo_attend_info *info)
{
	struct mnemo_attend_opts op = { .budget = budget };
	return mnemo_attend_opts(c, ctx, layer, policy, &op, token_begin, token_end, q, o, lse, info);
}

int mnemo_attend_opts(mnemo_client *c, uint64_t ctx, uint32_t layer, enum mnemo_policy policy,
		      const struct mnemo_attend_opts *opts, uint64_t token_begin, uint64_t token_end,
		      const float *q, float *o, float *lse, struct mnemo_attend_info *info)
{
	int rc = ctx_shape(c, ctx);
	if (rc)
		return rc;
	uint64_t id;
	rc = mnemo_submit_attend_opts(c, ctx, layer, policy, opts, token_begin, token_end, q,
				      c->geom_q_heads * c->geom_head_dim, &id);
	return rc ? rc : mnemo_wait_attend(c, id, o, lse, c->geom_q_heads, c->geom_head_dim, info);
}

int mnemo_fetch(mnemo_client *c, uint64_t ctx, uint32_t layer, const uint64_t *ids,
		uint32_t n_ids, void *out, size_t out_len)
{
	/* u64 ids on the wire are little-endian, as on every host libmnemo supports */
	struct msg_fetch_req m = { .ctx = ctx, .layer = layer, .n_ids = n_ids,
				   .ids = (const uint8_t *)ids };
	if (in_arena(c, out, out_len)) {
		m.dest = PROTO_SRC_SHM;
		m.shm_offset = (uint64_t)((uint8_t *)out - c->arena.base);
		m.shm_length = out_len;
	}
	struct wbuf b;
	wbuf_init(&b);
	msg_fetch_req_encode(&b, &m);
	uint8_t *p;
	uint32_t n;
	int rc = call(c, OP_FETCH, &b, NULL, 0, -1, &p, &n);
	if (rc)
		return rc;
	struct msg_fetch_rep r;
	rc = msg_fetch_rep_decode(p, n, &r);
	if (!rc && r.n_ids != n_ids)
		rc = -EPROTO;
	if (!rc && r.bytes > out_len) {
		free(p);
		return set_err(c, -ENOBUFS, "FETCH needs %llu bytes, buffer has %zu",
			       (unsigned long long)r.bytes, out_len);
	}
	if (!rc && r.dest == PROTO_SRC_INLINE)
		memcpy(out, r.data, r.bytes);
	free(p);
	return rc ? bad_reply(c, OP_FETCH) : 0;
}

int mnemo_drop(mnemo_client *c, uint64_t id, const char *name)
{
	uint8_t *p;
	uint32_t n;
	int rc = ctxref_call(c, OP_DROP, id, name, &p, &n);
	if (!rc)
		free(p);
	return rc;
}

static void record_to_info(const struct proto_ctx_record *r, struct mnemo_context_info *o)
{
	o->id = r->id;
	copy_name(o->name, sizeof(o->name), r->name, r->name_len);
	o->geom = (struct mnemo_geometry){
		.n_layers = r->geom.n_layers, .n_kv_heads = r->geom.n_kv_heads,
		.n_q_heads = r->geom.n_q_heads, .head_dim = r->geom.head_dim,
		.dtype = (enum mnemo_dtype)r->geom.dtype, .rope_theta = r->geom.rope_theta,
	};
	o->sealed = r->state == PROTO_STATE_SEALED;
	o->recovered = r->state == PROTO_STATE_RECOVERED;
	o->owner_uid = r->owner_uid;
	o->tokens = r->tokens;
	o->bytes = r->bytes;
	o->shared = (r->flags & PROTO_CTX_SHARED) != 0;
	o->surprise_seen = r->surprise_seen;
	o->events = r->events;
	o->segmentation = r->segmentation;
	o->parent = r->parent;
	o->parent_tokens = r->parent_tokens;
}

int mnemo_share(mnemo_client *c, uint64_t id, const char *name, int shared)
{
	struct msg_share_req m = { .ref = { .id = id, .name = name, .name_len = (uint16_t)(name ? strlen(name) : 0) },
				   .shared = shared ? 1 : 0 };
	if (name && strlen(name) > PROTO_MAX_NAME)
		return set_err(c, -EINVAL, "context name longer than %u bytes", PROTO_MAX_NAME);
	struct wbuf b;
	wbuf_init(&b);
	msg_share_req_encode(&b, &m);
	uint8_t *p;
	uint32_t n;
	int rc = call(c, OP_SHARE, &b, NULL, 0, -1, &p, &n);
	if (rc)
		return rc;
	free(p);
	return n ? bad_reply(c, OP_SHARE) : 0;
}

int mnemo_stat(mnemo_client *c, uint64_t id, const char *name, struct mnemo_context_info *out)
{
	if (id == 0 && (!name || !*name))
		return set_err(c, -EINVAL, "STAT of a context needs an id or a name");
	uint8_t *p;
	uint32_t n;
	int rc = ctxref_call(c, OP_STAT, id, name, &p, &n);
	if (rc)
		return rc;
	struct rbuf r;
	struct proto_ctx_record rec;
	rbuf_init(&r, p, n);
	uint32_t kind = rbuf_u32(&r);
	rc = proto_ctx_record_read(&r, &rec);
	if (!rc)
		rc = rbuf_end(&r);
	if (!rc && kind != PROTO_STAT_CONTEXT)
		rc = -EPROTO;
	if (!rc)
		record_to_info(&rec, out);
	free(p);
	return rc ? bad_reply(c, OP_STAT) : 0;
}

int mnemo_stat_daemon(mnemo_client *c, struct mnemo_daemon_info *out)
{
	uint8_t *p;
	uint32_t n;
	int rc = ctxref_call(c, OP_STAT, 0, NULL, &p, &n);
	if (rc)
		return rc;
	struct rbuf r;
	struct proto_daemon_record d;
	rbuf_init(&r, p, n);
	uint32_t kind = rbuf_u32(&r);
	rc = proto_daemon_record_read(&r, &d);
	if (!rc)
		rc = rbuf_end(&r);
	if (!rc && kind != PROTO_STAT_DAEMON)
		rc = -EPROTO;
	if (!rc) {
		out->uptime_ms = d.uptime_ms;
		out->connections = d.connections;
		out->contexts = d.contexts;
		out->workers = d.workers;
		out->block_tokens = d.block_tokens;
		out->host_used = d.host_used;
		out->host_budget = d.host_budget;
		out->requests = d.requests;
		out->errors = d.errors;
		out->ssd_used = d.ssd_used;
		out->ssd_max = d.ssd_max;
		out->hits = d.hits;
		out->misses = d.misses;
		out->evictions = d.evictions;
		out->ssd_reads = d.ssd_reads;
		out->ssd_writes = d.ssd_writes;
		out->ssd_read_bytes = d.ssd_read_bytes;
		out->ssd_write_bytes = d.ssd_write_bytes;
		out->bad_blocks = d.bad_blocks;
		out->index_builds = d.index_builds;
		out->index_loads = d.index_loads;
		out->index_bytes = d.index_bytes;
		out->policy_attends = d.policy_attends;
		out->policy_pick_ns = d.policy_pick_ns;
		out->policy_search_ns = d.policy_search_ns;
		out->policy_fold_ns = d.policy_fold_ns;
		out->policy_pin_ns = d.policy_pin_ns;
		out->cpu_ns = d.cpu_ns;
		copy_name(out->kernels, sizeof(out->kernels), d.kernels, d.kernels_len);
	}
	free(p);
	return rc ? bad_reply(c, OP_STAT) : 0;
}

int mnemo_list(mnemo_client *c, struct mnemo_context_info **out, size_t *count)
{
	struct mnemo_context_info *all = NULL;
	size_t have = 0;
	uint32_t offset = 0;
	int rc = 0;
	for (;;) {
		struct wbuf b;
		wbuf_init(&b);
		msg_list_req_encode(&b, &(struct msg_list_req){ .offset = offset, .max = PROTO_MAX_LIST });
		uint8_t *p;
		uint32_t n;
		rc = call(c, OP_LIST, &b, NULL, 0, -1, &p, &n);
		if (rc)
			goto fail;
		struct rbuf r;
		rbuf_init(&r, p, n);
		uint32_t total = rbuf_u32(&r);
		uint32_t cnt = rbuf_u32(&r);
		if (r.err || cnt > PROTO_MAX_LIST || cnt > n / 8) {
			free(p);
			rc = bad_reply(c, OP_LIST);
			goto fail;
		}
		struct mnemo_context_info *g = realloc(all, (have + cnt + 1) * sizeof(*all));
		if (!g) {
			free(p);
			rc = -ENOMEM;
			goto fail;
		}
		all = g;
		for (uint32_t i = 0; i < cnt; i++) {
			struct proto_ctx_record rec;
			if (proto_ctx_record_read(&r, &rec))
				break;
			record_to_info(&rec, &all[have++]);
		}
		rc = rbuf_end(&r);
		free(p);
		if (rc) {
			rc = bad_reply(c, OP_LIST);
			goto fail;
		}
		offset += cnt;
		if (cnt == 0 || offset >= total)
			break;
	}
	*out = all;
	*count = have;
	return 0;
fail:
	free(all);
	return rc;
}

int mnemo_shm_attach(mnemo_client *c, size_t size, void **base)
{
	struct shm_arena a;
	int rc = shm_arena_create(size, &a);
	if (rc)
		return set_err(c, rc, "creating a %zu-byte arena: %s", size, strerror(-rc));
	struct wbuf b;
	wbuf_init(&b);
	msg_shm_attach_req_encode(&b, &(struct msg_shm_attach_req){ .size = size });
	uint8_t *p;
	uint32_t n;
	rc = call(c, OP_SHM_ATTACH, &b, NULL, 0, a.fd, &p, &n);
	if (rc) {
		shm_arena_close(&a);
		return rc;
	}
	free(p);
	shm_arena_close(&c->arena);
	c->arena = a;
	*base = a.base;
	return 0;
}

void mnemo_merge(uint32_t head_dim, float *o1, float *lse1, const float *o2, float lse2)
{
	if (lse2 == -INFINITY)
		return;
	if (*lse1 == -INFINITY) {
		memcpy(o1, o2, (size_t)head_dim * sizeof(float));
		*lse1 = lse2;
		return;
	}
	float m = *lse1 > lse2 ? *lse1 : lse2;
	float lse = m + logf(expf(*lse1 - m) + expf(lse2 - m));
	float w1 = expf(*lse1 - lse), w2 = expf(lse2 - lse);
	for (uint32_t i = 0; i < head_dim; i++)
		o1[i] = w1 * o1[i] + w2 * o2[i];
	*lse1 = lse;
}
