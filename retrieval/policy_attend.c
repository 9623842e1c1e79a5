/*
 * ATTEND with a retrieval policy: per KV head, the policy's index over the
 * layer's keys picks tokens (and estimated clusters) for the group's
 * queries; attention runs exactly over the picked tokens, over every token
 * appended after the index was built, and over the estimates.
 *
 * Indexes are built on first use from the stored keys (converted to fp32)
 * and kept on the context until it is dropped. They are not persisted yet:
 * a restarted daemon rebuilds them on first use.
 */
#define _GNU_SOURCE
#include "attend.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "policy.h"
#include "sparse.h"

/* One index of one (policy, layer, head). */
struct slot {
	pthread_mutex_t mu;       /* one build at a time */
	struct index *ix;
	uint64_t n;               /* tokens it covers: [0, n) */
	float *k;                 /* the fp32 keys it was built over (searches may score them) */
};

struct ctx_indexes {
	uint32_t L, H;
	struct slot *slots;       /* [POLICY_COUNT][L][H] */
};

static void indexes_free(void *arg)
{
	struct ctx_indexes *x = arg;
	size_t n = (size_t)POLICY_COUNT * x->L * x->H;
	for (size_t i = 0; i < n; i++) {
		const struct policy_ops *po = policy_ops_get((uint32_t)(i / ((size_t)x->L * x->H)));
		if (x->slots[i].ix && po)
			po->free(x->slots[i].ix);
		free(x->slots[i].k);
		pthread_mutex_destroy(&x->slots[i].mu);
	}
	free(x->slots);
	free(x);
}

static struct ctx_indexes *indexes_of(struct kv_ctx *c)
{
	struct ctx_indexes *x = kv_ctx_aux(c);
	if (x)
		return x;
	const struct kv_geometry *g = kv_ctx_geometry(c);
	x = calloc(1, sizeof(*x));
	if (!x)
		return NULL;
	x->L = g->n_layers;
	x->H = g->n_kv_heads;
	size_t n = (size_t)POLICY_COUNT * x->L * x->H;
	x->slots = calloc(n, sizeof(*x->slots));
	if (!x->slots) {
		free(x);
		return NULL;
	}
	for (size_t i = 0; i < n; i++)
		pthread_mutex_init(&x->slots[i].mu, NULL);
	struct ctx_indexes *cur = kv_ctx_aux_install(c, x, indexes_free);
	if (cur != x)
		indexes_free(x);
	return cur;
}

/* Keys and values [0, n) of (layer, head) as fp32, through pinned blocks. */
static int gather_f32(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t n, float *k, float *v)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const uint32_t B = kv_ctx_block_tokens(c), d = g->head_dim;
	const size_t row = (size_t)d * g->elem_size;
	const uint8_t *win[64];
	for (uint64_t b0 = 0; b0 * B < n; b0 += 64) {
		uint64_t nb = (n + B - 1) / B - b0;
		if (nb > 64)
			nb = 64;
		uint64_t bad;
		int rc = kv_ctx_pin(c, layer, head, b0, (uint32_t)nb, win, &bad);
		if (rc)
			return rc;
		for (uint64_t b = 0; b < nb; b++)
			for (uint64_t t = 0; t < B && (b0 + b) * B + t < n; t++) {
				uint64_t tok = (b0 + b) * B + t;
				for (uint32_t j = 0; j < d; j++) {
					k[tok * d + j] = kv_load(g->dtype, win[b] + t * row, j);
					v[tok * d + j] = kv_load(g->dtype, win[b] + (B + t) * row, j);
				}
			}
		kv_ctx_unpin(c, layer, head, b0, (uint32_t)nb);
	}
	return 0;
}

/* The slot's index, built over the layer's tokens when missing. Read lock held. */
static int ensure_index(struct kv_ctx *c, struct slot *s, const struct policy_ops *po, uint32_t layer,
			uint32_t head, unsigned G)
{
	pthread_mutex_lock(&s->mu);
	int rc = 0;
	if (!s->ix) {
		const struct kv_geometry *g = kv_ctx_geometry(c);
		uint64_t n = kv_ctx_layer_tokens(c, layer);
		float *k = malloc(n * g->head_dim * sizeof(float) + 4);
		float *v = malloc(n * g->head_dim * sizeof(float) + 4);
		if (!k || !v) {
			rc = -ENOMEM;
		} else if (!(rc = gather_f32(c, layer, head, n, k, v))) {
			struct index_keys keys = { .k = k, .n = n, .d = g->head_dim };
			struct index_build_params bp = { .seed = 1, .group = G, .v = v };
			if (!(rc = po->build(&keys, &bp, &s->ix))) {
				s->n = n;
				s->k = k;
				k = NULL;
			}
		}
		free(k);
		free(v);
	}
	pthread_mutex_unlock(&s->mu);
	return rc;
}

