/* Wire protocol v1 codec. See ipc/PROTOCOL.md. */
#include "proto.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

static const char *const op_names[OP_COUNT] = {
	[OP_HELLO] = "HELLO", [OP_CREATE] = "CREATE", [OP_APPEND] = "APPEND",
	[OP_SEAL] = "SEAL", [OP_ATTEND] = "ATTEND", [OP_FETCH] = "FETCH",
	[OP_DROP] = "DROP", [OP_STAT] = "STAT", [OP_LIST] = "LIST",
	[OP_SHM_ATTACH] = "SHM_ATTACH",
	[OP_INDEX] = "INDEX",
	[OP_TOKENS] = "TOKENS",
	[OP_LOOKUP] = "LOOKUP",
	[OP_SHARE] = "SHARE",
	[OP_QUERIES] = "QUERIES",
	[OP_SURPRISE] = "SURPRISE",
	[OP_CONTINUE] = "CONTINUE",
};

const char *proto_op_name(uint32_t op)
{
	return op < OP_COUNT && op_names[op] ? op_names[op] : "?";
}

/* Explicit byte order: the protocol is little-endian on every host. */
static void put16(uint8_t *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = v >> (8 * i); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = v >> (8 * i); }
static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const uint8_t *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

void proto_header_encode(uint8_t out[PROTO_HEADER_SIZE], const struct proto_header *h)
{
	put32(out, h->magic);
	put16(out + 4, h->version);
	put16(out + 6, h->opcode);
	put32(out + 8, h->flags);
	put32(out + 12, (uint32_t)h->status);
	put64(out + 16, h->req_id);
	put32(out + 24, h->length);
	put32(out + 28, h->reserved);
}

void proto_header_decode(const uint8_t in[PROTO_HEADER_SIZE], struct proto_header *h)
{
	h->magic = get32(in);
	h->version = get16(in + 4);
	h->opcode = get16(in + 6);
	h->flags = get32(in + 8);
	h->status = (int32_t)get32(in + 12);
	h->req_id = get64(in + 16);
	h->length = get32(in + 24);
	h->reserved = get32(in + 28);
}

int proto_header_check(const struct proto_header *h, uint32_t max_frame, bool want_reply)
{
	if (h->magic != PROTO_MAGIC || h->reserved != 0)
		return -EBADMSG;
	if (h->version != PROTO_VERSION)
		return -EPROTONOSUPPORT;
	if ((h->flags & ~PROTO_FLAG_REPLY) != 0)
		return -EBADMSG;
	if (!!(h->flags & PROTO_FLAG_REPLY) != want_reply)
		return -EBADMSG;
	if (!want_reply && h->status != 0)
		return -EBADMSG;
	if (h->length > max_frame)
		return -EMSGSIZE;
	return 0;
}

/* ---- wbuf ---- */

void wbuf_init(struct wbuf *b) { memset(b, 0, sizeof(*b)); }

void wbuf_free(struct wbuf *b)
{
	free(b->data);
	wbuf_init(b);
}

uint8_t *wbuf_reserve(struct wbuf *b, size_t n)
{
	if (b->err)
		return NULL;
	if (n > SIZE_MAX - b->len) {
		b->err = -ENOMEM;
		return NULL;
	}
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap = cap > SIZE_MAX / 2 ? b->len + n : cap * 2;
		uint8_t *d = realloc(b->data, cap);
		if (!d) {
			b->err = -ENOMEM;
			return NULL;
		}
		b->data = d;
		b->cap = cap;
	}
	uint8_t *p = b->data + b->len;
	b->len += n;
	return p;
}

void wbuf_put(struct wbuf *b, const void *p, size_t n)
{
	uint8_t *d = wbuf_reserve(b, n);
	if (d && n)
		memcpy(d, p, n);
}

void wbuf_u16(struct wbuf *b, uint16_t v) { uint8_t *d = wbuf_reserve(b, 2); if (d) put16(d, v); }
void wbuf_u32(struct wbuf *b, uint32_t v) { uint8_t *d = wbuf_reserve(b, 4); if (d) put32(d, v); }
void wbuf_u64(struct wbuf *b, uint64_t v) { uint8_t *d = wbuf_reserve(b, 8); if (d) put64(d, v); }

void wbuf_f32(struct wbuf *b, float v)
{
	uint32_t u;
	memcpy(&u, &v, 4);
	wbuf_u32(b, u);
}

