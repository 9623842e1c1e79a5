/*
 * quest: per-page bounds of q.k from the element-wise min and max of the
 * page's keys (Quest). See policy.h for the scoring and what scanned counts.
 *
 * Glossary
 *   page   unit_tokens (16) consecutive tokens; the last may be shorter
 *   bound  U = sum_i max(q_i*max_i, q_i*min_i) = q+ . max + q- . min, where
 *          q+ = max(q, 0) and q- = min(q, 0): one dot product of the page
 *          row [max | min] (2d floats) with the query row [q+ | q-]
 *   code   with rerank: each key channel as 4 bits on its page's own
 *          [min, max] grid, k_i ~ min_i + (max_i - min_i) * c_i / 15,
 *          blocked (ix_code_put()): a page is ceil(page / 8) blocks of 8
 *          tokens, d/2 bytes a token when 8 divides page and d
 *   rerank the search pools the best pages until they hold rerank times
 *          the budget, scores their tokens from the codes with the page's
 *          weights in int8 (ix_nibble_mass()), and keeps the best budget of
 *          them: no key is read from the blocks
 *
 *   step   the bounds are kept as int8 multiples of a step per channel
 *          (its largest |max| or |min| over the pages / 127), the max
 *          rounded up and the min down, so they still bound every key:
 *          a byte a value, half of bf16, and the search reads all of them
 *
 * Blob body (format 5): n u64, d u32, page u32, rerank f32 (<= 1: none),
 * d x step f32, pages x [max | min] int8, then with rerank the blocked
 * codes, pages x code_page bytes. Formats 4 and 3 (dtype u32 after rerank,
 * then fp32 or bf16 bounds) load without codes; with codes they are
 * refused (their codes are on the exact bounds' grid), and the daemon
 * builds over them. Formats 2 (no rerank) and 1 (no dtype, fp32) load.
 */
#include <errno.h>
#include <stdbool.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ix.h"

#define QUEST_VERSION 5
#define QUEST_VERSION_BLOCKED 4   /* bounds as fp32 or bf16 */
#define QUEST_VERSION_ROW_CODES 3 /* the same, codes a token at a time */
#define QUEST_VERSION_BOUNDS 2  /* before rerank */
#define QUEST_VERSION_F32 1     /* before the dtype field */
#define QUEST_MAX_RERANK 1024.0f
#define QUEST_PAGE 16
#define QUEST_MIN_PAGES 3
#define QUEST_MAX_PAGE 65536u

struct quest {
	struct index base;
	uint64_t n;
	unsigned d, page;
	uint64_t pages;
	int8_t *rows;             /* [pages][2d]: max, then min, in steps */
	float *step;              /* [d] per channel */
	float rerank;             /* > 1: codes are kept and searches rerank */
	uint8_t *codes;           /* [pages][code_page], blocked */
	size_t code_page;         /* ceil(page / 8) blocks */
	uint16_t *rmax;           /* with codes: [d] each channel's largest max - min over the pages */
};

static size_t code_page_bytes(unsigned d, unsigned page)
{
	return (size_t)((page + IX_CODE_BLOCK - 1) / IX_CODE_BLOCK) * ix_code_block_bytes(d);
}

/* Where token t's block starts, and its place in the block. */
static uint8_t *code_block(const struct quest *qx, uint64_t t, unsigned *in_block)
{
	const uint64_t j = t % qx->page;
	*in_block = (unsigned)(j % IX_CODE_BLOCK);
	return qx->codes + t / qx->page * qx->code_page + j / IX_CODE_BLOCK * ix_code_block_bytes(qx->d);
}

