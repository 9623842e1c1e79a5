/*
 * One handler per opcode. Each decodes its payload (a decode failure is a
 * protocol error: the reply says so and the connection closes), checks the
 * request against the context and the caller's uid, does the work, and
 * encodes the reply into r->out.
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "attend.h"
#include "index.h"
#include "kernels.h"
#include "log.h"
#include "policy.h"
#include "pool.h"
#include "prefix.h"
#include "server.h"
#include "ssd.h"
#include "store.h"

#ifndef MNEMO_VERSION
#define MNEMO_VERSION "0"
#endif

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The process's CPU time, every thread, user and system (0 if unknown). */
static uint64_t cpu_ns(void)
{
	struct timespec ts;
	if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts))
		return 0;
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int malformed(struct request *r, int rc)
{
	r->fatal = true;
	return req_error(r, rc == -EMSGSIZE ? -EMSGSIZE : -EPROTO,
			 "malformed %s payload", proto_op_name(r->h.opcode));
}

/* Find a context the caller may use. Returns a reference. */
enum access { READ, WRITE };

/* The context named, if the peer may @p how it: its owner may anything, others read a shared one. */
static int get_ctx(struct request *r, uint64_t id, const char *name, size_t name_len, enum access how,
		   struct kv_ctx **out)
{
	if (id == 0 && name_len == 0)
		return req_error(r, -EINVAL, "no context named: give an id or a name");
	int rc = store_ctx_find(r->d->store, id, name, name_len, out);
	if (rc) {
		if (id)
			return req_error(r, -ENOENT, "no context with id %llu", (unsigned long long)id);
		return req_error(r, -ENOENT, "no context named %.*s", (int)name_len, name);
	}
	if (kv_ctx_owner(*out) != r->uid && (how == WRITE || !kv_ctx_shared(*out))) {
		int shared = kv_ctx_shared(*out);
		uint64_t cid = kv_ctx_id(*out);
		kv_ctx_put(*out);
		return req_error(r, -EACCES, shared ? "context %llu belongs to another user and is shared read-only"
						   : "context %llu belongs to another user",
				 (unsigned long long)(id ? id : cid));
	}
	return 0;
}

static int h_hello(struct request *r)
{
	struct msg_hello_req m;
	int rc = msg_hello_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	if (m.proto != PROTO_VERSION)
		return req_error(r, -EPROTONOSUPPORT, "client speaks protocol %u, mnemod speaks %u",
				 m.proto, PROTO_VERSION);
	const struct config *cfg = r->d->cfg;
	struct msg_hello_rep rep = {
		.proto = PROTO_VERSION, .block_tokens = cfg->block_tokens,
		.max_frame = (uint32_t)cfg->max_frame, .workers = pool_size(r->d->pool),
		.peer_uid = r->uid, .host_budget = cfg->host_mem,
		.version = MNEMO_VERSION, .version_len = (uint16_t)strlen(MNEMO_VERSION),
	};
	msg_hello_rep_encode(&r->out, &rep);
	return 0;
}

static int h_create(struct request *r)
{
	struct msg_create_req m;
	int rc = msg_create_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	const char *why;
	if (proto_geometry_check(&m.geom, &why))
		return req_error(r, -EINVAL, "bad geometry: %s", why);
	struct kv_geometry g = {
		.n_layers = m.geom.n_layers, .n_kv_heads = m.geom.n_kv_heads,
		.n_q_heads = m.geom.n_q_heads, .head_dim = m.geom.head_dim,
		.dtype = m.geom.dtype, .elem_size = (uint32_t)proto_dtype_size(m.geom.dtype),
		.rope_theta = m.geom.rope_theta,
	};
	struct kv_ctx *c;
	rc = store_ctx_create(r->d->store, m.name, m.name_len, &g, r->uid, &c);
	if (rc == -EEXIST)
		return req_error(r, rc, "a context named %.*s exists", (int)m.name_len, m.name);
	if (rc)
		return req_error(r, rc, "cannot create a context: %s", strerror(-rc));
	log_info("store", "uid %u created context %llu \"%s\" (%u layers, %u/%u heads, d %u, dtype %u)",
		 (unsigned)r->uid, (unsigned long long)kv_ctx_id(c), kv_ctx_name(c), g.n_layers,
		 g.n_kv_heads, g.n_q_heads, g.head_dim, g.dtype);
	msg_create_rep_encode(&r->out, &(struct msg_create_rep){ .id = kv_ctx_id(c) });
	kv_ctx_put(c);
	return 0;
}