void wbuf_str(struct wbuf *b, const char *s, size_t n)
{
	if (n > UINT16_MAX)
		n = UINT16_MAX;
	wbuf_u16(b, (uint16_t)n);
	wbuf_put(b, s, n);
}

uint8_t *wbuf_steal(struct wbuf *b, size_t *len)
{
	uint8_t *d = b->data;
	*len = b->len;
	wbuf_init(b);
	return d;
}

/* ---- rbuf ---- */

void rbuf_init(struct rbuf *r, const void *p, size_t len)
{
	r->p = p;
	r->len = len;
	r->off = 0;
	r->err = 0;
}

const uint8_t *rbuf_bytes(struct rbuf *r, size_t n)
{
	if (r->err)
		return NULL;
	if (n > r->len - r->off) {
		r->err = -EPROTO;
		return NULL;
	}
	const uint8_t *p = r->p + r->off;
	r->off += n;
	return p;
}

uint16_t rbuf_u16(struct rbuf *r) { const uint8_t *p = rbuf_bytes(r, 2); return p ? get16(p) : 0; }
uint32_t rbuf_u32(struct rbuf *r) { const uint8_t *p = rbuf_bytes(r, 4); return p ? get32(p) : 0; }
uint64_t rbuf_u64(struct rbuf *r) { const uint8_t *p = rbuf_bytes(r, 8); return p ? get64(p) : 0; }

float rbuf_f32(struct rbuf *r)
{
	uint32_t u = rbuf_u32(r);
	float f;
	memcpy(&f, &u, 4);
	return f;
}

const char *rbuf_str(struct rbuf *r, size_t max, uint16_t *n)
{
	uint16_t len = rbuf_u16(r);
	if (r->err)
		return NULL;
	if (len > max) {
		r->err = -EMSGSIZE;
		return NULL;
	}
	*n = len;
	return (const char *)rbuf_bytes(r, len);
}

int rbuf_end(const struct rbuf *r)
{
	if (r->err)
		return r->err;
	return r->off == r->len ? 0 : -EPROTO;
}

/* ---- geometry ---- */

size_t proto_dtype_size(uint32_t dtype)
{
	switch (dtype) {
	case 0: return 4;
	case 1: return 2;
	case 2: return 2;
	default: return 0;
	}
}

int proto_geometry_check(const struct proto_geometry *g, const char **why)
{
	const char *w = NULL;
	if (g->n_layers < 1 || g->n_layers > PROTO_MAX_LAYERS)
		w = "n_layers must be 1..1024";
	else if (g->n_kv_heads < 1 || g->n_kv_heads > PROTO_MAX_HEADS)
		w = "n_kv_heads must be 1..1024";
	else if (g->n_q_heads < 1 || g->n_q_heads > PROTO_MAX_HEADS)
		w = "n_q_heads must be 1..1024";
	else if (g->n_q_heads % g->n_kv_heads)
		w = "n_q_heads must be a multiple of n_kv_heads";
	else if (g->n_q_heads / g->n_kv_heads > PROTO_MAX_GROUP)
		w = "at most 64 query heads per KV head";
	else if (g->head_dim < 1 || g->head_dim > PROTO_MAX_HEAD_DIM)
		w = "head_dim must be 1..1024";
	else if (!proto_dtype_size(g->dtype))
		w = "dtype must be 0 (f32), 1 (f16) or 2 (bf16)";
	else if (!(g->rope_theta >= 0.0f) || g->rope_theta > 1e12f)
		w = "rope_theta must be a finite value >= 0";
	else if (g->flags != 0)
		w = "geometry flags must be 0";
	if (why)
		*why = w;
	return w ? -EINVAL : 0;
}

static void geom_put(struct wbuf *b, const struct proto_geometry *g)
{
	wbuf_u32(b, g->n_layers);
	wbuf_u32(b, g->n_kv_heads);
	wbuf_u32(b, g->n_q_heads);
	wbuf_u32(b, g->head_dim);
	wbuf_u32(b, g->dtype);
	wbuf_f32(b, g->rope_theta);
	wbuf_u32(b, g->flags);
}