/* 4-bit codes of every key on its page's [min, max] grid (keys [n][d]). */
static int quest_codes(struct quest *qx, const float *k)
{
	const unsigned d = qx->d;
	qx->code_page = code_page_bytes(d, qx->page);
	if (qx->pages > SIZE_MAX / qx->code_page || !(qx->codes = ix_alloc_big(qx->pages * qx->code_page)))
		return -ENOMEM;
	memset(qx->codes, 0, qx->pages * qx->code_page);
	for (uint64_t t = 0; t < qx->n; t++) {
		const size_t row = t / qx->page * 2 * d;
		unsigned at;
		uint8_t *blk = code_block(qx, t, &at);
		for (unsigned i = 0; i < d; i++) {
			const float mx = qx->rows[row + i] * qx->step[i], mn = qx->rows[row + d + i] * qx->step[i];
			const float r = mx - mn;
			long v = r > 0 ? lrintf((k[t * d + i] - mn) / r * 15.0f) : 0;
			v = v < 0 ? 0 : v > 15 ? 15 : v;
			ix_code_put(blk, at, i, (unsigned)v);
		}
	}
	return 0;
}

/* Each channel's widest page (in steps): what bounds the rerank's weights on every page. */
static int quest_ranges(struct quest *qx)
{
	const unsigned d = qx->d;
	if (!(qx->rmax = calloc(d, sizeof(uint16_t))))
		return -ENOMEM;
	for (uint64_t p = 0; p < qx->pages; p++) {
		const int8_t *r = qx->rows + p * 2 * d;
		for (unsigned i = 0; i < d; i++) {
			const uint16_t w = (uint16_t)(r[i] - r[d + i]);
			qx->rmax[i] = w > qx->rmax[i] ? w : qx->rmax[i];
		}
	}
	return 0;
}

/* The scratch quest_rerank() needs, in bytes: 16-bit query weights, int8 weights, a page's masses. */
static size_t rerank_scratch(unsigned G, unsigned d, unsigned page)
{
	return ix_align((size_t)G * ix_code_dims(d) * sizeof(int16_t)) + ix_align((size_t)G * ix_code_dims(d)) +
	       (size_t)(page + IX_CODE_BLOCK) * sizeof(float);
}

/*
 * Rerank: score the tokens of the pooled @p pages [np] (ascending, so that
 * the rows and codes stream forward) from their codes, per head
 * q_g . k^ = q_g . min + sum_i w_gi c_i with w_gi = q_gi (max_i - min_i) / 15
 * as int8 integer products (ix_code_weights_q8(): 16-bit query weights made
 * once a search, on one scale a head that no page's widest channel
 * overflows; the codes carry 4 bits, the weights 7 and a sign), a page's
 * codes scored in one ix_nibble_mass(), and keep the best @p take by
 * sum_g exp(s_g - off[g]) (the tail fill's score); with @p cohere
 * (index_result.cohere) the last of them come from the pages the first
 * hold.
 * @param held room for a bit per page
 * @param tmp  room for np * page items
 * @param sc   room for rerank_scratch() bytes, aligned
 */