static int h_continue(struct request *r)
{
	struct msg_continue_req m;
	int rc = msg_continue_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct kv_ctx *par, *c;
	if ((rc = get_ctx(r, m.parent, NULL, 0, READ, &par)))
		return rc;
	uint64_t grand;
	kv_ctx_parent(par, &grand, NULL);
	if (grand)
		rc = req_error(r, -EINVAL, "context %llu is itself a continuation: continue its parent, or seal and copy it",
			       (unsigned long long)m.parent);
	else
		rc = store_ctx_continue(r->d->store, par, m.name, m.name_len, r->uid, &c);
	if (rc == -EEXIST)
		req_error(r, rc, "a context named %.*s exists", (int)m.name_len, m.name);
	else if (rc == -EBUSY)
		req_error(r, rc, "context %llu is not sealed: seal it before continuing it", (unsigned long long)m.parent);
	else if (rc == -ENODATA)
		req_error(r, rc, "context %llu holds no tokens", (unsigned long long)m.parent);
	else if (rc && rc != -EINVAL)
		req_error(r, rc, "cannot create a continuation: %s", strerror(-rc));
	if (!rc) {
		log_info("store", "uid %u created context %llu \"%s\", continuing context %llu",
			 (unsigned)r->uid, (unsigned long long)kv_ctx_id(c), kv_ctx_name(c), (unsigned long long)m.parent);
		msg_create_rep_encode(&r->out, &(struct msg_create_rep){ .id = kv_ctx_id(c) });
		kv_ctx_put(c);
	}
	kv_ctx_put(par);
	return rc;
}

static int h_append(struct request *r)
{
	struct msg_append_req m;
	int rc = msg_append_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	const uint8_t *data = m.data;
	size_t len = m.data_len;
	if (m.source == PROTO_SRC_SHM) {
		if (!r->arena->base)
			return req_error(r, -ENXIO, "APPEND from shm, but no arena is attached");
		if (!shm_arena_range_ok(r->arena, m.shm_offset, m.shm_length))
			return req_error(r, -EFAULT, "shm range [%llu, +%llu) is outside the %zu-byte arena",
					 (unsigned long long)m.shm_offset,
					 (unsigned long long)m.shm_length, r->arena->size);
		data = r->arena->base + m.shm_offset;
		len = (size_t)m.shm_length;
	}
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.ctx, NULL, 0, WRITE, &c)))
		return rc;
	const char *why = NULL;
	uint64_t lt = 0, ct = 0;
	rc = kv_ctx_append_ex(c, m.layer_begin, m.layer_count, m.token_begin, m.n_tokens, data, len,
			      (m.flags & PROTO_APPEND_STREAM ? KV_APPEND_STREAM : 0) |
				      (m.flags & PROTO_APPEND_SYNC ? KV_APPEND_SYNC : 0),
			      &lt, &ct, &why);
	if (rc == -ERANGE)
		req_error(r, rc, "%s (layer %u has %llu tokens, token_begin %llu)", why, m.layer_begin,
			  (unsigned long long)kv_ctx_layer_tokens(c, m.layer_begin < kv_ctx_geometry(c)->n_layers ?
								   m.layer_begin : 0),
			  (unsigned long long)m.token_begin);
	else if (rc)
		req_error(r, rc, "%s", why ? why : strerror(-rc));
	else
		msg_append_rep_encode(&r->out, &(struct msg_append_rep){ .layer_tokens = lt,
									   .context_tokens = ct });
	if (rc == -ENOSPC || rc == -EIO)
		log_err("store", "context %llu: APPEND refused: %s", (unsigned long long)kv_ctx_id(c), why ? why : strerror(-rc));
	if (rc == -ENOMEM)
		log_warn("store", "context %llu: %s", (unsigned long long)kv_ctx_id(c), why ? why : "out of memory");
	kv_ctx_put(c);
	return rc;
}

static int h_seal(struct request *r)
{
	struct proto_ctxref m;
	int rc = msg_ctxref_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.id, m.name, m.name_len, WRITE, &c)))
		return rc;
	uint64_t tokens = 0;
	rc = kv_ctx_seal(c, &tokens);
	if (rc)
		req_error(r, rc, "layers differ in length: append every layer to the same length first");
	else
		msg_u64_encode(&r->out, tokens);
	kv_ctx_put(c);
	return rc;
}