static void geom_get(struct rbuf *r, struct proto_geometry *g)
{
	g->n_layers = rbuf_u32(r);
	g->n_kv_heads = rbuf_u32(r);
	g->n_q_heads = rbuf_u32(r);
	g->head_dim = rbuf_u32(r);
	g->dtype = rbuf_u32(r);
	g->rope_theta = rbuf_f32(r);
	g->flags = rbuf_u32(r);
}

/* ---- messages ---- */

void msg_hello_req_encode(struct wbuf *b, const struct msg_hello_req *m)
{
	wbuf_u32(b, m->proto);
	wbuf_u32(b, m->flags);
}

int msg_hello_req_decode(const void *p, size_t n, struct msg_hello_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->proto = rbuf_u32(&r);
	m->flags = rbuf_u32(&r);
	return rbuf_end(&r);
}

void msg_hello_rep_encode(struct wbuf *b, const struct msg_hello_rep *m)
{
	wbuf_u32(b, m->proto);
	wbuf_u32(b, m->block_tokens);
	wbuf_u32(b, m->max_frame);
	wbuf_u32(b, m->workers);
	wbuf_u32(b, m->peer_uid);
	wbuf_u64(b, m->host_budget);
	wbuf_str(b, m->version, m->version_len);
}

int msg_hello_rep_decode(const void *p, size_t n, struct msg_hello_rep *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->proto = rbuf_u32(&r);
	m->block_tokens = rbuf_u32(&r);
	m->max_frame = rbuf_u32(&r);
	m->workers = rbuf_u32(&r);
	m->peer_uid = rbuf_u32(&r);
	m->host_budget = rbuf_u64(&r);
	m->version = rbuf_str(&r, PROTO_MAX_NAME, &m->version_len);
	return rbuf_end(&r);
}

static int check_name(const char *s, uint16_t n)
{
	if (n == 0)
		return -EPROTO;
	for (uint16_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
			return -EPROTO;
	return 0;
}

void msg_create_req_encode(struct wbuf *b, const struct msg_create_req *m)
{
	wbuf_str(b, m->name, m->name_len);
	geom_put(b, &m->geom);
}

int msg_create_req_decode(const void *p, size_t n, struct msg_create_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->name = rbuf_str(&r, PROTO_MAX_NAME, &m->name_len);
	geom_get(&r, &m->geom);
	int rc = rbuf_end(&r);
	return rc ? rc : check_name(m->name, m->name_len);
}

void msg_create_rep_encode(struct wbuf *b, const struct msg_create_rep *m) { wbuf_u64(b, m->id); }

void msg_continue_req_encode(struct wbuf *b, const struct msg_continue_req *m)
{
	wbuf_u64(b, m->parent);
	wbuf_str(b, m->name, m->name_len);
}

int msg_continue_req_decode(const void *p, size_t n, struct msg_continue_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->parent = rbuf_u64(&r);
	m->name = rbuf_str(&r, PROTO_MAX_NAME, &m->name_len);
	int rc = rbuf_end(&r);
	return rc ? rc : !m->parent ? -EPROTO : check_name(m->name, m->name_len);
}

int msg_create_rep_decode(const void *p, size_t n, struct msg_create_rep *m)
{
	return msg_u64_decode(p, n, &m->id);
}

void msg_u64_encode(struct wbuf *b, uint64_t v) { wbuf_u64(b, v); }

int msg_u64_decode(const void *p, size_t n, uint64_t *v)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	*v = rbuf_u64(&r);
	return rbuf_end(&r);
}

void msg_append_req_encode(struct wbuf *b, const struct msg_append_req *m)
{
	wbuf_u64(b, m->ctx);
	wbuf_u32(b, m->layer_begin);
	wbuf_u32(b, m->layer_count);
	wbuf_u64(b, m->token_begin);
	wbuf_u32(b, m->n_tokens);
	wbuf_u32(b, m->source | m->flags);
	wbuf_u64(b, m->shm_offset);
	wbuf_u64(b, m->shm_length);
	if (m->source == PROTO_SRC_INLINE)
		wbuf_put(b, m->data, m->data_len);
}