static void quest_rerank(const struct quest *qx, const float *qs, unsigned G, const float *off, const uint32_t *pages,
			 size_t np, size_t take, float cohere, uint64_t *bits, uint64_t *held, struct ix_item *tmp,
			 uint8_t *sc)
{
	const unsigned d = qx->d, P = qx->page;
	const size_t row_bytes = 2 * (size_t)d, code_page = qx->code_page;
	const unsigned dp = ix_code_dims(d);
	float base[IX_MAX_GROUP], scale[IX_MAX_GROUP];
	int16_t *q16 = (int16_t *)sc;
	int8_t *W = (int8_t *)(sc + ix_align((size_t)G * dp * sizeof(int16_t)));
	float *mass = (float *)((uint8_t *)W + ix_align((size_t)G * dp));
	/* the query weights once a search, on the scale D_g that keeps every page's |W| <= 127 (ix.h) */
	for (unsigned g = 0; g < G; g++) {
		const float *qg = qs + (size_t)g * d;
		float D = 0;
		for (unsigned i = 0; i < d; i++) {
			const float a = fabsf(qg[i]) * (float)qx->rmax[i];
			D = a > D || isnan(a) ? a : D;
		}
		D /= 127;
		/* a query with a NaN or an infinity: a NaN scale, so its scores are NaN, -inf below */
		const int ok = isfinite(D);
		scale[g] = ok ? D / 15 : NAN;
		for (unsigned i = 0; i < dp; i++) {
			const float x = i < d && ok && D > 0 ? rintf(256 * qg[i] / D) : 0;
			q16[(size_t)g * dp + i] = (int16_t)(x > 32767 ? 32767 : x < -32767 ? -32767 : x);
		}
	}
	size_t cnt = 0;
	for (size_t j = 0; j < np; j++) {
		if (j + 1 < np) {
			/* the next page's row and codes are a random step away: start them now */
			const int8_t *r = qx->rows + (size_t)pages[j + 1] * row_bytes;
			const uint8_t *c = qx->codes + (size_t)pages[j + 1] * code_page;
			for (size_t o = 0; o < row_bytes; o += 64)
				__builtin_prefetch(r + o);
			for (size_t o = 0; o < code_page; o += 64)
				__builtin_prefetch(c + o);
		}
		const uint64_t page = pages[j], t0 = page * P, t1 = t0 + P < qx->n ? t0 + P : qx->n;
		ix_code_weights_q8(qx->rows + page * 2 * d, d, q16, qs, G, W, base);
		for (unsigned g = 0; g < G; g++)
			base[g] -= off[g];
		ix_nibble_mass(qx->codes + page * code_page, (t1 - t0 + IX_CODE_BLOCK - 1) / IX_CODE_BLOCK, d, W, scale,
			       base, G, mass);
		for (uint64_t t = t0; t < t1; t++) {
			const float m = mass[t - t0];
			tmp[cnt].score = isnan(m) ? -INFINITY : m;
			tmp[cnt++].id = (uint32_t)t;
		}
	}
	if (take > cnt)
		take = cnt;
	/* the core by score; then, with cohere, the rest from the pages it holds first */
	const size_t core = cohere > 0 ? take - (size_t)((double)cohere * (double)take) : take;
	ix_select(tmp, cnt, core);
	for (size_t j = 0; j < core; j++)
		ix_bit_set(bits, tmp[j].id);
	if (core == take)
		return;
	memset(held, 0, ix_bits_words(qx->pages) * sizeof(uint64_t));
	for (size_t j = 0; j < core; j++)
		ix_bit_set(held, tmp[j].id / P);
	/* the held pages' tokens to the front, then the best of them, then of the others */
	size_t a = core;
	for (size_t j = core; j < cnt; j++)
		if (ix_bit_get(held, tmp[j].id / P)) {
			const struct ix_item t = tmp[a];
			tmp[a++] = tmp[j];
			tmp[j] = t;
		}
	const size_t want = take - core, na = a - core, from_held = na < want ? na : want;
	ix_select(tmp + core, na, from_held);
	for (size_t j = core; j < core + from_held; j++)
		ix_bit_set(bits, tmp[j].id);
	ix_select(tmp + a, cnt - a, want - from_held);
	for (size_t j = a; j < a + want - from_held; j++)
		ix_bit_set(bits, tmp[j].id);
}

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
	free(qx->rows);
	free(qx->step);
	free(qx->codes);
	free(qx->rmax);
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

/*
 * Bounds @p f [pages][2d] (fp32 max, then min) into int8 steps: the step
 * of channel i is its largest |value| / 127 (nudged up until 127 steps
 * reach it), the max rounds up and the min down, so that the stepped
 * bounds hold the exact ones.
 */