static int h_index(struct request *r)
{
	struct msg_index_req m;
	int rc = msg_index_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.ctx, NULL, 0, READ, &c)))
		return rc;
	const struct kv_geometry *g = kv_ctx_geometry(c);
	uint32_t count = m.layer_count ? m.layer_count : (m.layer_begin < g->n_layers ? g->n_layers - m.layer_begin : 0);
	if (!policy_ops_get(m.policy)) {
		rc = req_error(r, -EINVAL, "policy %u has no index (exact needs none)", m.policy);
	} else if (m.layer_begin >= g->n_layers || count > g->n_layers - m.layer_begin) {
		rc = req_error(r, -EINVAL, "layers [%u, +%u) of a %u-layer context", m.layer_begin, m.layer_count,
			       g->n_layers);
	} else {
		struct attend_exec ex = { .parallel = pool_parallel, .pool = r->d->pool,
					  .workers = pool_size(r->d->pool) };
		uint64_t counts[3] = { 0, 0, 0 }, t0 = now_ns();
		uint32_t l = m.layer_begin;
		for (; l < m.layer_begin + count && !rc; l++)
			rc = attend_policy_prepare(c, m.policy, l, &ex, counts);
		if (rc == -ENODATA)
			req_error(r, rc, "layer %u holds no tokens to index", l - 1);
		else if (rc == -EBADMSG)
			req_error(r, rc, "data-integrity error in layer %u: a block failed its checksum", l - 1);
		else if (rc == -ENOTSUP)
			req_error(r, rc, "policy %u builds its index from prefill queries: send the layer's with QUERIES first",
				  m.policy);
		else if (rc)
			req_error(r, rc, "indexing layer %u: %s", l - 1, strerror(-rc));
		else {
			struct msg_index_rep rep = { .built = counts[INDEX_BUILT], .loaded = counts[INDEX_LOADED],
						     .present = counts[INDEX_PRESENT], .build_ns = now_ns() - t0 };
			msg_index_rep_encode(&r->out, &rep);
		}
	}
	kv_ctx_put(c);
	return rc;
}

static int h_tokens(struct request *r)
{
	struct msg_tokens_req m;
	int rc = msg_tokens_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.ctx, NULL, 0, WRITE, &c)))
		return rc;
	uint32_t *ids = malloc((size_t)m.n * 4);
	if (!ids) {
		kv_ctx_put(c);
		return req_error(r, -ENOMEM, "out of memory");
	}
	proto_u32_from_wire(ids, m.ids, m.n);
	struct msg_tokens_rep rep = { 0 };
	rc = prefix_add(r->d->prefix, c, m.salt, m.token_begin, ids, m.n, &rep.tokens, &rep.chunks);
	if (rc == -EINVAL)
		req_error(r, rc, "context %llu's token ids were given under another salt", (unsigned long long)m.ctx);
	else if (rc == -ERANGE)
		req_error(r, rc, "token ids [%llu, +%u) do not continue the %llu ids given, or pass the context's tokens",
			  (unsigned long long)m.token_begin, m.n, (unsigned long long)rep.tokens);
	else if (rc)
		req_error(r, rc, "token ids: %s", strerror(-rc));
	else
		msg_tokens_rep_encode(&r->out, &rep);
	free(ids);
	kv_ctx_put(c);
	return rc;
}

static int h_queries(struct request *r)
{
	struct msg_queries_req m;
	int rc = msg_queries_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.ctx, NULL, 0, WRITE, &c)))
		return rc;
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const size_t nf = (size_t)g->n_q_heads * m.n_positions * g->head_dim;
	float *q = NULL;
	if (m.layer >= g->n_layers) {
		rc = req_error(r, -EINVAL, "layer %u of a %u-layer context", m.layer, g->n_layers);
	} else if (m.q_len != nf * 4) {
		rc = req_error(r, -EINVAL, "queries are %zu bytes; %u positions need %zu (n_q_heads x positions x head_dim f32)",
			       m.q_len, m.n_positions, nf * 4);
	} else if (!(q = malloc(nf * sizeof(float)))) {
		rc = req_error(r, -ENOMEM, "out of memory");
	} else {
		proto_f32_from_wire(q, m.q, nf);
		size_t bad = 0;
		while (bad < nf && isfinite(q[bad]))
			bad++;
		struct msg_queries_rep rep;
		if (bad < nf)
			rc = req_error(r, -EINVAL, "prefill query value %zu is not finite", bad);
		else if ((rc = attend_policy_queries(c, m.layer, m.first, m.n_positions, q, &rep.kept, &rep.seen)) ==
			 -ERANGE)
			req_error(r, rc, "layer %u was sent %llu prefill positions; these start at %llu", m.layer,
				  (unsigned long long)rep.seen, (unsigned long long)m.first);
		else if (rc)
			req_error(r, rc, "prefill queries of layer %u: %s", m.layer, strerror(-rc));
		else
			msg_queries_rep_encode(&r->out, &rep);
	}
	free(q);
	kv_ctx_put(c);
	return rc;
}

