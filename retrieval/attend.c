/* Exact ATTEND over stored blocks: split by (KV head, token chunk), merge. */
#include "attend.h"

#include <errno.h>
#include <stdatomic.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

static void serial_parallel(void *pool, unsigned n, void (*fn)(void *arg, unsigned i), void *arg)
{
	(void)pool;
	for (unsigned i = 0; i < n; i++)
		fn(arg, i);
}

const struct attend_exec attend_exec_serial = {
	.parallel = serial_parallel, .pool = NULL, .workers = 1,
};

/* Below this many tokens a chunk costs more to schedule and merge than it saves. */
#define MIN_CHUNK_TOKENS 8192u
/* Blocks pinned (and read from SSD, when missing, in one batch) at a time. */
#define PIN_WINDOW 128u

struct exact_job {
	struct kv_ctx *c;
	const struct attn_kernels *kern;
	uint32_t layer, G, d, dtype, B;
	size_t row;
	uint64_t begin, end, chunk;
	unsigned chunks;
	const float *qs;          /* scaled queries [Hq][d] */
	float *part;              /* per unit: o [G][d], then lse [G] */
	_Atomic int err;          /* the first unit's failure */
	_Atomic uint64_t err_block;
	_Atomic uint32_t err_head;
};

static void exact_unit(void *arg, unsigned i)
{
	struct exact_job *j = arg;
	unsigned h = i / j->chunks, ch = i % j->chunks;
	uint64_t b0 = j->begin + (uint64_t)ch * j->chunk;
	uint64_t b1 = b0 + j->chunk < j->end ? b0 + j->chunk : j->end;
	const unsigned G = j->G, d = j->d;
	float *o = j->part + (size_t)i * G * (d + 1);
	float *lse = o + (size_t)G * d;
	float m[ATTN_MAX_GROUP], l[ATTN_MAX_GROUP];
	/* the numerator accumulates in place of o: finish() may alias them */
	attn_state_init(G, d, m, l, o);
	const float *q = j->qs + (size_t)h * G * d;
	attn_block_fn fn = j->kern->block[j->dtype];
	const uint8_t *win[PIN_WINDOW];
	uint64_t t = b0;
	while (t < b1) {
		uint64_t wb0 = t / j->B, wb1 = (b1 - 1) / j->B + 1;
		if (wb1 - wb0 > PIN_WINDOW)
			wb1 = wb0 + PIN_WINDOW;
		uint64_t bad;
		int rc = kv_ctx_pin(j->c, j->layer, h, wb0, (uint32_t)(wb1 - wb0), win, &bad);
		if (rc) {
			int zero = 0;
			if (atomic_compare_exchange_strong(&j->err, &zero, rc)) {
				atomic_store(&j->err_block, bad);
				atomic_store(&j->err_head, h);
			}
			return;
		}
		uint64_t wend = wb1 * j->B < b1 ? wb1 * j->B : b1;
		while (t < wend) {
			uint64_t b = t / j->B, off = t % j->B;
			uint64_t n = j->B - off;
			if (n > wend - t)
				n = wend - t;
			if (n > ATTN_MAX_BLOCK)
				n = ATTN_MAX_BLOCK;
			const uint8_t *blk = win[b - wb0];
			fn(q, G, d, blk + off * j->row, blk + (j->B + off) * j->row, (unsigned)n, m, l, o);
			t += n;
		}
		kv_ctx_unpin(j->c, j->layer, h, wb0, (uint32_t)(wb1 - wb0));
	}
	attn_state_finish(G, d, m, l, o, o, lse);
}

int attend_exact(struct kv_ctx *c, const struct attend_request *req,
		 struct attend_result *res, const struct attend_exec *ex)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const unsigned G = g->n_q_heads / g->n_kv_heads, d = g->head_dim;
	int rc = 0;
	if (req->layer >= g->n_layers)
		return -EINVAL;

	kv_ctx_read_begin(c);
	uint64_t len = kv_ctx_layer_tokens(c, req->layer);
	uint64_t end = req->token_end == UINT64_MAX ? len : req->token_end;
	if (req->token_begin > end || end > len) {
		rc = -ERANGE;
		goto out;
	}
	uint64_t n_tok = end - req->token_begin;
	unsigned workers = ex->workers ? ex->workers : 1;
	unsigned chunks = 1;
	if (workers > 1 && n_tok >= 2 * MIN_CHUNK_TOKENS) {
		/* enough units to keep every worker busy, two each for balance */
		unsigned want = (2 * workers + g->n_kv_heads - 1) / g->n_kv_heads;
		uint64_t most = n_tok / MIN_CHUNK_TOKENS;
		chunks = want < most ? want : (unsigned)most;
		if (chunks < 1)
			chunks = 1;
	}
	const uint32_t B = kv_ctx_block_tokens(c);
	uint64_t chunk = (n_tok + chunks - 1) / chunks;
	chunk = (chunk + B - 1) / B * B;       /* chunks start on block edges */
	if (chunk == 0)
		chunk = B;
	chunks = (unsigned)((n_tok + chunk - 1) / chunk);
	if (chunks == 0)
		chunks = 1;

	unsigned units = g->n_kv_heads * chunks;
	float *qs = malloc((size_t)g->n_q_heads * d * sizeof(float));
	float *part = malloc((size_t)units * G * (d + 1) * sizeof(float));
	if (!qs || !part) {
		free(qs);
		free(part);
		rc = -ENOMEM;
		goto out;
	}
	const float scale = 1.0f / sqrtf((float)d);
	for (size_t i = 0; i < (size_t)g->n_q_heads * d; i++)
		qs[i] = req->q[i] * scale;

	struct exact_job job = {
		.c = c, .kern = attn_kernels_best(), .layer = req->layer, .G = G, .d = d,
		.dtype = g->dtype, .B = B, .row = (size_t)d * g->elem_size,
		.begin = req->token_begin, .end = end, .chunk = chunk, .chunks = chunks,
		.qs = qs, .part = part,
	};
	ex->parallel(ex->pool, units, exact_unit, &job);
	if ((rc = atomic_load(&job.err))) {
		res->err_block = atomic_load(&job.err_block);
		res->err_head = atomic_load(&job.err_head);
		free(qs);
		free(part);
		goto out;
	}

	for (unsigned h = 0; h < g->n_kv_heads; h++) {
		for (unsigned qi = 0; qi < G; qi++) {
			float *o = res->o + ((size_t)h * G + qi) * d;
			float *lse = &res->lse[h * G + qi];
			*lse = -INFINITY;
			memset(o, 0, (size_t)d * sizeof(float));
			for (unsigned ch = 0; ch < chunks; ch++) {
				const float *po = part + (size_t)(h * chunks + ch) * G * (d + 1);
				const float *pl = po + (size_t)G * d;
				attn_merge(d, o, lse, po + (size_t)qi * d, pl[qi]);
			}
		}
	}
	res->scanned = n_tok * g->n_kv_heads;
	res->loaded = n_tok * g->n_kv_heads;
	free(qs);
	free(part);
out:
	kv_ctx_read_end(c);
	return rc;
}