static int quest_quantize(struct quest *qx, const float *f)
{
	const unsigned d = qx->d;
	if (!(qx->step = calloc(d, sizeof(float))) || !(qx->rows = ix_alloc_big(qx->pages * 2 * d)))
		return -ENOMEM;
	for (uint64_t p = 0; p < qx->pages; p++)
		for (unsigned h = 0; h < 2; h++)
			for (unsigned i = 0; i < d; i++) {
				const float a = fabsf(f[(p * 2 + h) * d + i]);
				qx->step[i] = a > qx->step[i] ? a : qx->step[i];
			}
	for (unsigned i = 0; i < d; i++) {
		const float top = qx->step[i];
		if (!isfinite(top))
			return -EINVAL;
		float st = top / 127.0f;
		while (st > 0 && 127.0f * st < top)
			st = nextafterf(st, INFINITY);
		qx->step[i] = st;
	}
	for (uint64_t p = 0; p < qx->pages; p++)
		for (unsigned i = 0; i < d; i++) {
			const float st = qx->step[i], mx = f[p * 2 * d + i], mn = f[p * 2 * d + d + i];
			float a = st > 0 ? ceilf(mx / st) : 0, b = st > 0 ? floorf(mn / st) : 0;
			/* the division may round across an integer: step once more */
			a += a < 127 && a * st < mx;
			b -= b > -127 && b * st > mn;
			qx->rows[p * 2 * d + i] = (int8_t)(a > 127 ? 127 : a < -127 ? -127 : a);
			qx->rows[p * 2 * d + d + i] = (int8_t)(b > 127 ? 127 : b < -127 ? -127 : b);
		}
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
	const float rerank = p && p->rerank > 1 ? p->rerank : 0;
	if (page > QUEST_MAX_PAGE || (p && !(p->rerank >= 0 && p->rerank <= QUEST_MAX_RERANK)))
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
	rc = quest_quantize(qx, job.rows);
	free(job.rows);
	if (rc)
		goto fail;
	qx->rerank = rerank;
	if (rerank && ((rc = quest_codes(qx, keys->k)) || (rc = quest_ranges(qx))))
		goto fail;
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
	if (!qx || (res && !(res->cohere >= 0 && res->cohere < 1)))
		return -EINVAL;
	int rc = ix_search_prologue(qx->n, qx->d, keys, 2, q, G, budget, res);
	if (rc)
		return rc < 0 ? rc : 0;
	const unsigned d = qx->d, P = qx->page;
	const uint64_t pages = qx->pages;
	const size_t min_pages = QUEST_MIN_PAGES;
	/* rerank: the pool of pages to score from the codes, when it is less than everything */
	const uint64_t pool = qx->codes ? (uint64_t)((double)qx->rerank * (double)budget) : 0;
	const int reranks = pool > budget && pool < qx->n;
	const size_t tail_max = ix_fill_units_room(qx->n, P, reranks ? pool : budget, min_pages);
	size_t off_qr = 0;
	size_t off_qs = off_qr + ix_align((size_t)G * 2 * d * sizeof(float));
	size_t off_u = off_qs + ix_align((size_t)G * d * sizeof(float));
	size_t off_it = off_u + ix_align((size_t)pages * G * sizeof(float));
	size_t off_bits = off_it + ix_align((size_t)pages * sizeof(struct ix_item));
	size_t off_ids = off_bits + ix_align(ix_bits_words(qx->n) * sizeof(uint64_t));
	size_t off_tmp = off_ids + ix_align(tail_max * sizeof(uint32_t));
	size_t off_w = off_tmp + ix_align(tail_max * sizeof(struct ix_item));
	size_t off_marks = off_w + ix_align(rerank_scratch(G, d, P));
	size_t off_order = off_marks + ix_align(ix_bits_words(pages) * sizeof(uint64_t));
	size_t total = off_order + (reranks ? pages * sizeof(uint64_t) : 0);
	uint8_t *sc = ix_scratch(total);
	if (!sc)
		return -ENOMEM;
	float *qr = (float *)(sc + off_qr), *qs = (float *)(sc + off_qs), *U = (float *)(sc + off_u);
	struct ix_item *it = (struct ix_item *)(sc + off_it), *tmp = (struct ix_item *)(sc + off_tmp);
	uint64_t *bits = (uint64_t *)(sc + off_bits);
	uint32_t *ids = (uint32_t *)(sc + off_ids);

	/* query rows [q+ | q-] in steps against page rows [max | min]; qs = q in steps */
	for (unsigned g = 0; g < G; g++)
		for (unsigned i = 0; i < d; i++) {
			const float x = q[(size_t)g * d + i] * qx->step[i];
			qr[(size_t)g * 2 * d + i] = x > 0 ? x : 0;
			qr[(size_t)g * 2 * d + d + i] = x < 0 ? x : 0;
			qs[(size_t)g * d + i] = x;
		}
	/* the bounds rank pages, so the queries may go in int8 (index_quest_bounds() stays exact) */
	ix_bounds_i8q(qx->rows, pages, 2 * (size_t)d, qr, G, d, U);
	/* the group's summed softmax over pages of the bounds */
	float lse[IX_MAX_GROUP];
	ix_group_softmax(U, NULL, NULL, pages, G, lse, IX_MASS, it);
	for (unsigned g = 0; g < G; g++)
		if (!isfinite(lse[g]))
			lse[g] = 0;
	memset(bits, 0, ix_bits_words(qx->n) * sizeof(uint64_t));
	if (reranks) {
		/* the best pages until they hold the pool (all pages but the last hold P), in page order */
		uint64_t np = (pool + P - 1) / P;
		np = np < pages ? np : pages;
		ix_select(it, pages, np);
		uint64_t *marks = (uint64_t *)(sc + off_marks);
		memset(marks, 0, ix_bits_words(pages) * sizeof(uint64_t));
		for (uint64_t j = 0; j < np; j++)
			ix_bit_set(marks, it[j].id);
		uint64_t *order = (uint64_t *)(sc + off_order);
		ix_bits_emit(marks, pages, order);
		for (uint64_t j = 0; j < np; j++)
			ids[j] = (uint32_t)order[j];
		quest_rerank(qx, qs, G, lse, ids, np, budget, res->cohere, bits, marks, tmp, sc + off_w);
		res->scanned = pages + (np * P < qx->n ? np * P : qx->n);
		res->n_tokens = ix_bits_emit(bits, qx->n, res->tokens);
		return 0;
	}
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
		const float x = q[i] * qx->step[i];
		qr[i] = x > 0 ? x : 0;
		qr[qx->d + i] = x < 0 ? x : 0;
	}
	ix_dots_i8(qx->rows, qx->pages, 2 * (size_t)qx->d, qr, 1, 2 * qx->d, U);
	return (int64_t)qx->pages;
}