struct policy_job {
	struct kv_ctx *c;
	const struct policy_ops *po;
	uint32_t policy;
	struct ctx_indexes *x;
	const struct attn_kernels *kern;
	uint32_t layer, G, d, dtype, B;
	uint64_t begin, end, budget;
	const float *qs;
	float *o, *lse;
	_Atomic uint64_t scanned, loaded;
	_Atomic int err;
	_Atomic uint64_t err_block;
	_Atomic uint32_t err_head;
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Fold sorted token ids into the state, pinning their blocks in batches. */
static int fold_ids(struct policy_job *j, uint32_t h, const float *q, const uint64_t *ids, uint64_t n,
		    float *m, float *l, float *acc, uint64_t *bad)
{
	const size_t row = (size_t)j->d * (j->dtype == 0 ? 4 : 2);
	enum { MAXB = 64 };
	uint64_t blocks[MAXB];
	const uint8_t *mem[MAXB], *kp[MAXB * 4], *vp[MAXB * 4];
	uint64_t i = 0;
	while (i < n) {
		/* the next run of ids spanning at most MAXB distinct blocks */
		unsigned nb = 0;
		uint64_t e = i;
		while (e < n) {
			uint64_t b = ids[e] / j->B;
			if (!nb || blocks[nb - 1] != b) {
				if (nb == MAXB)
					break;
				blocks[nb++] = b;
			}
			e++;
		}
		int rc = kv_ctx_pin_list(j->c, j->layer, h, blocks, nb, mem, bad);
		if (rc)
			return rc;
		unsigned bi = 0;
		for (uint64_t t = i; t < e;) {
			unsigned cnt = 0;
			for (; t < e && cnt < MAXB * 4; t++, cnt++) {
				uint64_t b = ids[t] / j->B, off = ids[t] % j->B;
				while (blocks[bi] != b)
					bi++;
				kp[cnt] = mem[bi] + off * row;
				vp[cnt] = mem[bi] + (j->B + off) * row;
			}
			sparse_fold_rows(j->kern, q, j->G, j->d, (enum kv_dtype)j->dtype, kp, vp, cnt, m, l, acc);
		}
		kv_ctx_unpin_list(j->c, j->layer, h, blocks, nb);
		i = e;
	}
	return 0;
}

static void policy_unit(void *arg, unsigned h)
{
	struct policy_job *j = arg;
	const unsigned G = j->G, d = j->d;
	const float *q = j->qs + (size_t)h * G * d;
	float *o = j->o + (size_t)h * G * d, *lse = j->lse + (size_t)h * G;
	float m[ATTN_MAX_GROUP], l[ATTN_MAX_GROUP];
	struct slot *s = &j->x->slots[((size_t)j->policy * j->x->L + j->layer) * j->x->H + h];
	uint64_t bad = 0, run[4096];
	int rc;
	uint64_t *ids = NULL;
	float *ek = NULL, *ec = NULL, *ev = NULL;
	if ((rc = ensure_index(j->c, s, j->po, j->layer, h, G)))
		goto fail;
	/* the index covers [0, s->n); the request wants [begin, end) */
	uint64_t idx_end = s->n < j->end ? s->n : j->end;
	uint64_t budget = j->budget ? j->budget : (s->n / 50 > 64 ? s->n / 50 : 64);
	if (budget > s->n)
		budget = s->n;
	const unsigned est_cap = 256;
	ids = malloc((budget + 1) * sizeof(uint64_t));
	ek = malloc((size_t)est_cap * d * sizeof(float));
	ec = malloc((size_t)est_cap * sizeof(float));
	ev = malloc((size_t)est_cap * d * sizeof(float));
	if (!ids || !ek || !ec || !ev) {
		rc = -ENOMEM;
		goto fail;
	}
	attn_state_init(G, d, m, l, o);
	uint64_t picked = 0;
	struct index_result res = { .tokens = ids, .est_cap = est_cap, .est_key = ek, .est_count = ec,
				    .est_vsum = ev };
	if (j->begin < idx_end && s->n) {
		struct index_keys keys = { .k = s->k, .n = s->n, .d = d };
		if ((rc = j->po->search(s->ix, &keys, q, G, budget, &res)))
			goto fail;
		qsort(ids, res.n_tokens, sizeof(uint64_t), cmp_u64);
		/* keep what lies in the requested range */
		for (uint64_t i = 0; i < res.n_tokens; i++)
			if (ids[i] >= j->begin && ids[i] < idx_end)
				ids[picked++] = ids[i];
		if ((rc = fold_ids(j, h, q, ids, picked, m, l, o, &bad)))
			goto fail;
		/* estimates stand for whole clusters: only when the range is the whole index */
		if (j->begin == 0 && idx_end == s->n) {
			struct kv_estimates est = { .n = res.n_est, .key = ek, .count = ec, .vsum = ev };
			sparse_fold_estimates(q, G, d, &est, m, l, o);
		}
	}
	/* tokens appended after the build: exact */
	uint64_t tail0 = j->begin > s->n ? j->begin : s->n, tail = 0;
	for (uint64_t t = tail0; t < j->end;) {
		uint64_t n = j->end - t < 4096 ? j->end - t : 4096;
		for (uint64_t i = 0; i < n; i++)
			run[i] = t + i;
		if ((rc = fold_ids(j, h, q, run, n, m, l, o, &bad)))
			goto fail;
		t += n;
		tail += n;
	}
	attn_state_finish(G, d, m, l, o, o, lse);
	atomic_fetch_add(&j->scanned, res.scanned + tail);
	atomic_fetch_add(&j->loaded, picked + tail);
	free(ids);
	free(ek);
	free(ec);
	free(ev);
	return;
fail:
	{
		int zero = 0;
		if (atomic_compare_exchange_strong(&j->err, &zero, rc)) {
			atomic_store(&j->err_block, bad);
			atomic_store(&j->err_head, h);
		}
	}
	free(ids);
	free(ek);
	free(ec);
	free(ev);
}

int attend_policy(struct kv_ctx *c, uint32_t policy, uint64_t budget, const struct attend_request *req,
		  struct attend_result *res, const struct attend_exec *ex)
{
	const struct policy_ops *po = policy_ops_get(policy);
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const unsigned G = g->n_q_heads / g->n_kv_heads, d = g->head_dim;
	if (!po)
		return -EINVAL;
	if (req->layer >= g->n_layers)
		return -EINVAL;
	struct ctx_indexes *x = indexes_of(c);
	if (!x)
		return -ENOMEM;
	int rc = 0;
	kv_ctx_read_begin(c);
	uint64_t len = kv_ctx_layer_tokens(c, req->layer);
	uint64_t end = req->token_end == UINT64_MAX ? len : req->token_end;
	float *qs = NULL;
	if (req->token_begin > end || end > len) {
		rc = -ERANGE;
		goto out;
	}
	qs = malloc((size_t)g->n_q_heads * d * sizeof(float));
	if (!qs) {
		rc = -ENOMEM;
		goto out;
	}
	const float scale = 1.0f / sqrtf((float)d);
	for (size_t i = 0; i < (size_t)g->n_q_heads * d; i++)
		qs[i] = req->q[i] * scale;
	struct policy_job job = {
		.c = c, .po = po, .policy = policy, .x = x, .kern = attn_kernels_best(), .layer = req->layer, .G = G, .d = d,
		.dtype = g->dtype, .B = kv_ctx_block_tokens(c), .begin = req->token_begin, .end = end,
		.budget = budget, .qs = qs, .o = res->o, .lse = res->lse,
	};
	ex->parallel(ex->pool, g->n_kv_heads, policy_unit, &job);
	if ((rc = atomic_load(&job.err))) {
		res->err_block = atomic_load(&job.err_block);
		res->err_head = atomic_load(&job.err_head);
		goto out;
	}
	res->scanned = atomic_load(&job.scanned);
	res->loaded = atomic_load(&job.loaded);
out:
	free(qs);
	kv_ctx_read_end(c);
	return rc;
}