static int h_surprise(struct request *r)
{
	struct msg_surprise_req m;
	int rc = msg_surprise_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.ctx, NULL, 0, WRITE, &c)))
		return rc;
	float *s = malloc((size_t)m.n * sizeof(float));
	if (!s) {
		rc = req_error(r, -ENOMEM, "out of memory");
	} else {
		proto_f32_from_wire(s, m.s, m.n);
		struct msg_surprise_rep rep;
		rc = attend_policy_surprise(c, m.first, m.n, s, &rep.seen, &rep.events);
		if (rc == -ERANGE)
			req_error(r, rc, "the context was sent surprise for %llu tokens; these start at %llu",
				  (unsigned long long)rep.seen, (unsigned long long)m.first);
		else if (rc == -EINVAL)
			req_error(r, rc, "surprise must be finite (-log p of each token, in nats)");
		else if (rc)
			req_error(r, rc, "surprise: %s", strerror(-rc));
		else
			msg_surprise_rep_encode(&r->out, &rep);
	}
	free(s);
	kv_ctx_put(c);
	return rc;
}

static int h_lookup(struct request *r)
{
	struct msg_lookup_req m;
	int rc = msg_lookup_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	size_t n = m.kind == PROTO_LOOKUP_HASHES ? m.n : m.n / PROTO_CHUNK_TOKENS;
	uint64_t *h = malloc((n ? n : 1) * sizeof(uint64_t));
	uint32_t *ids = m.kind == PROTO_LOOKUP_IDS ? malloc(((size_t)m.n ? m.n : 1) * 4) : NULL;
	if (!h || (m.kind == PROTO_LOOKUP_IDS && !ids)) {
		free(h);
		free(ids);
		return req_error(r, -ENOMEM, "out of memory");
	}
	if (m.kind == PROTO_LOOKUP_HASHES) {
		for (size_t i = 0; i < n; i++) {
			uint64_t v;
			memcpy(&v, m.data + 8 * i, 8);
			h[i] = le64toh(v);
		}
	} else {
		/* the chain of the request's whole chunks */
		proto_u32_from_wire(ids, m.data, m.n);
		for (size_t k = 0; k < n; k++)
			h[k] = proto_chunk_hash(k ? h[k - 1] : 0, m.salt, ids + k * PROTO_CHUNK_TOKENS);
	}
	struct msg_lookup_rep rep = { 0 };
	uint64_t chunks;
	unsigned probes;
	rc = prefix_lookup(r->d->prefix, r->d->store, r->uid, h, n, &rep.ctx, &chunks, &probes);
	rep.tokens = chunks * PROTO_CHUNK_TOKENS;
	rep.probes = probes;
	if (!rc)
		msg_lookup_rep_encode(&r->out, &rep);
	free(h);
	free(ids);
	return rc;
}

static int attend_one(struct kv_ctx *c, uint32_t policy, uint64_t budget, const struct attend_request *ar,
		      struct attend_result *res, const struct attend_exec *ex)
{
	return policy == POLICY_EXACT ? attend_exact(c, ar, res, ex) : attend_policy(c, policy, budget, ar, res, ex);
}

/*
 * ATTEND over a continuation: the range [b, e) of the parent's first P
 * tokens then the continuation's own splits into the parent's part and the
 * continuation's, each attended over its own context (the parent's indexes
 * serve every continuation alike), and the two partials merge by their
 * lse. The range's first `sinks` tokens and last `window` go to the part
 * they fall in.
 */