static int quest_save(const struct index *ix, uint8_t **buf, size_t *len)
{
	const struct quest *qx = to_quest(ix);
	if (!qx || !buf || !len)
		return -EINVAL;
	struct ix_wr w;
	const size_t nf = qx->pages * 2 * qx->d;
	const size_t codes = qx->codes ? qx->pages * qx->code_page : 0;
	ix_wr_begin(&w, POLICY_QUEST, QUEST_VERSION, 20 + (size_t)qx->d * 4 + nf + codes);
	ix_wr_u64(&w, qx->n);
	ix_wr_u32(&w, qx->d);
	ix_wr_u32(&w, qx->page);
	ix_wr_f32(&w, qx->codes ? qx->rerank : 0);
	ix_wr_f32s(&w, qx->step, qx->d);
	ix_wr_bytes(&w, qx->rows, nf);
	if (codes)
		ix_wr_bytes(&w, qx->codes, codes);
	return ix_wr_end(&w, buf, len);
}

/* Formats 4 to 1: fp32 or bf16 bounds, stepped as a build steps them; a min above its max refused. */
static int load_float_bounds(struct ix_rd *r, uint32_t dtype, struct quest *qx)
{
	const unsigned d = qx->d;
	const size_t nf = qx->pages * 2 * d;
	struct ix_mat m = { 0 };
	int rc = ix_rd_mat(r, dtype, nf, &m);
	if (rc)
		return rc;
	float *f = m.f32;
	if (!f && (f = malloc(nf * sizeof(float))))
		for (size_t i = 0; i < nf; i++)
			f[i] = ix_bf16_f32(m.bf16[i]);
	int bad = 0;
	if (f)
		for (uint64_t p = 0; p < qx->pages; p++)
			for (unsigned i = 0; i < d; i++)
				bad |= f[p * 2 * d + d + i] > f[p * 2 * d + i];
	rc = !f ? -ENOMEM : bad ? -EBADMSG : quest_quantize(qx, f);
	if (f != m.f32)
		free(f);
	ix_mat_free(&m);
	return rc;
}

