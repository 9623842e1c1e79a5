/*
 * blocks: fixed blocks ranked through a few representative keys each
 * (InfLLM). See policy.h for the scoring and what scanned counts.
 *
 * Glossary
 *   block           unit_tokens (128) consecutive tokens; the last may be shorter
 *   representative  one of BLOCKS_REPS keys of a block that stand for it at
 *                   search time (a block shorter than that repeats its last):
 *                   the keys that received the most attention, or medoids
 *   received        the attention a key got from prefill queries: the sum
 *                   over the last max_prefill positions and the group's heads
 *                   of softmax over the whole segment
 *
 *   step            a channel's int8 unit: its largest |value| over the
 *                   segment's representatives / 127; a representative is kept
 *                   as the nearest steps (a channel's error <= step / 2)
 *
 * Blob body (format 3): n u64, d u32, block u32, reps u32, rule u32
 * (0 medoids, 1 received attention), d f32 steps, then blocks x reps x d
 * int8. A restart reads these before its first ATTEND, so their size is on
 * its clock: a quarter of fp32, half of the bf16 of format 2. Formats 2
 * (dtype u32: 0 f32, 1 bf16, then the values) and 1 (no dtype, f32) still
 * load, quantized as they load.
 */
#include <errno.h>
#include <stdbool.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ix.h"
#include "reps.h"

#define BLOCKS_VERSION 3
#define BLOCKS_VERSION_MAT 2    /* f32 or bf16 representatives */
#define BLOCKS_VERSION_F32 1    /* before the dtype field */
#define BLOCKS_TOKENS 128
#define BLOCKS_REPS 4
#define BLOCKS_PREFILL 16
#define BLOCKS_MAX_TOKENS 65536u

enum blocks_rule {
	RULE_MEDOIDS = 0,
	RULE_RECEIVED = 1,
};

struct blocks {
	struct index base;
	uint64_t n;
	unsigned d, block, reps;
	uint32_t rule;
	uint64_t nb;
	float *step;              /* [d] */
	int8_t *rep;              /* [nb][reps][d] in steps */
};

static const struct blocks *to_blocks(const struct index *ix)
{
	return ix && ix->policy == POLICY_BLOCKS ? (const struct blocks *)ix : NULL;
}

static void blocks_free(struct index *ix)
{
	struct blocks *bx = (struct blocks *)ix;
	if (!bx)
		return;
	IX_ASSERT(ix->policy == POLICY_BLOCKS);
	free(bx->step);
	free(bx->rep);
	free(bx);
}

static int blocks_alloc(uint64_t n, unsigned d, unsigned block, unsigned reps, struct blocks **out)
{
	struct blocks *bx = calloc(1, sizeof(*bx));
	if (!bx)
		return -ENOMEM;
	bx->base.policy = POLICY_BLOCKS;
	bx->n = n;
	bx->d = d;
	bx->block = block;
	bx->reps = reps;
	bx->nb = (n + block - 1) / block;
	*out = bx;
	return 0;
}

/* Representatives @p v [nb][reps][d] into int8 steps; -EINVAL for a value that is not finite. */
static int blocks_quantize(struct blocks *bx, const float *v)
{
	const unsigned d = bx->d;
	const size_t rows = bx->nb * bx->reps;
	if (!(bx->step = calloc(d, sizeof(float))) || !(bx->rep = ix_alloc_big(rows * d)))
		return -ENOMEM;
	for (size_t r = 0; r < rows; r++)
		for (unsigned i = 0; i < d; i++) {
			const float a = fabsf(v[r * d + i]);
			if (!(a <= FLT_MAX))
				return -EINVAL;
			bx->step[i] = a > bx->step[i] ? a : bx->step[i];
		}
	for (unsigned i = 0; i < d; i++)
		bx->step[i] /= 127;
	for (size_t r = 0; r < rows; r++)
		for (unsigned i = 0; i < d; i++) {
			const float st = bx->step[i], x = st > 0 ? rintf(v[r * d + i] / st) : 0;
			bx->rep[r * d + i] = (int8_t)(x > 127 ? 127 : x < -127 ? -127 : x);
		}
	return 0;
}