static int attend_continuation(struct kv_ctx *par, uint64_t P, struct kv_ctx *c, uint32_t policy, uint64_t budget,
			       const struct attend_request *ar, struct attend_result *res,
			       const struct attend_exec *ex, struct kv_ctx **bad_ctx)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const uint64_t own = kv_ctx_layer_tokens(c, ar->layer), total = P + own;
	const uint64_t b = ar->token_begin, e = ar->token_end == UINT64_MAX ? total : ar->token_end;
	if (b > e || e > total)
		return -ERANGE;
	const uint64_t a_end = e < P ? e : P, a_len = b < a_end ? a_end - b : 0;
	const uint64_t b_begin = b > P ? b - P : 0, b_len = e > P ? e - P - b_begin : 0;
	struct attend_request ra = *ar, rb = *ar;
	ra.token_begin = b;
	ra.token_end = a_end > b ? a_end : b;
	rb.token_begin = b_begin;
	rb.token_end = b_begin + b_len;
	ra.sinks = (uint16_t)(ar->sinks < a_len ? ar->sinks : a_len);
	rb.sinks = (uint16_t)(ar->sinks - ra.sinks);
	rb.window = (uint16_t)(ar->window < b_len ? ar->window : b_len);
	ra.window = (uint16_t)(ar->window - rb.window);
	if (!b_len) {
		*bad_ctx = par;
		return attend_one(par, policy, budget, &ra, res, ex);
	}
	if (!a_len)
		return attend_one(c, policy, budget, &rb, res, ex);
	const size_t nq = (size_t)g->n_q_heads * g->head_dim;
	float *o2 = malloc(nq * sizeof(float)), *l2 = malloc(g->n_q_heads * sizeof(float));
	struct attend_result r2 = { .o = o2, .lse = l2 };
	int rc = o2 && l2 ? 0 : -ENOMEM;
	if (!rc && (rc = attend_one(par, policy, budget, &ra, res, ex)))
		*bad_ctx = par;
	if (!rc)
		rc = attend_one(c, policy, budget, &rb, &r2, ex);
	if (!rc) {
		/* lse = logaddexp(l1, l2), o = e^(l1 - lse) o1 + e^(l2 - lse) o2 */
		for (uint32_t h = 0; h < g->n_q_heads; h++) {
			const float l1 = res->lse[h], lb = l2[h];
			const float m = l1 > lb ? l1 : lb;
			if (m == -INFINITY)
				continue;
			const float w1 = expf(l1 - m), w2 = expf(lb - m), z = w1 + w2;
			for (uint32_t j = 0; j < g->head_dim; j++) {
				float *x = &res->o[(size_t)h * g->head_dim + j];
				*x = (w1 * *x + w2 * o2[(size_t)h * g->head_dim + j]) / z;
			}
			res->lse[h] = m + logf(z);
		}
		res->scanned += r2.scanned;
		res->loaded += r2.loaded;
	} else if (rc == -EBADMSG && *bad_ctx != par) {
		*bad_ctx = c;
		res->err_block = r2.err_block;
		res->err_head = r2.err_head;
	}
	free(o2);
	free(l2);
	return rc;
}

static int h_attend(struct request *r)
{
	struct msg_attend_req m;
	int rc = msg_attend_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.ctx, NULL, 0, READ, &c)))
		return rc;
	const struct kv_geometry *g = kv_ctx_geometry(c);
	size_t nq = (size_t)g->n_q_heads * g->head_dim;
	float *q = NULL, *o = NULL, *lse = NULL;
	const struct index_ops *pol = index_ops_get(m.policy);
	if (!pol) {
		rc = req_error(r, -EINVAL, "unknown policy %u", m.policy);
		goto out;
	}
	if (m.layer >= g->n_layers) {
		rc = req_error(r, -EINVAL, "layer %u of a %u-layer context", m.layer, g->n_layers);
		goto out;
	}
	if (m.q_len != nq * 4) {
		rc = req_error(r, -EINVAL, "queries are %zu bytes; this geometry needs %zu (n_q_heads x head_dim f32)",
			       m.q_len, nq * 4);
		goto out;
	}
	q = malloc(nq * sizeof(float));
	o = malloc(nq * sizeof(float));
	lse = malloc(g->n_q_heads * sizeof(float));
	if (!q || !o || !lse) {
		rc = req_error(r, -ENOMEM, "out of memory");
		goto out;
	}
	proto_f32_from_wire(q, m.q, nq);
	for (size_t i = 0; i < nq; i++)
		if (!isfinite(q[i])) {
			rc = req_error(r, -EINVAL, "query value %zu (query head %zu, channel %zu) is not finite", i,
				       i / g->head_dim, i % g->head_dim);
			goto out;
		}
	struct attend_request ar = { .layer = m.layer, .token_begin = m.token_begin,
				     .token_end = m.token_end, .q = q, .sinks = m.sinks, .window = m.window };
	struct attend_result res = { .o = o, .lse = lse };
	struct attend_exec ex = { .parallel = pool_parallel, .pool = r->d->pool,
				  .workers = pool_size(r->d->pool) };
	uint64_t parent_id, P, total = kv_ctx_layer_tokens(c, m.layer);
	struct kv_ctx *par = kv_ctx_parent(c, &parent_id, &P);
	struct kv_ctx *bad_ctx = c;
	uint64_t t0 = now_ns();
	if (parent_id && !par) {
		rc = req_error(r, -ENOENT, "the parent context %llu of this continuation is gone", (unsigned long long)parent_id);
		goto out;
	} else if (par && kv_ctx_owner(par) != r->uid && !kv_ctx_shared(par)) {
		rc = req_error(r, -EACCES, "the parent context %llu of this continuation is no longer shared",
			       (unsigned long long)parent_id);
		goto out;
	} else if (par) {
		total += P;
		rc = attend_continuation(par, P, c, m.policy, m.budget, &ar, &res, &ex, &bad_ctx);
	} else {
		rc = attend_one(c, m.policy, m.budget, &ar, &res, &ex);
	}
	uint64_t dt = now_ns() - t0;
	if (rc == -ERANGE) {
		req_error(r, rc, "token range [%llu, %llu) is past layer %u's %llu tokens",
			  (unsigned long long)m.token_begin, (unsigned long long)m.token_end, m.layer,
			  (unsigned long long)total);
		goto out;
	}
	if (rc == -EBADMSG) {
		req_error(r, rc, "data-integrity error: context %llu layer %u head %u block %llu failed its checksum; "
			  "it is marked bad and never served", (unsigned long long)kv_ctx_id(bad_ctx), m.layer,
			  res.err_head, (unsigned long long)res.err_block);
		log_err("store", "%s", r->err);
		goto out;
	}
	if (rc == -ENOTSUP) {
		req_error(r, rc, "policy %u builds its index from prefill queries: send the layer's with QUERIES first",
			  m.policy);
		goto out;
	}
	if (rc) {
		req_error(r, rc, "attention failed: %s", strerror(-rc));
		goto out;
	}
	struct msg_attend_rep rep = {
		.n_q_heads = g->n_q_heads, .head_dim = g->head_dim, .scanned = res.scanned,
		.loaded = res.loaded, .compute_ns = dt, .o = o, .lse = lse,
	};
	msg_attend_rep_encode(&r->out, &rep);
