/*
 * episodic: EM-LLM's events, retrieved by similarity and then by temporal
 * contiguity. See policy.h for the stages and what scanned counts, and
 * events.h for how events are found.
 *
 * Glossary
 *   event           [start[e], start[e + 1]) of the segment's tokens
 *   representative  one of EPISODIC_REPS keys of an event that stand for it
 *                   (reps.h: received attention, or medoids)
 *   history         a requester's contiguity FIFO (struct index_history)
 *
 * Blob body (format 1): n u64, d u32, reps u32, rule u32 (0 medoids, 1
 * received attention), source u32 (0 starts given, 1 key novelty),
 * contig_share f32, n_ev u64, then the starts u32 [n_ev] (start[0] = 0),
 * then n_ev x reps x d f32.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "events.h"
#include "ix.h"
#include "reps.h"

#define EPISODIC_VERSION 1
#define EPISODIC_REPS 4
#define EPISODIC_PREFILL 16
#define EPISODIC_CONTIG 0.3f
#define EPISODIC_MAX_EVENT 65536u
/* the coarse stage keeps the best events by their mean representative until they hold this many budgets */
#define EPISODIC_COARSE 4u
#define EPISODIC_COARSE_MIN 16u

enum { RULE_MEDOIDS = 0, RULE_RECEIVED = 1 };
enum { SOURCE_GIVEN = 0, SOURCE_NOVELTY = 1 };

struct episodic {
	struct index base;
	uint64_t n, n_ev;
	unsigned d, reps;
	uint32_t rule, source;
	float contig;
	uint32_t *start;          /* [n_ev + 1], start[n_ev] = n */
	float *rep;               /* [n_ev][reps][d] */
	float *mean;              /* [n_ev][d] the mean of an event's representatives (derived, not saved) */
	uint32_t longest;         /* the longest event's tokens */
};

struct index_history {
	pthread_mutex_t mu;
	uint64_t tag_n, tag_ev;   /* the index the buffer's event ids refer to */
	uint32_t n, cap;
	uint32_t *ev;             /* [n], oldest first */
};

struct index_history *index_history_new(void)
{
	struct index_history *h = calloc(1, sizeof(*h));
	if (h && pthread_mutex_init(&h->mu, NULL)) {
		free(h);
		return NULL;
	}
	return h;
}

void index_history_free(struct index_history *h)
{
	if (!h)
		return;
	pthread_mutex_destroy(&h->mu);
	free(h->ev);
	free(h);
}

uint32_t index_history_events(struct index_history *h, uint32_t *out, uint32_t cap)
{
	pthread_mutex_lock(&h->mu);
	uint32_t n = h->n;
	for (uint32_t i = 0; i < n && i < cap; i++)
		out[i] = h->ev[i];
	pthread_mutex_unlock(&h->mu);
	return n;
}

static const struct episodic *to_episodic(const struct index *ix)
{
	return ix && ix->policy == POLICY_EPISODIC ? (const struct episodic *)ix : NULL;
}

static void episodic_free(struct index *ix)
{
	struct episodic *ex = (struct episodic *)ix;
	if (!ex)
		return;
	IX_ASSERT(ix->policy == POLICY_EPISODIC);
	free(ex->start);
	free(ex->rep);
	free(ex->mean);
	free(ex);
}

/* The coarse representatives: each event's mean representative (EM-LLM keeps one per event). */
static int make_means(struct episodic *ex)
{
	const unsigned d = ex->d, R = ex->reps;
	if (!(ex->mean = calloc(ex->n_ev * d, sizeof(float))))
		return -ENOMEM;
	for (uint64_t e = 0; e < ex->n_ev; e++)
		for (unsigned r = 0; r < R; r++)
			for (unsigned j = 0; j < d; j++)
				ex->mean[e * d + j] += ex->rep[(e * R + r) * d + j] / (float)R;
	return 0;
}

static int episodic_alloc(uint64_t n, unsigned d, uint64_t n_ev, struct episodic **out)
{
	struct episodic *ex = calloc(1, sizeof(*ex));
	if (!ex)
		return -ENOMEM;
	ex->base.policy = POLICY_EPISODIC;
	ex->n = n;
	ex->d = d;
	ex->n_ev = n_ev;
	ex->reps = EPISODIC_REPS;
	ex->start = malloc((n_ev + 1) * sizeof(uint32_t));
	if (!ex->start) {
		free(ex);
		return -ENOMEM;
	}
	*out = ex;
	return 0;
}