static int blocks_build(const struct index_keys *keys, const struct index_build_params *p, struct index **out)
{
	if (!keys || !keys->k || !keys->n || keys->n > IX_MAX_TOKENS || !keys->d || keys->d > IX_MAX_DIM || !out)
		return -EINVAL;
	unsigned block = p && p->unit_tokens ? p->unit_tokens : BLOCKS_TOKENS;
	if (block > BLOCKS_MAX_TOKENS)
		return -EINVAL;
	int received = p && p->prefill_q && p->n_prefill;
	if (received && !p->group)
		return -EINVAL;
	struct blocks *bx;
	int rc = blocks_alloc(keys->n, keys->d, block, BLOCKS_REPS, &bx);
	if (rc)
		return rc;
	struct reps_in in = { .k = keys->k, .n = keys->n, .d = keys->d, .block = block, .n_units = bx->nb,
			      .reps = bx->reps, .threads = p ? p->threads : 0 };
	if (received) {
		uint64_t T = p->max_prefill ? p->max_prefill : BLOCKS_PREFILL;
		if (T > p->n_prefill)
			T = p->n_prefill;
		if (T * p->group > 65536) {
			blocks_free(&bx->base);
			return -EINVAL;
		}
		bx->rule = RULE_RECEIVED;
		in.rows = (unsigned)(T * p->group);
		in.pq = p->prefill_q + (p->n_prefill - T) * p->group * keys->d;
	}
	const size_t nf = bx->nb * bx->reps * bx->d;
	float *rep = malloc(nf * sizeof(float));
	rc = rep ? ix_reps(&in, rep) : -ENOMEM;
	if (!rc)
		rc = blocks_quantize(bx, rep);
	free(rep);
	if (rc) {
		blocks_free(&bx->base);
		return rc;
	}
	*out = &bx->base;
	return 0;
}

static int blocks_search(const struct index *ix, const struct index_keys *keys, const float *q, unsigned G,
			 uint64_t budget, struct index_result *res)
{
	const struct blocks *bx = to_blocks(ix);
	if (!bx)
		return -EINVAL;
	int rc = ix_search_prologue(bx->n, bx->d, keys, 2, q, G, budget, res);
	if (rc)
		return rc < 0 ? rc : 0;
	const unsigned d = bx->d, B = bx->block, R = bx->reps;
	const uint64_t nb = bx->nb;
	const size_t tail_max = ix_fill_units_room(bx->n, B, budget, 1);
	size_t off_q = 0;
	size_t off_s = off_q + ix_align((size_t)G * d * sizeof(float));
	size_t off_bs = off_s + ix_align((size_t)nb * R * G * sizeof(float));
	size_t off_it = off_bs + ix_align((size_t)nb * G * sizeof(float));
	size_t off_bits = off_it + ix_align((size_t)nb * sizeof(struct ix_item));
	size_t off_ids = off_bits + ix_align(ix_bits_words(bx->n) * sizeof(uint64_t));
	size_t off_tmp = off_ids + ix_align(tail_max * sizeof(uint32_t));
	size_t total = off_tmp + tail_max * sizeof(struct ix_item);
	uint8_t *sc = ix_scratch(total);
	if (!sc)
		return -ENOMEM;
	float *qs = (float *)(sc + off_q), *S = (float *)(sc + off_s), *bs = (float *)(sc + off_bs);
	struct ix_item *it = (struct ix_item *)(sc + off_it), *tmp = (struct ix_item *)(sc + off_tmp);
	uint64_t *bits = (uint64_t *)(sc + off_bits);
	uint32_t *ids = (uint32_t *)(sc + off_ids);

	/* q . rep = (q * step) . rep8, exactly */
	for (unsigned g = 0; g < G; g++)
		for (unsigned i = 0; i < d; i++)
			qs[(size_t)g * d + i] = q[(size_t)g * d + i] * bx->step[i];
	ix_dots_i8(bx->rep, nb * R, d, qs, G, d, S);
	for (uint64_t b = 0; b < nb; b++)
		for (unsigned g = 0; g < G; g++) {
			float m = -INFINITY;
			for (unsigned r = 0; r < R; r++) {
				float x = S[(b * R + r) * G + g];
				m = x > m ? x : m;
			}
			bs[b * G + g] = m;
		}
	float lse[IX_MAX_GROUP];
	ix_group_softmax(bs, NULL, NULL, nb, G, lse, IX_MASS, it);
	for (unsigned g = 0; g < G; g++)
		if (!isfinite(lse[g]))
			lse[g] = 0;
	memset(bits, 0, ix_bits_words(bx->n) * sizeof(uint64_t));
	struct ix_walk w;
	ix_walk_init(&w, it, nb, (budget + B - 1) / B + 1);
	const int64_t tail = ix_fill_units(&w, bx->n, B, budget, 1, 1, keys, q, G, lse, 1, bits, ids, tmp);
	if (tail < 0)
		return (int)tail;
	res->scanned = nb * R + (uint64_t)tail;
	res->n_tokens = ix_bits_emit(bits, bx->n, res->tokens);
	return 0;
}