out:
	free(q);
	free(o);
	free(lse);
	kv_ctx_put(c);
	return rc;
}

static int h_fetch(struct request *r)
{
	struct msg_fetch_req m;
	int rc = msg_fetch_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.ctx, NULL, 0, READ, &c)))
		return rc;
	const struct kv_geometry *g = kv_ctx_geometry(c);
	uint64_t bytes = 2ull * g->n_kv_heads * m.n_ids * g->head_dim * g->elem_size;
	uint64_t *ids = malloc((size_t)m.n_ids * sizeof(uint64_t));
	if (!ids) {
		rc = req_error(r, -ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < m.n_ids; i++) {
		uint64_t v = 0;
		for (int b = 7; b >= 0; b--)
			v = v << 8 | m.ids[i * 8 + (unsigned)b];
		ids[i] = v;
	}
	if (m.layer >= g->n_layers) {
		rc = req_error(r, -EINVAL, "layer %u of a %u-layer context", m.layer, g->n_layers);
		goto out;
	}
	uint8_t *dst;
	struct msg_fetch_rep rep = { .n_ids = m.n_ids, .dest = m.dest, .bytes = bytes };
	if (m.dest == PROTO_SRC_SHM) {
		if (!r->arena->base) {
			rc = req_error(r, -ENXIO, "FETCH to shm, but no arena is attached");
			goto out;
		}
		if (m.shm_length < bytes || !shm_arena_range_ok(r->arena, m.shm_offset, bytes)) {
			rc = req_error(r, -EFAULT, "FETCH needs %llu bytes at shm offset %llu; the range or the arena is too small",
				       (unsigned long long)bytes, (unsigned long long)m.shm_offset);
			goto out;
		}
		dst = r->arena->base + m.shm_offset;
		msg_fetch_rep_encode(&r->out, &rep);
	} else {
		if (bytes + 16 > r->d->cfg->max_frame) {
			rc = req_error(r, -EMSGSIZE, "FETCH reply of %llu bytes is over max-frame; fetch fewer ids or use shm",
				       (unsigned long long)bytes);
			goto out;
		}
		wbuf_u32(&r->out, rep.n_ids);
		wbuf_u32(&r->out, rep.dest);
		wbuf_u64(&r->out, rep.bytes);
		dst = wbuf_reserve(&r->out, (size_t)bytes);
		if (!dst) {
			rc = req_error(r, -ENOMEM, "out of memory");
			goto out;
		}
	}
	rc = kv_ctx_fetch(c, m.layer, ids, m.n_ids, dst);
	if (rc == -ERANGE)
		req_error(r, rc, "a token id is past layer %u's %llu tokens", m.layer,
			  (unsigned long long)kv_ctx_layer_tokens(c, m.layer));
	else if (rc == -EBADMSG)
		req_error(r, rc, "data-integrity error: a block of context %llu layer %u failed its checksum; "
			  "it is marked bad and never served", (unsigned long long)kv_ctx_id(c), m.layer);
	else if (rc)
		req_error(r, rc, "fetch failed: %s", strerror(-rc));
out:
	free(ids);
	kv_ctx_put(c);
	return rc;
}