int msg_append_req_decode(const void *p, size_t n, struct msg_append_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->ctx = rbuf_u64(&r);
	m->layer_begin = rbuf_u32(&r);
	m->layer_count = rbuf_u32(&r);
	m->token_begin = rbuf_u64(&r);
	m->n_tokens = rbuf_u32(&r);
	const uint32_t source = rbuf_u32(&r);
	m->source = source & PROTO_SRC_MASK;
	m->flags = source & ~PROTO_SRC_MASK;
	m->shm_offset = rbuf_u64(&r);
	m->shm_length = rbuf_u64(&r);
	if (r.err)
		return r.err;
	if (m->flags & ~PROTO_APPEND_FLAGS)
		return -EPROTO;
	if (m->source == PROTO_SRC_INLINE) {
		m->data_len = r.len - r.off;
		m->data = rbuf_bytes(&r, m->data_len);
	} else if (m->source == PROTO_SRC_SHM) {
		m->data = NULL;
		m->data_len = 0;
	} else {
		return -EPROTO;
	}
	if (m->layer_count < 1 || m->layer_count > PROTO_MAX_LAYERS)
		return -EPROTO;
	return rbuf_end(&r);
}

void msg_append_rep_encode(struct wbuf *b, const struct msg_append_rep *m)
{
	wbuf_u64(b, m->layer_tokens);
	wbuf_u64(b, m->context_tokens);
}

int msg_append_rep_decode(const void *p, size_t n, struct msg_append_rep *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->layer_tokens = rbuf_u64(&r);
	m->context_tokens = rbuf_u64(&r);
	return rbuf_end(&r);
}

void msg_ctxref_encode(struct wbuf *b, const struct proto_ctxref *m)
{
	wbuf_u64(b, m->id);
	wbuf_str(b, m->name, m->name_len);
}

int msg_ctxref_decode(const void *p, size_t n, struct proto_ctxref *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->id = rbuf_u64(&r);
	m->name = rbuf_str(&r, PROTO_MAX_NAME, &m->name_len);
	int rc = rbuf_end(&r);
	if (rc)
		return rc;
	return m->name_len ? check_name(m->name, m->name_len) : 0;
}

void msg_share_req_encode(struct wbuf *b, const struct msg_share_req *m)
{
	wbuf_u64(b, m->ref.id);
	wbuf_str(b, m->ref.name, m->ref.name_len);
	wbuf_u32(b, m->shared);
}

int msg_share_req_decode(const void *p, size_t n, struct msg_share_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->ref.id = rbuf_u64(&r);
	m->ref.name = rbuf_str(&r, PROTO_MAX_NAME, &m->ref.name_len);
	m->shared = rbuf_u32(&r);
	int rc = rbuf_end(&r);
	if (rc)
		return rc;
	if (m->shared > 1)
		return -EPROTO;
	return m->ref.name_len ? check_name(m->ref.name, m->ref.name_len) : 0;
}

void msg_attend_req_encode(struct wbuf *b, const struct msg_attend_req *m)
{
	wbuf_u64(b, m->ctx);
	wbuf_u32(b, m->layer);
	wbuf_u32(b, m->policy);
	wbuf_u64(b, m->token_begin);
	wbuf_u64(b, m->token_end);
	wbuf_u32(b, m->budget);
	wbuf_u16(b, m->sinks);
	wbuf_u16(b, m->window);
	wbuf_put(b, m->q, m->q_len);
}

int msg_attend_req_decode(const void *p, size_t n, struct msg_attend_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->ctx = rbuf_u64(&r);
	m->layer = rbuf_u32(&r);
	m->policy = rbuf_u32(&r);
	m->token_begin = rbuf_u64(&r);
	m->token_end = rbuf_u64(&r);
	m->budget = rbuf_u32(&r);
	m->sinks = rbuf_u16(&r);
	m->window = rbuf_u16(&r);
	if (r.err)
		return r.err;
	m->q_len = r.len - r.off;
	if (m->q_len == 0 || m->q_len % 4 ||
	    m->q_len > (size_t)PROTO_MAX_HEADS * PROTO_MAX_HEAD_DIM * 4)
		return -EPROTO;
	m->q = rbuf_bytes(&r, m->q_len);
	return rbuf_end(&r);
}

void msg_attend_rep_encode(struct wbuf *b, const struct msg_attend_rep *m)
{
	wbuf_u32(b, m->n_q_heads);
	wbuf_u32(b, m->head_dim);
	wbuf_u64(b, m->scanned);
	wbuf_u64(b, m->loaded);
	wbuf_u64(b, m->compute_ns);
	size_t no = (size_t)m->n_q_heads * m->head_dim;
	uint8_t *d = wbuf_reserve(b, (no + m->n_q_heads) * 4);
	if (!d)
		return;
	for (size_t i = 0; i < no; i++, d += 4) {
		uint32_t u;
		memcpy(&u, &m->o[i], 4);
		put32(d, u);
	}
	for (size_t i = 0; i < m->n_q_heads; i++, d += 4) {
		uint32_t u;
		memcpy(&u, &m->lse[i], 4);
		put32(d, u);
	}
}

