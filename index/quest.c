/*
 * quest: per-page bounds of q.k from the element-wise min and max of the
 * page's keys (Quest). See policy.h for the scoring and what scanned counts.
 *
 * Glossary
 *   page   unit_tokens (16) consecutive tokens; the last may be shorter
 *   bound  U = sum_i max(q_i*max_i, q_i*min_i) = q+ . max + q- . min, where
 *          q+ = max(q, 0) and q- = min(q, 0): one dot product of the page
 *          row [max | min] (2d floats) with the query row [q+ | q-]
 *
 * Blob body (format 2): n u64, d u32, page u32, dtype u32 (0 f32, 1 bf16),
 * then pages x [max | min] of that dtype. The bounds are elementwise maxima
 * and minima of keys, so over a bf16 context they are bf16 values and are
 * saved as such: half the bytes a restart reads. Format 1 (no dtype, f32)
 * still loads.
 */
#include <errno.h>
#include <stdbool.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ix.h"

#define QUEST_VERSION 2
#define QUEST_VERSION_F32 1     /* before the dtype field */
#define QUEST_PAGE 16
#define QUEST_MIN_PAGES 3
#define QUEST_MAX_PAGE 65536u

struct quest {
	struct index base;
	uint64_t n;
	unsigned d, page;
	uint64_t pages;
	struct ix_mat rows;       /* [pages][2d]: max, then min */
};

static const struct quest *to_quest(const struct index *ix)
{
	return ix && ix->policy == POLICY_QUEST ? (const struct quest *)ix : NULL;
}

static void quest_free(struct index *ix)
{
	struct quest *qx = (struct quest *)ix;
	if (!qx)
		return;
	IX_ASSERT(ix->policy == POLICY_QUEST);
	ix_mat_free(&qx->rows);
	free(qx);
}

static int quest_alloc(uint64_t n, unsigned d, unsigned page, struct quest **out)
{
	struct quest *qx = calloc(1, sizeof(*qx));
	if (!qx)
		return -ENOMEM;
	qx->base.policy = POLICY_QUEST;
	qx->n = n;
	qx->d = d;
	qx->page = page;
	qx->pages = (n + page - 1) / page;
	*out = qx;
	return 0;
}

struct quest_job {
	struct quest *qx;
	const float *k;
	float *rows;
};

#define QUEST_PAGES_PER_JOB 4096

static int quest_job(void *ctx, size_t item, unsigned worker)
{
	struct quest_job *j = ctx;
	struct quest *qx = j->qx;
	const unsigned d = qx->d;
	uint64_t p0 = (uint64_t)item * QUEST_PAGES_PER_JOB, p1 = p0 + QUEST_PAGES_PER_JOB;
	if (p1 > qx->pages)
		p1 = qx->pages;
	for (uint64_t p = p0; p < p1; p++) {
		float *mx = j->rows + p * 2 * d, *mn = mx + d;
		uint64_t t0 = p * qx->page, t1 = t0 + qx->page < qx->n ? t0 + qx->page : qx->n;
		memcpy(mx, j->k + t0 * d, d * sizeof(float));
		memcpy(mn, j->k + t0 * d, d * sizeof(float));
		for (uint64_t t = t0 + 1; t < t1; t++) {
			const float *k = j->k + t * d;
			for (unsigned i = 0; i < d; i++) {
				mx[i] = k[i] > mx[i] ? k[i] : mx[i];
				mn[i] = k[i] < mn[i] ? k[i] : mn[i];
			}
		}
	}
	return 0;
}