/* Starts must be ascending from 0, inside the segment, events at most EPISODIC_MAX_EVENT long. */
static int starts_valid(const uint32_t *start, uint64_t n_ev, uint64_t n, uint32_t *longest)
{
	if (!n_ev || start[0] != 0 || start[n_ev] != n)
		return 0;
	uint32_t lo = 0;
	for (uint64_t e = 0; e < n_ev; e++) {
		if (start[e + 1] <= start[e] || start[e + 1] - start[e] > EPISODIC_MAX_EVENT)
			return 0;
		lo = start[e + 1] - start[e] > lo ? start[e + 1] - start[e] : lo;
	}
	*longest = lo;
	return 1;
}

static int own_keys(void *ctx, unsigned head, uint64_t t0, uint32_t cnt, float *out)
{
	const struct index_keys *k = ctx;
	(void)head;
	memcpy(out, k->k + t0 * k->d, (size_t)cnt * k->d * sizeof(float));
	return 0;
}

static int episodic_build(const struct index_keys *keys, const struct index_build_params *p, struct index **out)
{
	if (!keys || !keys->k || !keys->n || keys->n > IX_MAX_TOKENS || !keys->d || keys->d > IX_MAX_DIM || !out)
		return -EINVAL;
	int received = p && p->prefill_q && p->n_prefill;
	if (received && !p->group)
		return -EINVAL;
	float contig = p && p->contig_share != 0 ? p->contig_share : EPISODIC_CONTIG;
	if (!(contig < 1) || isnan(contig))
		return -EINVAL;
	if (contig < 0)
		contig = 0;
	const uint64_t *given = p ? p->event_starts : NULL;
	uint64_t n_ev = given ? p->n_events : 0;
	struct seg_layer_out seg = { 0 };
	if (!given) {
		/* no layer-wide events: key novelty and refinement over this segment alone */
		struct seg_layer_src src = { .n = keys->n, .heads = 1, .d = keys->d, .keys = own_keys,
					     .ctx = (void *)keys };
		struct seg_layer_opts o = { .refine = 1, .threads = p ? p->threads : 0 };
		int rc = seg_layer(&src, &o, &seg);
		if (rc)
			return rc;
		given = seg.starts;
		n_ev = seg.n_ev;
	}
	struct episodic *ex = NULL;
	int rc = n_ev ? episodic_alloc(keys->n, keys->d, n_ev, &ex) : -EINVAL;
	if (rc)
		goto out;
	ex->contig = contig;
	ex->source = seg.starts ? SOURCE_NOVELTY : SOURCE_GIVEN;
	for (uint64_t e = 0; e < n_ev; e++) {
		if (given[e] >= keys->n) {
			rc = -EINVAL;
			goto out;
		}
		ex->start[e] = (uint32_t)given[e];
	}
	ex->start[n_ev] = (uint32_t)keys->n;
	if (!starts_valid(ex->start, n_ev, keys->n, &ex->longest)) {
		rc = -EINVAL;
		goto out;
	}
	struct reps_in in = { .k = keys->k, .n = keys->n, .d = keys->d, .start = ex->start, .n_units = n_ev,
			      .reps = ex->reps, .threads = p ? p->threads : 0 };
	if (received) {
		uint64_t T = p->max_prefill ? p->max_prefill : EPISODIC_PREFILL;
		if (T > p->n_prefill)
			T = p->n_prefill;
		if (T * p->group > 65536) {
			rc = -EINVAL;
			goto out;
		}
		ex->rule = RULE_RECEIVED;
		in.rows = (unsigned)(T * p->group);
		in.pq = p->prefill_q + (p->n_prefill - T) * p->group * keys->d;
	}
	ex->rep = malloc(n_ev * ex->reps * keys->d * sizeof(float));
	rc = ex->rep ? ix_reps(&in, ex->rep) : -ENOMEM;
	if (!rc)
		rc = make_means(ex);
out:
	free(seg.starts);
	if (rc) {
		episodic_free(ex ? &ex->base : NULL);
		return rc;
	}
	*out = &ex->base;
	return 0;
}

/* Set the bits of event @p e's tokens. */
static uint64_t take_event(const struct episodic *ex, uint32_t e, uint64_t *bits)
{
	for (uint32_t t = ex->start[e]; t < ex->start[e + 1]; t++)
		ix_bit_set(bits, t);
	return ex->start[e + 1] - ex->start[e];
}

static uint64_t event_len(const struct episodic *ex, uint32_t e) { return ex->start[e + 1] - ex->start[e]; }