int msg_attend_rep_decode(const void *p, size_t n, struct msg_attend_rep *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->n_q_heads = rbuf_u32(&r);
	m->head_dim = rbuf_u32(&r);
	m->scanned = rbuf_u64(&r);
	m->loaded = rbuf_u64(&r);
	m->compute_ns = rbuf_u64(&r);
	if (r.err)
		return r.err;
	if (m->n_q_heads > PROTO_MAX_HEADS || m->head_dim > PROTO_MAX_HEAD_DIM)
		return -EMSGSIZE;
	size_t no = (size_t)m->n_q_heads * m->head_dim;
	m->o = (const float *)rbuf_bytes(&r, no * 4);
	m->lse = (const float *)rbuf_bytes(&r, (size_t)m->n_q_heads * 4);
	return rbuf_end(&r);
}

void msg_fetch_req_encode(struct wbuf *b, const struct msg_fetch_req *m)
{
	wbuf_u64(b, m->ctx);
	wbuf_u32(b, m->layer);
	wbuf_u32(b, m->n_ids);
	wbuf_u32(b, m->dest);
	wbuf_u32(b, m->flags);
	wbuf_u64(b, m->shm_offset);
	wbuf_u64(b, m->shm_length);
	wbuf_put(b, m->ids, (size_t)m->n_ids * 8);
}

int msg_fetch_req_decode(const void *p, size_t n, struct msg_fetch_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->ctx = rbuf_u64(&r);
	m->layer = rbuf_u32(&r);
	m->n_ids = rbuf_u32(&r);
	m->dest = rbuf_u32(&r);
	m->flags = rbuf_u32(&r);
	m->shm_offset = rbuf_u64(&r);
	m->shm_length = rbuf_u64(&r);
	if (r.err)
		return r.err;
	if (m->n_ids < 1 || m->n_ids > PROTO_MAX_FETCH_IDS)
		return -EMSGSIZE;
	if (m->dest != PROTO_SRC_INLINE && m->dest != PROTO_SRC_SHM)
		return -EPROTO;
	m->ids = rbuf_bytes(&r, (size_t)m->n_ids * 8);
	return rbuf_end(&r);
}

void msg_fetch_rep_encode(struct wbuf *b, const struct msg_fetch_rep *m)
{
	wbuf_u32(b, m->n_ids);
	wbuf_u32(b, m->dest);
	wbuf_u64(b, m->bytes);
	if (m->dest == PROTO_SRC_INLINE)
		wbuf_put(b, m->data, m->bytes);
}

int msg_fetch_rep_decode(const void *p, size_t n, struct msg_fetch_rep *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->n_ids = rbuf_u32(&r);
	m->dest = rbuf_u32(&r);
	m->bytes = rbuf_u64(&r);
	if (r.err)
		return r.err;
	if (m->dest == PROTO_SRC_INLINE)
		m->data = rbuf_bytes(&r, m->bytes);
	else if (m->dest == PROTO_SRC_SHM)
		m->data = NULL;
	else
		return -EPROTO;
	return rbuf_end(&r);
}

void msg_index_req_encode(struct wbuf *b, const struct msg_index_req *m)
{
	wbuf_u64(b, m->ctx);
	wbuf_u32(b, m->policy);
	wbuf_u32(b, m->layer_begin);
	wbuf_u32(b, m->layer_count);
}

int msg_index_req_decode(const void *p, size_t n, struct msg_index_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->ctx = rbuf_u64(&r);
	m->policy = rbuf_u32(&r);
	m->layer_begin = rbuf_u32(&r);
	m->layer_count = rbuf_u32(&r);
	return rbuf_end(&r);
}

void msg_index_rep_encode(struct wbuf *b, const struct msg_index_rep *m)
{
	wbuf_u64(b, m->built);
	wbuf_u64(b, m->loaded);
	wbuf_u64(b, m->present);
	wbuf_u64(b, m->build_ns);
}