static int quest_load(const uint8_t *buf, size_t len, const struct index_keys *keys, struct index **out)
{
	struct ix_rd r;
	if (!out)
		return -EINVAL;
	static const unsigned versions[] = { QUEST_VERSION, QUEST_VERSION_BLOCKED, QUEST_VERSION_ROW_CODES,
					     QUEST_VERSION_BOUNDS, QUEST_VERSION_F32 };
	unsigned version = 0;
	int rc = -EBADMSG;
	for (unsigned v = 0; v < sizeof(versions) / sizeof(versions[0]) && rc; v++)
		if (!(rc = ix_rd_begin(&r, buf, len, POLICY_QUEST, versions[v])))
			version = versions[v];
	if (rc)
		return rc;
	uint64_t n = ix_rd_u64(&r);
	unsigned d = ix_rd_u32(&r), page = ix_rd_u32(&r);
	const float rerank = version >= QUEST_VERSION_ROW_CODES ? ix_rd_f32(&r) : 0;
	const uint32_t dtype = version == QUEST_VERSION_F32 || version == QUEST_VERSION ? 0 : ix_rd_u32(&r);
	if (r.err || !n || n > IX_MAX_TOKENS || !d || d > IX_MAX_DIM || !page || page > QUEST_MAX_PAGE || dtype > 1 ||
	    !(rerank == 0 || (rerank > 1 && rerank <= QUEST_MAX_RERANK)))
		return -EBADMSG;
	/* codes made on the exact bounds' grid do not fit the stepped one */
	if (rerank && version != QUEST_VERSION)
		return -EBADMSG;
	if (keys && (keys->n != n || keys->d != d))
		return -EINVAL;
	struct quest *qx;
	if ((rc = quest_alloc(n, d, page, &qx)))
		return rc;
	const size_t nf = qx->pages * 2 * d;
	if (version == QUEST_VERSION) {
		if ((rc = ix_rd_f32s(&r, d, &qx->step)))
			goto fail;
		const uint8_t *rows = ix_rd_bytes(&r, nf);
		if (!rows || !(qx->rows = ix_alloc_big(nf))) {
			rc = rows ? -ENOMEM : -EBADMSG;
			goto fail;
		}
		memcpy(qx->rows, rows, nf);
		int bad = 0;
		for (unsigned i = 0; i < d; i++)
			bad |= !(qx->step[i] >= 0);
		/* a min above its max; branch-free (a restart checks megabytes) */
		for (uint64_t p = 0; p < qx->pages; p++)
			for (unsigned i = 0; i < d; i++)
				bad |= qx->rows[p * 2 * d + d + i] > qx->rows[p * 2 * d + i];
		if (bad) {
			rc = -EBADMSG;
			goto fail;
		}
	} else if ((rc = load_float_bounds(&r, dtype, qx)))
		goto fail;
	if (rerank) {
		qx->code_page = code_page_bytes(d, page);
		const uint8_t *codes = ix_rd_bytes(&r, qx->pages * qx->code_page);
		if (!codes || !(qx->codes = ix_alloc_big(qx->pages * qx->code_page))) {
			rc = codes ? -ENOMEM : -EBADMSG;
			goto fail;
		}
		memcpy(qx->codes, codes, qx->pages * qx->code_page);
		qx->rerank = rerank;
		if ((rc = quest_ranges(qx)))
			goto fail;
	}
	if ((rc = ix_rd_end(&r)))
		goto fail;
	*out = &qx->base;
	return 0;
fail:
	quest_free(&qx->base);
	return rc;
}

static size_t quest_memory(const struct index *ix)
{
	const struct quest *qx = to_quest(ix);
	return qx ? sizeof(*qx) + qx->pages * 2 * qx->d + (size_t)qx->d * sizeof(float) +
			    (qx->rmax ? qx->d * sizeof(uint16_t) : 0) +
			    (qx->codes ? qx->pages * qx->code_page : 0)
		  : 0;
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