/* Remove event @p e from the FIFO @p f [*n] if it is there. */
static void fifo_remove(uint32_t *f, uint32_t *n, uint32_t e)
{
	for (uint32_t i = 0; i < *n; i++)
		if (f[i] == e) {
			memmove(f + i, f + i + 1, (*n - i - 1) * sizeof(uint32_t));
			(*n)--;
			return;
		}
}

/*
 * The contiguity stage on the FIFO @p f [*n] (room for *n + 2 * n_pick):
 * the picks leave it, their neighbours join at the back (worst pick first),
 * the oldest go until the rest hold at most @p room tokens.
 */
static void contiguity(const struct episodic *ex, const uint32_t *pick, uint32_t n_pick, const uint8_t *picked,
		       uint64_t room, uint32_t *f, uint32_t *n)
{
	for (uint32_t i = 0; i < n_pick; i++)
		fifo_remove(f, n, pick[i]);
	for (uint32_t i = n_pick; i-- > 0;) {
		const uint32_t e = pick[i];
		const int64_t nb[2] = { (int64_t)e - 1, (int64_t)e + 1 };
		for (unsigned j = 0; j < 2; j++) {
			if (nb[j] < 0 || (uint64_t)nb[j] >= ex->n_ev || picked[nb[j]])
				continue;
			fifo_remove(f, n, (uint32_t)nb[j]);
			f[(*n)++] = (uint32_t)nb[j];
		}
	}
	uint64_t tokens = 0;
	for (uint32_t i = 0; i < *n; i++)
		tokens += event_len(ex, f[i]);
	uint32_t drop = 0;
	while (drop < *n && tokens > room)
		tokens -= event_len(ex, f[drop++]);
	memmove(f, f + drop, (*n - drop) * sizeof(uint32_t));
	*n -= drop;
}