static int quest_build(const struct index_keys *keys, const struct index_build_params *p, struct index **out)
{
	if (!keys || !keys->k || !keys->n || keys->n > IX_MAX_TOKENS || !keys->d || keys->d > IX_MAX_DIM || !out)
		return -EINVAL;
	unsigned page = p && p->unit_tokens ? p->unit_tokens : QUEST_PAGE;
	if (page > QUEST_MAX_PAGE)
		return -EINVAL;
	struct quest *qx;
	int rc = quest_alloc(keys->n, keys->d, page, &qx);
	if (rc)
		return rc;
	const size_t nf = qx->pages * 2 * qx->d;
	struct quest_job job = { .qx = qx, .k = keys->k, .rows = malloc(nf * sizeof(float)) };
	if (!job.rows) {
		rc = -ENOMEM;
		goto fail;
	}
	rc = ix_parallel(p ? p->threads : 0, (qx->pages + QUEST_PAGES_PER_JOB - 1) / QUEST_PAGES_PER_JOB,
			 quest_job, &job);
	if (rc) {
		free(job.rows);
		goto fail;
	}
	ix_mat_take(&qx->rows, job.rows, nf);
	*out = &qx->base;
	return 0;
fail:
	quest_free(&qx->base);
	return rc;
}

static int quest_search(const struct index *ix, const struct index_keys *keys, const float *q, unsigned G,
			uint64_t budget, struct index_result *res)
{
	const struct quest *qx = to_quest(ix);
	if (!qx)
		return -EINVAL;
	int rc = ix_search_prologue(qx->n, qx->d, keys, 2, q, G, budget, res);
	if (rc)
		return rc < 0 ? rc : 0;
	const unsigned d = qx->d, P = qx->page;
	const uint64_t pages = qx->pages;
	const size_t min_pages = QUEST_MIN_PAGES;
	const size_t tail_max = ix_fill_units_room(qx->n, P, budget, min_pages);
	size_t off_qr = 0;
	size_t off_u = off_qr + ix_align((size_t)G * 2 * d * sizeof(float));
	size_t off_it = off_u + ix_align((size_t)pages * G * sizeof(float));
	size_t off_bits = off_it + ix_align((size_t)pages * sizeof(struct ix_item));
	size_t off_ids = off_bits + ix_align(ix_bits_words(qx->n) * sizeof(uint64_t));
	size_t off_tmp = off_ids + ix_align(tail_max * sizeof(uint32_t));
	size_t total = off_tmp + tail_max * sizeof(struct ix_item);
	uint8_t *sc = ix_scratch(total);
	if (!sc)
		return -ENOMEM;
	float *qr = (float *)(sc + off_qr), *U = (float *)(sc + off_u);
	struct ix_item *it = (struct ix_item *)(sc + off_it), *tmp = (struct ix_item *)(sc + off_tmp);
	uint64_t *bits = (uint64_t *)(sc + off_bits);
	uint32_t *ids = (uint32_t *)(sc + off_ids);

	/* query rows [q+ | q-] against page rows [max | min] */
	for (unsigned g = 0; g < G; g++)
		for (unsigned i = 0; i < d; i++) {
			float x = q[(size_t)g * d + i];
			qr[(size_t)g * 2 * d + i] = x > 0 ? x : 0;
			qr[(size_t)g * 2 * d + d + i] = x < 0 ? x : 0;
		}
	ix_mat_dots(&qx->rows, pages, 2 * (size_t)d, qr, G, 2 * d, U);
	/* the group's summed softmax over pages of the bounds */
	float lse[IX_MAX_GROUP];
	ix_group_softmax(U, NULL, NULL, pages, G, lse, IX_MASS, it);
	for (unsigned g = 0; g < G; g++)
		if (!isfinite(lse[g]))
			lse[g] = 0;
	memset(bits, 0, ix_bits_words(qx->n) * sizeof(uint64_t));
	struct ix_walk w;
	ix_walk_init(&w, it, pages, (budget + P - 1) / P + min_pages);
	/* under min_pages pages of budget, the best tokens of the top min_pages pages */
	const int whole = budget >= (uint64_t)min_pages * P;
	const int64_t tail = ix_fill_units(&w, qx->n, P, budget, min_pages, whole, keys, q, G, lse, 1, bits, ids, tmp);
	if (tail < 0)
		return (int)tail;
	res->scanned = pages + (uint64_t)tail;
	res->n_tokens = ix_bits_emit(bits, qx->n, res->tokens);
	return 0;
}