static int blocks_save(const struct index *ix, uint8_t **buf, size_t *len)
{
	const struct blocks *bx = to_blocks(ix);
	if (!bx || !buf || !len)
		return -EINVAL;
	struct ix_wr w;
	size_t nf = bx->nb * bx->reps * bx->d;
	ix_wr_begin(&w, POLICY_BLOCKS, BLOCKS_VERSION, 40 + 4 * (size_t)bx->d + nf);
	ix_wr_u64(&w, bx->n);
	ix_wr_u32(&w, bx->d);
	ix_wr_u32(&w, bx->block);
	ix_wr_u32(&w, bx->reps);
	ix_wr_u32(&w, bx->rule);
	ix_wr_f32s(&w, bx->step, bx->d);
	ix_wr_bytes(&w, bx->rep, nf);
	return ix_wr_end(&w, buf, len);
}

static int blocks_load(const uint8_t *buf, size_t len, const struct index_keys *keys, struct index **out)
{
	struct ix_rd r;
	if (!out)
		return -EINVAL;
	unsigned version = BLOCKS_VERSION;
	int rc = ix_rd_begin(&r, buf, len, POLICY_BLOCKS, BLOCKS_VERSION);
	if (rc && !ix_rd_begin(&r, buf, len, POLICY_BLOCKS, BLOCKS_VERSION_MAT))
		version = BLOCKS_VERSION_MAT, rc = 0;
	else if (rc && !ix_rd_begin(&r, buf, len, POLICY_BLOCKS, BLOCKS_VERSION_F32))
		version = BLOCKS_VERSION_F32, rc = 0;
	if (rc)
		return rc;
	uint64_t n = ix_rd_u64(&r);
	unsigned d = ix_rd_u32(&r), block = ix_rd_u32(&r), reps = ix_rd_u32(&r);
	uint32_t rule = ix_rd_u32(&r), dtype = version == BLOCKS_VERSION_MAT ? ix_rd_u32(&r) : 0;
	if (r.err || !n || n > IX_MAX_TOKENS || !d || d > IX_MAX_DIM || !block || block > BLOCKS_MAX_TOKENS ||
	    reps != BLOCKS_REPS || rule > RULE_RECEIVED || dtype > 1)
		return -EBADMSG;
	if (keys && (keys->n != n || keys->d != d))
		return -EINVAL;
	struct blocks *bx;
	if ((rc = blocks_alloc(n, d, block, reps, &bx)))
		return rc;
	bx->rule = rule;
	const size_t nf = bx->nb * reps * d;
	if (version == BLOCKS_VERSION) {
		const uint8_t *rep = NULL;
		if (!(rc = ix_rd_f32s(&r, d, &bx->step)))
			rc = (rep = ix_rd_bytes(&r, nf)) ? 0 : -EBADMSG;
		if (!rc && !(bx->rep = ix_alloc_big(nf)))
			rc = -ENOMEM;
		if (!rc) {
			memcpy(bx->rep, rep, nf);
			/* a step is finite and >= 0, and -128 is not a step count quantize() makes */
			int bad = 0;
			for (unsigned i = 0; i < d; i++)
				bad |= !(bx->step[i] >= 0 && bx->step[i] <= FLT_MAX);
			for (size_t i = 0; i < nf; i++)
				bad |= bx->rep[i] == INT8_MIN;
			rc = bad ? -EBADMSG : 0;
		}
	} else {
		/* older side files: fp32 or bf16 representatives, quantized now */
		struct ix_mat m;
		float *f = NULL;
		if (!(rc = ix_rd_mat(&r, dtype, nf, &m))) {
			if (!(f = m.f32 ? m.f32 : malloc(nf * sizeof(float))))
				rc = -ENOMEM;
			for (size_t i = 0; !rc && !m.f32 && i < nf; i++)
				f[i] = ix_bf16_f32(m.bf16[i]);
			if (!rc && (rc = blocks_quantize(bx, f)) == -EINVAL)
				rc = -EBADMSG;
			if (f != m.f32)
				free(f);
			ix_mat_free(&m);
		}
	}
	if (rc || (rc = ix_rd_end(&r))) {
		blocks_free(&bx->base);
		return rc;
	}
	*out = &bx->base;
	return 0;
}

static size_t blocks_memory(const struct index *ix)
{
	const struct blocks *bx = to_blocks(ix);
	return bx ? sizeof(*bx) + bx->d * sizeof(float) + bx->nb * bx->reps * bx->d : 0;
}

const struct policy_ops blocks_policy_ops = {
	.version = POLICY_OPS_VERSION,
	.name = "blocks",
	.build = blocks_build,
	.search = blocks_search,
	.free = blocks_free,
	.save = blocks_save,
	.load = blocks_load,
	.memory = blocks_memory,
	.sparse_keys = 1,
};