static int h_share(struct request *r)
{
	struct msg_share_req m;
	int rc = msg_share_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.ref.id, m.ref.name, m.ref.name_len, WRITE, &c)))
		return rc;
	rc = kv_ctx_set_shared(c, (int)m.shared);
	if (rc == -EBUSY)
		req_error(r, rc, "context %llu is open: seal it before sharing it", (unsigned long long)kv_ctx_id(c));
	else if (rc)
		req_error(r, rc, "cannot record the sharing of context %llu: %s", (unsigned long long)kv_ctx_id(c),
			  strerror(-rc));
	else
		log_info("store", "uid %u made context %llu \"%s\" %s", (unsigned)r->uid,
			 (unsigned long long)kv_ctx_id(c), kv_ctx_name(c), m.shared ? "shared read-only" : "private");
	kv_ctx_put(c);
	return rc;
}

static int h_drop(struct request *r)
{
	struct proto_ctxref m;
	int rc = msg_ctxref_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.id, m.name, m.name_len, WRITE, &c)))
		return rc;
	rc = store_ctx_delete(r->d->store, c);
	if (!rc)
		prefix_forget(r->d->prefix, kv_ctx_id(c));
	if (rc == -EBUSY)
		req_error(r, rc, "context %llu has continuations (CONTINUE): drop them first", (unsigned long long)kv_ctx_id(c));
	else if (rc)
		req_error(r, rc, "cannot drop context %llu: %s", (unsigned long long)kv_ctx_id(c), strerror(-rc));
	else
		log_info("store", "uid %u dropped context %llu \"%s\"", (unsigned)r->uid,
			 (unsigned long long)kv_ctx_id(c), kv_ctx_name(c));
	kv_ctx_put(c);
	return rc;
}

static void ctx_record(struct kv_ctx *c, struct proto_ctx_record *rec)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	struct kv_ctx_info info;
	kv_ctx_info(c, &info);
	*rec = (struct proto_ctx_record){
		.id = kv_ctx_id(c), .name = kv_ctx_name(c),
		.name_len = (uint16_t)strlen(kv_ctx_name(c)),
		.geom = { .n_layers = g->n_layers, .n_kv_heads = g->n_kv_heads,
			  .n_q_heads = g->n_q_heads, .head_dim = g->head_dim, .dtype = g->dtype,
			  .rope_theta = g->rope_theta },
		.state = info.sealed ? PROTO_STATE_SEALED :
			 info.recovered ? PROTO_STATE_RECOVERED : PROTO_STATE_OPEN,
		.owner_uid = kv_ctx_owner(c), .tokens = info.tokens, .bytes = info.bytes,
		.flags = kv_ctx_shared(c) ? PROTO_CTX_SHARED : 0,
	};
	attend_policy_segmentation(c, &rec->surprise_seen, &rec->events, &rec->segmentation);
	kv_ctx_parent(c, &rec->parent, &rec->parent_tokens);
	if (rec->parent == UINT64_MAX)
		rec->parent = 0;
}