static int episodic_search(const struct index *ix, const struct index_keys *keys, const float *q, unsigned G,
			   uint64_t budget, struct index_result *res)
{
	const struct episodic *ex = to_episodic(ix);
	if (!ex)
		return -EINVAL;
	int rc = ix_search_prologue(ex->n, ex->d, keys, 2, q, G, budget, res);
	if (rc)
		return rc < 0 ? rc : 0;
	const unsigned d = ex->d, R = ex->reps;
	const uint64_t ne = ex->n_ev;
	const uint64_t contig_room = (uint64_t)((double)ex->contig * (double)budget);
	const uint64_t sim_room = budget - contig_room;
	/* the pool of tail fill holds what is left plus at most one event more */
	const size_t pool_max = (size_t)(budget + ex->longest < ex->n ? budget + ex->longest : ex->n);
	size_t off_bs = ix_align((size_t)ne * G * sizeof(float));
	size_t off_it = off_bs + ix_align((size_t)ne * G * sizeof(float));
	size_t off_bits = off_it + ix_align((size_t)ne * sizeof(struct ix_item));
	size_t off_flag = off_bits + ix_align(ix_bits_words(ex->n) * sizeof(uint64_t));
	size_t off_pick = off_flag + ix_align((size_t)ne);
	size_t off_fifo = off_pick + ix_align((size_t)ne * sizeof(uint32_t));
	size_t off_cand = off_fifo + ix_align((size_t)ne * sizeof(uint32_t));
	size_t off_ids = off_cand + ix_align((size_t)ne * sizeof(uint32_t));
	size_t off_tmp = off_ids + ix_align(pool_max * sizeof(uint32_t));
	size_t total = off_tmp + pool_max * sizeof(struct ix_item);
	uint8_t *sc = ix_scratch(total);
	if (!sc)
		return -ENOMEM;
	float *S = (float *)sc, *bs = (float *)(sc + off_bs);
	struct ix_item *it = (struct ix_item *)(sc + off_it), *tmp = (struct ix_item *)(sc + off_tmp);
	uint64_t *bits = (uint64_t *)(sc + off_bits);
	uint8_t *flag = sc + off_flag; /* 1 picked by similarity, 2 held by the FIFO */
	uint32_t *pick = (uint32_t *)(sc + off_pick), *fifo = (uint32_t *)(sc + off_fifo);
	uint32_t *cand = (uint32_t *)(sc + off_cand), *ids = (uint32_t *)(sc + off_ids);

	/*
	 * Coarse: every event by its mean representative, the best kept until
	 * they hold EPISODIC_COARSE budgets (and at least EPISODIC_COARSE_MIN
	 * events); fine: those by the max over their representatives.
	 */
	uint64_t nc = 0;
	if ((uint64_t)EPISODIC_COARSE * budget < ex->n && ne > EPISODIC_COARSE_MIN) {
		ix_dots(ex->mean, ne, d, q, G, d, S);
		ix_group_softmax(S, NULL, NULL, ne, G, NULL, IX_MASS, it);
		struct ix_walk cw;
		ix_walk_init(&cw, it, ne, EPISODIC_COARSE_MIN * 4);
		const struct ix_item *ci;
		uint64_t held = 0;
		while ((held < (uint64_t)EPISODIC_COARSE * budget || nc < EPISODIC_COARSE_MIN) &&
		       (ci = ix_walk_next(&cw))) {
			cand[nc++] = ci->id;
			held += event_len(ex, ci->id);
		}
		res->scanned = ne;
	} else {
		for (uint64_t e = 0; e < ne; e++)
			cand[nc++] = (uint32_t)e;
		res->scanned = 0;
	}
	for (uint64_t c = 0; c < nc; c++) {
		float s4[EPISODIC_REPS * IX_MAX_GROUP];
		ix_dots(ex->rep + (size_t)cand[c] * R * d, R, d, q, G, d, s4);
		for (unsigned g = 0; g < G; g++) {
			float m = -INFINITY;
			for (unsigned r = 0; r < R; r++)
				m = s4[r * G + g] > m ? s4[r * G + g] : m;
			bs[c * G + g] = m;
		}
	}
	res->scanned += nc * R;
	float lse[IX_MAX_GROUP];
	ix_group_softmax(bs, NULL, cand, nc, G, lse, IX_MASS, it);
	for (unsigned g = 0; g < G; g++)
		if (!isfinite(lse[g]))
			lse[g] = 0;
	memset(bits, 0, ix_bits_words(ex->n) * sizeof(uint64_t));
	memset(flag, 0, ne);

	/* similarity: whole events in score order while they fit */
	struct ix_walk w;
	ix_walk_init(&w, it, nc, 64);
	const struct ix_item *cur;
	uint64_t used = 0;
	uint32_t n_pick = 0;
	while ((cur = ix_walk_next(&w))) {
		if (event_len(ex, cur->id) > sim_room - used)
			break;
		used += take_event(ex, cur->id, bits);
		flag[cur->id] = 1;
		pick[n_pick++] = cur->id;
	}

	/* contiguity: the FIFO, the requester's or this search's own */
	struct index_history *h = res->history;
	uint32_t n_fifo = 0;
	if (h) {
		pthread_mutex_lock(&h->mu);
		if (h->tag_n != ex->n || h->tag_ev != ne) {
			h->n = 0;
			h->tag_n = ex->n;
			h->tag_ev = ne;
		}
		if (h->cap < h->n + 2 * n_pick) {
			uint32_t cap = h->n + 2 * n_pick + 64;
			uint32_t *ev = realloc(h->ev, cap * sizeof(uint32_t));
			if (!ev) {
				pthread_mutex_unlock(&h->mu);
				return -ENOMEM;
			}
			h->ev = ev;
			h->cap = cap;
		}
		contiguity(ex, pick, n_pick, flag, contig_room, h->ev, &h->n);
		n_fifo = h->n;
		memcpy(fifo, h->ev, n_fifo * sizeof(uint32_t));
		pthread_mutex_unlock(&h->mu);
	} else if (contig_room) {
		contiguity(ex, pick, n_pick, flag, contig_room, fifo, &n_fifo);
	}
	for (uint32_t i = 0; i < n_fifo; i++)
		if (!flag[fifo[i]] && event_len(ex, fifo[i]) <= budget - used) {
			used += take_event(ex, fifo[i], bits);
			flag[fifo[i]] = 2;
		}

	/* the rest of the budget: on down the ranking, whole events, then tail fill */
	uint64_t left = budget - used;
	size_t pooled = 0;
	int resume = cur != NULL; /* the event that stopped the similarity stage comes first */
	while (left) {
		if (resume)
			resume = 0;
		else if (!(cur = ix_walk_next(&w)))
			break;
		if (flag[cur->id])
			continue;
		if (!pooled && event_len(ex, cur->id) <= left) {
			left -= take_event(ex, cur->id, bits);
			continue;
		}
		for (uint32_t t = ex->start[cur->id]; t < ex->start[cur->id + 1]; t++)
			ids[pooled++] = t;
		if (pooled >= left)
			break;
	}
	if (left && pooled) {
		const int64_t tail = ix_tail_fill(keys, q, G, lse, 1, ids, pooled, left, bits, tmp);
		if (tail < 0)
			return (int)tail;
		res->scanned += (uint64_t)tail;
	}
	res->n_tokens = ix_bits_emit(bits, ex->n, res->tokens);
	return 0;
}