int msg_index_rep_decode(const void *p, size_t n, struct msg_index_rep *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->built = rbuf_u64(&r);
	m->loaded = rbuf_u64(&r);
	m->present = rbuf_u64(&r);
	m->build_ns = rbuf_u64(&r);
	return rbuf_end(&r);
}

uint64_t proto_chunk_hash(uint64_t prev, uint64_t salt, const uint32_t *ids)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	/* the ids already are their wire bytes */
	return XXH3_64bits_withSeed(ids, PROTO_CHUNK_TOKENS * 4, prev ^ salt);
#else
	uint8_t le[PROTO_CHUNK_TOKENS * 4];
	for (unsigned i = 0; i < PROTO_CHUNK_TOKENS; i++)
		put32(le + 4 * i, ids[i]);
	return XXH3_64bits_withSeed(le, sizeof(le), prev ^ salt);
#endif
}

void msg_tokens_req_encode(struct wbuf *b, const struct msg_tokens_req *m)
{
	wbuf_u64(b, m->ctx);
	wbuf_u64(b, m->salt);
	wbuf_u64(b, m->token_begin);
	wbuf_u32(b, m->n);
	wbuf_u32(b, 0);
	wbuf_put(b, m->ids, (size_t)m->n * 4);
}

int msg_tokens_req_decode(const void *p, size_t n, struct msg_tokens_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->ctx = rbuf_u64(&r);
	m->salt = rbuf_u64(&r);
	m->token_begin = rbuf_u64(&r);
	m->n = rbuf_u32(&r);
	uint32_t reserved = rbuf_u32(&r);
	if (r.err)
		return r.err;
	if (reserved)
		return -EPROTO;
	if (m->n < 1 || m->n > PROTO_MAX_TOKEN_IDS)
		return -EMSGSIZE;
	m->ids = rbuf_bytes(&r, (size_t)m->n * 4);
	return rbuf_end(&r);
}

void msg_tokens_rep_encode(struct wbuf *b, const struct msg_tokens_rep *m)
{
	wbuf_u64(b, m->tokens);
	wbuf_u64(b, m->chunks);
}

int msg_tokens_rep_decode(const void *p, size_t n, struct msg_tokens_rep *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->tokens = rbuf_u64(&r);
	m->chunks = rbuf_u64(&r);
	return rbuf_end(&r);
}

void msg_queries_req_encode(struct wbuf *b, const struct msg_queries_req *m)
{
	wbuf_u64(b, m->ctx);
	wbuf_u32(b, m->layer);
	wbuf_u32(b, m->n_positions);
	wbuf_u64(b, m->first);
	wbuf_put(b, m->q, m->q_len);
}

int msg_queries_req_decode(const void *p, size_t n, struct msg_queries_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->ctx = rbuf_u64(&r);
	m->layer = rbuf_u32(&r);
	m->n_positions = rbuf_u32(&r);
	m->first = rbuf_u64(&r);
	if (r.err)
		return r.err;
	m->q_len = r.len - r.off;
	/* the frame limit bounds q_len; its exact size needs the geometry */
	if (!m->n_positions || !m->q_len || m->q_len % ((size_t)4 * m->n_positions))
		return -EPROTO;
	m->q = rbuf_bytes(&r, m->q_len);
	return rbuf_end(&r);
}

void msg_queries_rep_encode(struct wbuf *b, const struct msg_queries_rep *m)
{
	wbuf_u64(b, m->kept);
	wbuf_u64(b, m->seen);
}

int msg_queries_rep_decode(const void *p, size_t n, struct msg_queries_rep *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->kept = rbuf_u64(&r);
	m->seen = rbuf_u64(&r);
	return rbuf_end(&r);
}

void msg_surprise_req_encode(struct wbuf *b, const struct msg_surprise_req *m)
{
	wbuf_u64(b, m->ctx);
	wbuf_u64(b, m->first);
	wbuf_u32(b, m->n);
	/* s NULL: the values follow as the frame's tail */
	if (m->s)
		wbuf_put(b, m->s, (size_t)m->n * 4);
}

int msg_surprise_req_decode(const void *p, size_t n, struct msg_surprise_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->ctx = rbuf_u64(&r);
	m->first = rbuf_u64(&r);
	m->n = rbuf_u32(&r);
	if (r.err)
		return r.err;
	if (!m->n || (size_t)m->n * 4 != r.len - r.off)
		return -EPROTO;
	m->s = rbuf_bytes(&r, (size_t)m->n * 4);
	return rbuf_end(&r);
}