int64_t index_quest_bounds(const struct index *ix, const float *q, float *U, uint64_t cap)
{
	const struct quest *qx = to_quest(ix);
	if (!qx || !q || (cap && !U))
		return -EINVAL;
	if (qx->pages > cap)
		return (int64_t)qx->pages;
	float *qr = ix_scratch(2 * (size_t)qx->d * sizeof(float));
	if (!qr)
		return -ENOMEM;
	for (unsigned i = 0; i < qx->d; i++) {
		qr[i] = q[i] > 0 ? q[i] : 0;
		qr[qx->d + i] = q[i] < 0 ? q[i] : 0;
	}
	ix_mat_dots(&qx->rows, qx->pages, 2 * (size_t)qx->d, qr, 1, 2 * qx->d, U);
	return (int64_t)qx->pages;
}

static int quest_save(const struct index *ix, uint8_t **buf, size_t *len)
{
	const struct quest *qx = to_quest(ix);
	if (!qx || !buf || !len)
		return -EINVAL;
	struct ix_wr w;
	const size_t nf = qx->pages * 2 * qx->d;
	ix_wr_begin(&w, POLICY_QUEST, QUEST_VERSION, 36 + ix_mat_bytes(&qx->rows, nf));
	ix_wr_u64(&w, qx->n);
	ix_wr_u32(&w, qx->d);
	ix_wr_u32(&w, qx->page);
	ix_wr_mat(&w, &qx->rows, nf);
	return ix_wr_end(&w, buf, len);
}

static int quest_load(const uint8_t *buf, size_t len, const struct index_keys *keys, struct index **out)
{
	struct ix_rd r;
	if (!out)
		return -EINVAL;
	const bool v1 = ix_rd_begin(&r, buf, len, POLICY_QUEST, QUEST_VERSION) != 0;
	int rc = v1 ? ix_rd_begin(&r, buf, len, POLICY_QUEST, QUEST_VERSION_F32) : 0;
	if (rc)
		return rc;
	uint64_t n = ix_rd_u64(&r);
	unsigned d = ix_rd_u32(&r), page = ix_rd_u32(&r);
	const uint32_t dtype = v1 ? 0 : ix_rd_u32(&r);
	if (r.err || !n || n > IX_MAX_TOKENS || !d || d > IX_MAX_DIM || !page || page > QUEST_MAX_PAGE || dtype > 1)
		return -EBADMSG;
	if (keys && (keys->n != n || keys->d != d))
		return -EINVAL;
	struct quest *qx;
	if ((rc = quest_alloc(n, d, page, &qx)))
		return rc;
	const size_t nf = qx->pages * 2 * d;
	if ((rc = ix_rd_mat(&r, dtype, nf, &qx->rows)) || (rc = ix_rd_end(&r)))
		goto fail;
	/* a min above its max; one branch-free pass per dtype (a restart checks megabytes) */
	int bad = 0;
	const float *f = qx->rows.f32;
	const uint16_t *h = qx->rows.bf16;
	for (uint64_t p = 0; p < qx->pages; p++) {
		const size_t mx = p * 2 * d, mn = mx + d;
		if (f)
			for (unsigned i = 0; i < d; i++)
				bad |= f[mn + i] > f[mx + i];
		else
			for (unsigned i = 0; i < d; i++)
				bad |= ix_bf16_f32(h[mn + i]) > ix_bf16_f32(h[mx + i]);
	}
	if (bad) {
		rc = -EBADMSG;
		goto fail;
	}
	*out = &qx->base;
	return 0;
fail:
	quest_free(&qx->base);
	return rc;
}

static size_t quest_memory(const struct index *ix)
{
	const struct quest *qx = to_quest(ix);
	return qx ? sizeof(*qx) + ix_mat_bytes(&qx->rows, qx->pages * 2 * qx->d) : 0;
}

const struct policy_ops quest_policy_ops = {
	.version = POLICY_OPS_VERSION,
	.name = "quest",
	.build = quest_build,
	.search = quest_search,
	.free = quest_free,
	.save = quest_save,
	.load = quest_load,
	.memory = quest_memory,
	.sparse_keys = 1,
};