static int h_stat(struct request *r)
{
	struct proto_ctxref m;
	int rc = msg_ctxref_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	if (m.id == 0 && m.name_len == 0) {
		struct daemon_ctx *d = r->d;
		struct tier_stats ts;
		tier_host_ops.stats(d->host, &ts);
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		const char *kern = attn_kernels_best()->name;
		struct store_stats ss;
		store_stats(d->store, &ss);
		struct ssd_stats sd = { .max_bytes = UINT64_MAX };
		if (d->ssd)
			ssd_stats(d->ssd, &sd);
		uint64_t builds, loads, ibytes;
		attend_policy_counts(&builds, &loads, &ibytes);
		struct attend_policy_times pt;
		attend_policy_times(&pt);
		struct proto_daemon_record rec = {
			.uptime_ms = (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000 - d->start_ms,
			.connections = atomic_load(&d->connections),
			.contexts = store_count(d->store),
			.workers = pool_size(d->pool),
			.block_tokens = d->cfg->block_tokens,
			.host_used = ts.used_bytes, .host_budget = ts.budget_bytes,
			.requests = atomic_load(&d->requests), .errors = atomic_load(&d->errors),
			.ssd_used = sd.used_bytes, .ssd_max = sd.max_bytes, .hits = ss.hits,
			.misses = ss.misses, .evictions = ss.evictions, .ssd_reads = sd.reads,
			.ssd_writes = sd.writes, .ssd_read_bytes = sd.read_bytes,
			.ssd_write_bytes = sd.write_bytes, .bad_blocks = ss.bad_blocks,
			.index_builds = builds, .index_loads = loads, .index_bytes = ibytes,
			.policy_attends = pt.attends, .policy_pick_ns = pt.pick_ns, .policy_search_ns = pt.search_ns,
			.policy_fold_ns = pt.fold_ns, .policy_pin_ns = pt.pin_ns, .cpu_ns = cpu_ns(),
			.kernels = kern, .kernels_len = (uint16_t)strlen(kern),
		};
		wbuf_u32(&r->out, PROTO_STAT_DAEMON);
		proto_daemon_record_encode(&r->out, &rec);
		return 0;
	}
	struct kv_ctx *c;
	if ((rc = get_ctx(r, m.id, m.name, m.name_len, READ, &c)))
		return rc;
	struct proto_ctx_record rec;
	ctx_record(c, &rec);
	wbuf_u32(&r->out, PROTO_STAT_CONTEXT);
	proto_ctx_record_encode(&r->out, &rec);
	kv_ctx_put(c);
	return 0;
}

struct list_walk {
	struct request *r;
	uint32_t offset, max, seen, count;
	struct wbuf recs;
};

static void list_one(struct kv_ctx *c, void *arg)
{
	struct list_walk *w = arg;
	if (kv_ctx_owner(c) != w->r->uid)
		return;
	uint32_t i = w->seen++;
	if (i < w->offset || w->count >= w->max)
		return;
	struct proto_ctx_record rec;
	ctx_record(c, &rec);
	proto_ctx_record_encode(&w->recs, &rec);
	w->count++;
}

static int h_list(struct request *r)
{
	struct msg_list_req m;
	int rc = msg_list_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	struct list_walk w = { .r = r, .offset = m.offset,
			       .max = m.max && m.max < PROTO_MAX_LIST ? m.max : PROTO_MAX_LIST };
	wbuf_init(&w.recs);
	store_foreach(r->d->store, list_one, &w);
	wbuf_u32(&r->out, w.seen);
	wbuf_u32(&r->out, w.count);
	wbuf_put(&r->out, w.recs.data, w.recs.len);
	rc = w.recs.err;
	wbuf_free(&w.recs);
	return rc ? req_error(r, rc, "out of memory") : 0;
}

static int h_shm_attach(struct request *r)
{
	struct msg_shm_attach_req m;
	int rc = msg_shm_attach_req_decode(r->payload, r->len, &m);
	if (rc)
		return malformed(r, rc);
	if (r->fd < 0)
		return req_error(r, -EINVAL, "SHM_ATTACH must carry a memfd (SCM_RIGHTS)");
	struct shm_arena a;
	int fd = r->fd;
	r->fd = -1;                         /* adopt takes it, on failure too */
	rc = shm_arena_adopt(fd, m.size, &a);
	if (rc)
		return req_error(r, rc, "cannot use the arena: it must be a memfd of exactly %llu bytes sealed with F_SEAL_SHRINK",
				 (unsigned long long)m.size);
	shm_arena_close(r->arena);
	*r->arena = a;
	log_debug("ipc", "uid %u attached a %llu-byte arena", (unsigned)r->uid, (unsigned long long)m.size);
	msg_u64_encode(&r->out, m.size);
	return 0;
}

const struct handler handlers[OP_COUNT] = {
	[OP_HELLO] = { "HELLO", h_hello, true },
	[OP_CREATE] = { "CREATE", h_create, false },
	[OP_APPEND] = { "APPEND", h_append, false },
	[OP_SEAL] = { "SEAL", h_seal, false },
	[OP_ATTEND] = { "ATTEND", h_attend, false },
	[OP_FETCH] = { "FETCH", h_fetch, false },
	[OP_DROP] = { "DROP", h_drop, false },
	[OP_STAT] = { "STAT", h_stat, false },
	[OP_LIST] = { "LIST", h_list, false },
	[OP_SHM_ATTACH] = { "SHM_ATTACH", h_shm_attach, false },
	[OP_INDEX] = { "INDEX", h_index, false },
	[OP_TOKENS] = { "TOKENS", h_tokens, false },
	[OP_LOOKUP] = { "LOOKUP", h_lookup, false },
	[OP_SHARE] = { "SHARE", h_share, false },
	[OP_QUERIES] = { "QUERIES", h_queries, false },
	[OP_SURPRISE] = { "SURPRISE", h_surprise, false },
	[OP_CONTINUE] = { "CONTINUE", h_continue, false },
};