void msg_surprise_rep_encode(struct wbuf *b, const struct msg_surprise_rep *m)
{
	wbuf_u64(b, m->seen);
	wbuf_u64(b, m->events);
}

int msg_surprise_rep_decode(const void *p, size_t n, struct msg_surprise_rep *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->seen = rbuf_u64(&r);
	m->events = rbuf_u64(&r);
	return rbuf_end(&r);
}

void msg_lookup_req_encode(struct wbuf *b, const struct msg_lookup_req *m)
{
	wbuf_u64(b, m->salt);
	wbuf_u32(b, m->kind);
	wbuf_u32(b, m->n);
	wbuf_put(b, m->data, (size_t)m->n * (m->kind == PROTO_LOOKUP_HASHES ? 8 : 4));
}

int msg_lookup_req_decode(const void *p, size_t n, struct msg_lookup_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->salt = rbuf_u64(&r);
	m->kind = rbuf_u32(&r);
	m->n = rbuf_u32(&r);
	if (r.err)
		return r.err;
	if (m->kind != PROTO_LOOKUP_IDS && m->kind != PROTO_LOOKUP_HASHES)
		return -EPROTO;
	if (m->n > PROTO_MAX_TOKEN_IDS)
		return -EMSGSIZE;
	m->data = rbuf_bytes(&r, (size_t)m->n * (m->kind == PROTO_LOOKUP_HASHES ? 8 : 4));
	return rbuf_end(&r);
}

void msg_lookup_rep_encode(struct wbuf *b, const struct msg_lookup_rep *m)
{
	wbuf_u64(b, m->ctx);
	wbuf_u64(b, m->tokens);
	wbuf_u32(b, m->probes);
}

int msg_lookup_rep_decode(const void *p, size_t n, struct msg_lookup_rep *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->ctx = rbuf_u64(&r);
	m->tokens = rbuf_u64(&r);
	m->probes = rbuf_u32(&r);
	return rbuf_end(&r);
}

void msg_list_req_encode(struct wbuf *b, const struct msg_list_req *m)
{
	wbuf_u32(b, m->offset);
	wbuf_u32(b, m->max);
}

int msg_list_req_decode(const void *p, size_t n, struct msg_list_req *m)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	m->offset = rbuf_u32(&r);
	m->max = rbuf_u32(&r);
	return rbuf_end(&r);
}

void proto_ctx_record_encode(struct wbuf *b, const struct proto_ctx_record *m)
{
	wbuf_u64(b, m->id);
	wbuf_str(b, m->name, m->name_len);
	geom_put(b, &m->geom);
	wbuf_u32(b, m->state);
	wbuf_u32(b, m->owner_uid);
	wbuf_u64(b, m->tokens);
	wbuf_u64(b, m->bytes);
	wbuf_u32(b, m->flags);
	wbuf_u64(b, m->surprise_seen);
	wbuf_u64(b, m->events);
	wbuf_u32(b, m->segmentation);
	wbuf_u64(b, m->parent);
	wbuf_u64(b, m->parent_tokens);
}

int proto_ctx_record_read(struct rbuf *r, struct proto_ctx_record *m)
{
	m->id = rbuf_u64(r);
	m->name = rbuf_str(r, PROTO_MAX_NAME, &m->name_len);
	geom_get(r, &m->geom);
	m->state = rbuf_u32(r);
	m->owner_uid = rbuf_u32(r);
	m->tokens = rbuf_u64(r);
	m->bytes = rbuf_u64(r);
	m->flags = rbuf_u32(r);
	m->surprise_seen = rbuf_u64(r);
	m->events = rbuf_u64(r);
	m->segmentation = rbuf_u32(r);
	m->parent = rbuf_u64(r);
	m->parent_tokens = rbuf_u64(r);
	if (!r->err && m->segmentation > PROTO_SEG_NOVELTY)
		r->err = -EPROTO;
	return r->err;
}