static int episodic_save(const struct index *ix, uint8_t **buf, size_t *len)
{
	const struct episodic *ex = to_episodic(ix);
	if (!ex || !buf || !len)
		return -EINVAL;
	struct ix_wr w;
	size_t nf = ex->n_ev * ex->reps * ex->d;
	ix_wr_begin(&w, POLICY_EPISODIC, EPISODIC_VERSION, 48 + ex->n_ev * 4 + nf * sizeof(float));
	ix_wr_u64(&w, ex->n);
	ix_wr_u32(&w, ex->d);
	ix_wr_u32(&w, ex->reps);
	ix_wr_u32(&w, ex->rule);
	ix_wr_u32(&w, ex->source);
	ix_wr_f32(&w, ex->contig);
	ix_wr_u64(&w, ex->n_ev);
	ix_wr_u32s(&w, ex->start, ex->n_ev);
	ix_wr_f32s(&w, ex->rep, nf);
	return ix_wr_end(&w, buf, len);
}

static int episodic_load(const uint8_t *buf, size_t len, const struct index_keys *keys, struct index **out)
{
	struct ix_rd r;
	if (!out)
		return -EINVAL;
	int rc = ix_rd_begin(&r, buf, len, POLICY_EPISODIC, EPISODIC_VERSION);
	if (rc)
		return rc;
	uint64_t n = ix_rd_u64(&r);
	unsigned d = ix_rd_u32(&r), reps = ix_rd_u32(&r);
	uint32_t rule = ix_rd_u32(&r), source = ix_rd_u32(&r);
	float contig = ix_rd_f32(&r);
	uint64_t n_ev = ix_rd_u64(&r);
	if (r.err || !n || n > IX_MAX_TOKENS || !d || d > IX_MAX_DIM || reps != EPISODIC_REPS ||
	    rule > RULE_RECEIVED || source > SOURCE_NOVELTY || !(contig >= 0 && contig < 1) || !n_ev || n_ev > n)
		return -EBADMSG;
	if (keys && (keys->n != n || keys->d != d))
		return -EINVAL;
	/* the blob must still hold the starts and the representatives before anything is allocated */
	if (n_ev * 4 > r.left || n_ev * reps * d > (r.left - n_ev * 4) / sizeof(float))
		return -EBADMSG;
	struct episodic *ex;
	if ((rc = episodic_alloc(n, d, n_ev, &ex)))
		return rc;
	ex->rule = rule;
	ex->source = source;
	ex->contig = contig;
	const uint8_t *sp = ix_rd_bytes(&r, n_ev * 4);
	if (sp) {
		memcpy(ex->start, sp, n_ev * 4);
		ex->start[n_ev] = (uint32_t)n;
	}
	if (!sp || !starts_valid(ex->start, n_ev, n, &ex->longest)) {
		episodic_free(&ex->base);
		return -EBADMSG;
	}
	if ((rc = ix_rd_f32s(&r, n_ev * reps * d, &ex->rep)) || (rc = ix_rd_end(&r)) || (rc = make_means(ex))) {
		episodic_free(&ex->base);
		return rc;
	}
	*out = &ex->base;
	return 0;
}

static size_t episodic_memory(const struct index *ix)
{
	const struct episodic *ex = to_episodic(ix);
	return ex ? sizeof(*ex) + (ex->n_ev + 1) * sizeof(uint32_t) + ex->n_ev * (ex->reps + 1) * ex->d * sizeof(float)
		  : 0;
}

static uint64_t episodic_tokens(const struct index *ix)
{
	const struct episodic *ex = to_episodic(ix);
	return ex ? ex->n : 0;
}

const struct policy_ops episodic_policy_ops = {
	.version = POLICY_OPS_VERSION,
	.name = "episodic",
	.build = episodic_build,
	.search = episodic_search,
	.free = episodic_free,
	.save = episodic_save,
	.load = episodic_load,
	.memory = episodic_memory,
	.tokens = episodic_tokens,
	.sparse_keys = 1,
};

/** episodic only, for tests and tools: the event starts (start[n_ev] = n). */
int index_episodic_events(const struct index *ix, const uint32_t **start, uint64_t *n_ev)
{
	const struct episodic *ex = to_episodic(ix);
	if (!ex)
		return -EINVAL;
	*start = ex->start;
	*n_ev = ex->n_ev;
	return 0;
}