void proto_daemon_record_encode(struct wbuf *b, const struct proto_daemon_record *m)
{
	wbuf_u64(b, m->uptime_ms);
	wbuf_u32(b, m->connections);
	wbuf_u32(b, m->contexts);
	wbuf_u32(b, m->workers);
	wbuf_u32(b, m->block_tokens);
	wbuf_u64(b, m->host_used);
	wbuf_u64(b, m->host_budget);
	wbuf_u64(b, m->requests);
	wbuf_u64(b, m->errors);
	wbuf_u64(b, m->ssd_used);
	wbuf_u64(b, m->ssd_max);
	wbuf_u64(b, m->hits);
	wbuf_u64(b, m->misses);
	wbuf_u64(b, m->evictions);
	wbuf_u64(b, m->ssd_reads);
	wbuf_u64(b, m->ssd_writes);
	wbuf_u64(b, m->ssd_read_bytes);
	wbuf_u64(b, m->ssd_write_bytes);
	wbuf_u64(b, m->bad_blocks);
	wbuf_u64(b, m->index_builds);
	wbuf_u64(b, m->index_loads);
	wbuf_u64(b, m->index_bytes);
	wbuf_u64(b, m->policy_attends);
	wbuf_u64(b, m->policy_pick_ns);
	wbuf_u64(b, m->policy_search_ns);
	wbuf_u64(b, m->policy_fold_ns);
	wbuf_u64(b, m->policy_pin_ns);
	wbuf_u64(b, m->cpu_ns);
	wbuf_str(b, m->kernels, m->kernels_len);
}

int proto_daemon_record_read(struct rbuf *r, struct proto_daemon_record *m)
{
	m->uptime_ms = rbuf_u64(r);
	m->connections = rbuf_u32(r);
	m->contexts = rbuf_u32(r);
	m->workers = rbuf_u32(r);
	m->block_tokens = rbuf_u32(r);
	m->host_used = rbuf_u64(r);
	m->host_budget = rbuf_u64(r);
	m->requests = rbuf_u64(r);
	m->errors = rbuf_u64(r);
	m->ssd_used = rbuf_u64(r);
	m->ssd_max = rbuf_u64(r);
	m->hits = rbuf_u64(r);
	m->misses = rbuf_u64(r);
	m->evictions = rbuf_u64(r);
	m->ssd_reads = rbuf_u64(r);
	m->ssd_writes = rbuf_u64(r);
	m->ssd_read_bytes = rbuf_u64(r);
	m->ssd_write_bytes = rbuf_u64(r);
	m->bad_blocks = rbuf_u64(r);
	m->index_builds = rbuf_u64(r);
	m->index_loads = rbuf_u64(r);
	m->index_bytes = rbuf_u64(r);
	m->policy_attends = rbuf_u64(r);
	m->policy_pick_ns = rbuf_u64(r);
	m->policy_search_ns = rbuf_u64(r);
	m->policy_fold_ns = rbuf_u64(r);
	m->policy_pin_ns = rbuf_u64(r);
	m->cpu_ns = rbuf_u64(r);
	m->kernels = rbuf_str(r, PROTO_MAX_NAME, &m->kernels_len);
	return r->err;
}

void msg_shm_attach_req_encode(struct wbuf *b, const struct msg_shm_attach_req *m)
{
	wbuf_u64(b, m->size);
}

int msg_shm_attach_req_decode(const void *p, size_t n, struct msg_shm_attach_req *m)
{
	return msg_u64_decode(p, n, &m->size);
}

void msg_error_encode(struct wbuf *b, const char *msg)
{
	size_t n = msg ? strlen(msg) : 0;
	if (n > PROTO_MAX_ERRMSG)
		n = PROTO_MAX_ERRMSG;
	wbuf_str(b, msg ? msg : "", n);
}

int msg_error_decode(const void *p, size_t n, const char **msg, uint16_t *len)
{
	struct rbuf r;
	rbuf_init(&r, p, n);
	*msg = rbuf_str(&r, PROTO_MAX_ERRMSG, len);
	return rbuf_end(&r);
}

void proto_f32_from_wire(float *dst, const void *src, size_t n)
{
	const uint8_t *p = src;
	for (size_t i = 0; i < n; i++) {
		uint32_t u = get32(p + 4 * i);
		memcpy(&dst[i], &u, 4);
	}
}

void proto_u32_from_wire(uint32_t *dst, const void *src, size_t n)
{
	const uint8_t *p = src;
	for (size_t i = 0; i < n; i++)
		dst[i] = get32(p + 4 * i);
}
