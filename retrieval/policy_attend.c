/*
 * ATTEND with a retrieval policy: per KV head, the policy's index over the
 * layer's keys picks tokens (and estimated clusters) for the group's
 * queries; attention runs exactly over the picked tokens, over every token
 * appended after the index was built, and over the estimates.
 *
 * Indexes are built on first use from the stored keys (converted to fp32),
 * kept on the context until it is dropped, and saved as the context's side
 * files (kv_ctx_side_save(), name "<policy>-l<layer>-h<head>.idx"): a
 * restarted daemon loads them instead of building. A side file that fails
 * its checks is rebuilt over. Policies with a row order (row_order:
 * centroids*) are attended run by run from a copy of the rows in that
 * order: on the SSD tier, as a layer of the context derived from this one
 * (tier_rows(): written once, read back through the host cache and the
 * read-ahead like any block, deleted with the context), or, on a RAM-only
 * store, attached to the index (attach_rows); those that read keys only to tail fill
 * (sparse_keys: quest, blocks, episodic) keep none and fetch the few rows
 * they score from the pinned blocks, so a loaded index serves without
 * reading its layer; the others keep the fp32 keys their search scores.
 * All read the picked tokens through pinned blocks.
 *
 * Side file body: magic "MNPX" u32, version u32, policy u32, reserved u32,
 * tokens covered u64, then the policy's save() blob.
 *
 * Policies that keep their own copy of the keys (keeps_keys: ann) drop the
 * fp32 keys after a build or load. ann is built from the layer's prefill
 * queries (QUERIES, kept by a qstore per layer and saved as the side file
 * "prefill-l<layer>.q"); without any it is refused (-ENOTSUP). Each ATTEND
 * with a policy that extends (ann) leaves the group's queries in a ring of
 * the last RECENT_QUERIES; once EXTEND_TOKENS tokens were appended past the
 * index, that ATTEND extends it with them instead of attending the new
 * tokens exactly forever.
 */
#define _GNU_SOURCE
#include "attend.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#include "events.h"
#include "policy.h"
#include "qstore.h"
#include "sparse.h"

#define PX_MAGIC 0x58504e4du /* "MNPX" */
#define PX_VERSION 1u
#define PX_HEADER 24u

/* ann: prefill query vectors per KV head at most (the group's heads counted apart), as its build uses */
#define PREFILL_VECTORS 4096u
/* ann: the recent ATTEND queries of a (layer, KV head) that extend() draws edges from */
#define RECENT_QUERIES 256u
/* Estimated clusters a search may return (index_result.est_cap). */
#define EST_CAP 256u
/* ann: tokens appended past an index before an ATTEND extends it (one clustering chunk) */
#define EXTEND_TOKENS 8192u

/* episodic: the side files of the context's surprise segmenter and of a layer's events */
#define SG_MAGIC 0x47534e4du /* "MNSG" */
#define EV_MAGIC 0x56454e4du /* "MNEV" */
#define SG_VERSION 1u

static _Atomic uint64_t n_builds, n_loads, n_bytes;
static _Atomic uint64_t t_attends, t_pick, t_search, t_fold, t_pin;
static struct seg_params seg_config; /* zeros: EM-LLM's defaults */
static int no_estimates;
static float quest_rerank, quest_cohere;

int attend_policy_configure(const struct attend_policy_config *cfg)
{
	struct seg_params p = { .gamma = cfg ? cfg->gamma : 0 }, r;
	if (seg_params_resolve(&p, &r))
		return -EINVAL;
	const float rr = cfg ? cfg->quest_rerank : 0;
	const float co = cfg ? cfg->quest_cohere : 0;
	if (!(rr == 0 || (rr > 1 && rr <= 1024)) || !(co >= 0 && co < 1))
		return -EINVAL;
	seg_config = p;
	no_estimates = cfg && cfg->no_estimates;
	quest_rerank = rr;
	quest_cohere = co;
	return 0;
}

void attend_policy_counts(uint64_t *builds, uint64_t *loads, uint64_t *bytes)
{
	*builds = atomic_load(&n_builds);
	*loads = atomic_load(&n_loads);
	*bytes = atomic_load(&n_bytes);
}

void attend_policy_times(struct attend_policy_times *out)
{
	*out = (struct attend_policy_times){
		.attends = atomic_load(&t_attends), .pick_ns = atomic_load(&t_pick), .search_ns = atomic_load(&t_search),
		.fold_ns = atomic_load(&t_fold), .pin_ns = atomic_load(&t_pin),
	};
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* One index of one (policy, layer, head). */
struct slot {
	pthread_mutex_t mu;       /* one build or extend at a time; guards recent */
	pthread_rwlock_t rw;      /* searches read ix, n and k under it; extend writes them */
	struct index *ix;
	uint64_t n;               /* tokens it covers: [0, n) */
	float *k;                 /* the fp32 keys it was built over, unless it holds rows or keys */
	size_t bytes;             /* RAM the index, k and recent hold (counted in n_bytes) */
	float *recent;            /* policies with extend(): [RECENT_QUERIES][G][d], a ring of ATTEND queries */
	uint32_t recent_n, recent_next;
	struct index_history *hist; /* episodic: the contiguity FIFO of this (context, layer, KV head) */
	pthread_mutex_t pick_mu;  /* guards last: never held across a build */
	uint64_t *last;           /* the blocks the last ATTEND picked (sorted), read ahead for the next */
	uint32_t n_last, last_cap;
	/* row_order policies on an SSD tier: the layer's rows in the index's order, as layer
	 * rows_layer of the context derived for the policy (a reference; see tier_rows()) */
	struct kv_ctx *rows;
	uint32_t rows_layer;
};

/* A layer's events as episodic's builds take them. */
struct layer_events {
	uint64_t *starts, n_ev;
	uint64_t covered;         /* the tokens they segment */
	uint32_t source;          /* enum attend_segmentation */
};

struct ctx_indexes {
	uint32_t L, H;
	struct slot *slots;       /* [POLICY_COUNT][L][H] */
	pthread_mutex_t qmu;      /* guards q, q_tried and q_bytes */
	struct qstore **q;        /* [L] prefill queries, NULL until some arrive */
	uint8_t *q_tried;         /* [L] the layer's side file was looked for */
	size_t q_bytes;           /* RAM the stores hold (counted in n_bytes) */
	pthread_mutex_t smu;      /* guards seg, starts, seg_tried */
	struct seg_state *seg;    /* the online boundary rule over SURPRISE, NULL until some arrives */
	uint64_t *starts, n_starts, cap_starts;
	uint8_t seg_tried;        /* the side file was looked for */
	pthread_mutex_t emu;      /* guards ev: one layer segmented at a time (a minute at 1M tokens) */
	struct layer_events *ev;  /* [L] */
	_Atomic uint32_t seg_source; /* what the last episodic build or load segmented by; read without emu */
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
		free(x->slots[i].recent);
		index_history_free(x->slots[i].hist);
		free(x->slots[i].last);
		kv_ctx_put(x->slots[i].rows);
		atomic_fetch_sub(&n_bytes, x->slots[i].bytes);
		pthread_mutex_destroy(&x->slots[i].pick_mu);
		pthread_mutex_destroy(&x->slots[i].mu);
		pthread_rwlock_destroy(&x->slots[i].rw);
	}
	for (uint32_t l = 0; x->q && l < x->L; l++)
		qstore_free(x->q[l]);
	atomic_fetch_sub(&n_bytes, x->q_bytes);
	pthread_mutex_destroy(&x->qmu);
	pthread_mutex_destroy(&x->smu);
	pthread_mutex_destroy(&x->emu);
	seg_free(x->seg);
	free(x->starts);
	for (uint32_t l = 0; x->ev && l < x->L; l++)
		free(x->ev[l].starts);
	free(x->ev);
	free(x->q);
	free(x->q_tried);
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
	x->q = calloc(x->L, sizeof(*x->q));
	x->q_tried = calloc(x->L, 1);
	x->ev = calloc(x->L, sizeof(*x->ev));
	if (!x->slots || !x->q || !x->q_tried || !x->ev) {
		free(x->slots);
		free(x->q);
		free(x->q_tried);
		free(x->ev);
		free(x);
		return NULL;
	}
	/* a waiting extend() must not starve behind a stream of searches */
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	for (size_t i = 0; i < n; i++) {
		pthread_mutex_init(&x->slots[i].mu, NULL);
		pthread_mutex_init(&x->slots[i].pick_mu, NULL);
		pthread_rwlock_init(&x->slots[i].rw, &ra);
	}
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&x->qmu, NULL);
	pthread_mutex_init(&x->smu, NULL);
	pthread_mutex_init(&x->emu, NULL);
	struct ctx_indexes *cur = kv_ctx_aux_install(c, x, indexes_free);
	if (cur != x)
		indexes_free(x);
	return cur;
}

/*
 * Visit the blocks holding tokens [0, n) of (layer, head), pinned 64 at a
 * time: fn(arg, first token, tokens, K rows, V rows) per block.
 */
static int for_each_block(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t n,
			  void (*fn)(void *arg, uint64_t t0, uint64_t cnt, const uint8_t *k, const uint8_t *v), void *arg)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const uint32_t B = kv_ctx_block_tokens(c);
	const size_t row = (size_t)g->head_dim * g->elem_size;
	const uint8_t *win[64];
	for (uint64_t b0 = 0; b0 * B < n; b0 += 64) {
		uint64_t nb = (n + B - 1) / B - b0;
		if (nb > 64)
			nb = 64;
		uint64_t bad;
		int rc = kv_ctx_pin(c, layer, head, b0, (uint32_t)nb, win, &bad);
		if (rc)
			return rc;
		for (uint64_t b = 0; b < nb; b++) {
			uint64_t t0 = (b0 + b) * B;
			fn(arg, t0, n - t0 < B ? n - t0 : B, win[b], win[b] + (size_t)B * row);
		}
		kv_ctx_unpin(c, layer, head, b0, (uint32_t)nb);
	}
	return 0;
}

struct gather {
	enum kv_dtype dtype;
	size_t d, row;
	float *kf, *vf;           /* gather_f32 */
	uint8_t *kr, *vr;         /* gather_raw */
};

static void block_f32(void *arg, uint64_t t0, uint64_t cnt, const uint8_t *k, const uint8_t *v)
{
	const struct gather *x = arg;
	for (size_t i = 0; i < cnt * x->d; i++)
		x->kf[t0 * x->d + i] = kv_load(x->dtype, k, i);
	for (size_t i = 0; x->vf && i < cnt * x->d; i++)
		x->vf[t0 * x->d + i] = kv_load(x->dtype, v, i);
}

static void block_raw(void *arg, uint64_t t0, uint64_t cnt, const uint8_t *k, const uint8_t *v)
{
	const struct gather *x = arg;
	memcpy(x->kr + t0 * x->row, k, cnt * x->row);
	memcpy(x->vr + t0 * x->row, v, cnt * x->row);
}

/* Keys and values (v may be NULL) [0, n) of (layer, head) as fp32 [n][d]. */
static int gather_f32(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t n, float *k, float *v)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	struct gather x = { .dtype = (enum kv_dtype)g->dtype, .d = g->head_dim, .kf = k, .vf = v };
	return for_each_block(c, layer, head, n, block_f32, &x);
}

/* K and V rows [0, n) of (layer, head) as stored, into [n][row] arrays. */
static int gather_raw(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t n, uint8_t *k, uint8_t *v)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	struct gather x = { .row = (size_t)g->head_dim * g->elem_size, .kr = k, .vr = v };
	return for_each_block(c, layer, head, n, block_raw, &x);
}

/* Keys [t0, t0 + cnt) of (layer, head) as fp32 [cnt][d], pinning 64 blocks at a time. */
static int gather_range_f32(struct kv_ctx *c, uint32_t layer, uint32_t head, uint64_t t0, uint32_t cnt, float *out)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const uint32_t B = kv_ctx_block_tokens(c);
	const size_t d = g->head_dim, row = d * g->elem_size;
	const uint64_t t1 = t0 + cnt;
	const uint8_t *win[64];
	for (uint64_t b0 = t0 / B; b0 * B < t1; b0 += 64) {
		uint64_t nb = (t1 + B - 1) / B - b0;
		if (nb > 64)
			nb = 64;
		uint64_t bad;
		int rc = kv_ctx_pin(c, layer, head, b0, (uint32_t)nb, win, &bad);
		if (rc)
			return rc;
		for (uint64_t b = 0; b < nb; b++) {
			const uint64_t lo = (b0 + b) * B > t0 ? (b0 + b) * B : t0;
			const uint64_t hi = (b0 + b + 1) * B < t1 ? (b0 + b + 1) * B : t1;
			const uint8_t *k = win[b] + (lo - (b0 + b) * B) * row;
			for (size_t i = 0; i < (hi - lo) * d; i++)
				out[(lo - t0) * d + i] = kv_load((enum kv_dtype)g->dtype, k, i);
		}
		kv_ctx_unpin(c, layer, head, b0, (uint32_t)nb);
	}
	return 0;
}

/* Give the index its own rows when its policy keeps them; the fp32 keys are then not needed. */
static int attach(struct kv_ctx *c, struct slot *s, const struct policy_ops *po, uint32_t layer, uint32_t head)
{
	if (!po->attach_rows)
		return 0;
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const size_t row = (size_t)g->head_dim * g->elem_size;
	uint8_t *k = malloc(s->n * row + 1), *v = malloc(s->n * row + 1);
	int rc = k && v ? gather_raw(c, layer, head, s->n, k, v) : -ENOMEM;
	if (!rc) {
		struct index_rows src = { .k = k, .v = v, .stride = row, .dtype = g->dtype };
		rc = po->attach_rows(s->ix, &src);
	}
	free(k);
	free(v);
	if (!rc) {
		free(s->k);
		s->k = NULL;
	}
	return rc;
}

/*
 * Policies with a row order keep their rows on the SSD tier instead of in
 * RAM: the context derived from c under "rows.<policy>" holds, as its
 * layer layer * n_kv_heads + head (one KV head per layer), the head's rows
 * in the index's order, padded to whole blocks. Its side file
 * "rows-<that layer>.sum" names the order they follow (RS_* below), so a
 * rebuilt index with another order is not served the old rows. Written
 * once when the index is first built or loaded, read back after a restart.
 */
#define RS_MAGIC 0x53524e4du /* "MNRS" */
#define RS_VERSION 1u

struct rows_sum {
	uint32_t magic, version;
	uint64_t tokens;
	uint64_t order_hash;      /* XXH3-64 of the order, [tokens] u32 */
};

static int write_tier_rows(struct kv_ctx *c, struct kv_ctx *dc, uint32_t dl, const uint32_t *order, uint64_t n,
			   uint32_t layer, uint32_t head)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const uint64_t B = kv_ctx_block_tokens(dc), np = (n + B - 1) / B * B;
	const size_t row = (size_t)g->head_dim * g->elem_size;
	if (np > UINT32_MAX)
		return -EOVERFLOW;
	uint8_t *k = malloc(n * row + 1), *v = malloc(n * row + 1), *data = NULL;
	int rc = k && v ? 0 : -ENOMEM;
	/* aligned, whole blocks: the append streams them to the SSD without keeping them in RAM */
	if (!rc && posix_memalign((void **)&data, 4096, 2 * np * row))
		rc = -ENOMEM;
	if (!rc)
		rc = gather_raw(c, layer, head, n, k, v);
	if (!rc) {
		for (uint64_t i = 0; i < n; i++) {
			memcpy(data + i * row, k + (size_t)order[i] * row, row);
			memcpy(data + (np + i) * row, v + (size_t)order[i] * row, row);
		}
		memset(data + n * row, 0, (np - n) * row);
		memset(data + (np + n) * row, 0, (np - n) * row);
		const char *why;
		uint64_t lt, ct;
		rc = kv_ctx_append_ex(dc, dl, 1, 0, (uint32_t)np, data, 2 * np * row, KV_APPEND_STREAM | KV_APPEND_SYNC,
				      &lt, &ct, &why);
	}
	free(k);
	free(v);
	free(data);
	return rc;
}

/* The slot's rows on the SSD tier: found, checked against the index's order, or written. mu held. */
static int tier_rows(struct kv_ctx *c, struct slot *s, const struct policy_ops *po, uint32_t layer, uint32_t head)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const uint32_t *order = po->row_order(s->ix);
	if (!order)
		return -EINVAL;
	struct kv_geometry dg = *g;
	dg.n_layers = g->n_layers * g->n_kv_heads;
	dg.n_kv_heads = 1;
	dg.n_q_heads = 1;
	char tag[64], name[64];
	snprintf(tag, sizeof(tag), "rows.%s", po->name);
	struct kv_ctx *dc;
	int rc = kv_ctx_derived(c, tag, &dg, true, &dc);
	if (rc)
		return rc;
	const uint32_t dl = layer * g->n_kv_heads + head;
	const struct rows_sum want = { .magic = RS_MAGIC, .version = RS_VERSION, .tokens = s->n,
				       .order_hash = XXH3_64bits(order, s->n * sizeof(uint32_t)) };
	snprintf(name, sizeof(name), "rows-%u.sum", dl);
	kv_ctx_read_begin(dc);
	const uint64_t have = kv_ctx_layer_tokens(dc, dl);
	kv_ctx_read_end(dc);
	if (have) {
		void *b = NULL;
		size_t len = 0;
		rc = kv_ctx_side_load(dc, name, &b, &len);
		/* rows of another order, or written by a daemon that stopped before naming them */
		if (!rc && !(len == sizeof(want) && !memcmp(b, &want, sizeof(want)) && have >= s->n))
			rc = -ESTALE;
		free(b);
	} else if (!(rc = write_tier_rows(c, dc, dl, order, s->n, layer, head))) {
		rc = kv_ctx_side_save(dc, name, &want, sizeof(want));
	}
	if (rc) {
		kv_ctx_put(dc);
		return rc;
	}
	s->rows = dc;
	s->rows_layer = dl;
	free(s->k);
	s->k = NULL;
	return 0;
}

/*
 * After a build or load: a policy with a row order keeps its rows on the
 * SSD tier when the context has one, else (or when that fails: RAM-only
 * store, rows of another order, no room) attaches them in RAM.
 */
static int place_rows(struct kv_ctx *c, struct slot *s, const struct policy_ops *po, uint32_t layer, uint32_t head)
{
	if (po->row_order && kv_ctx_on_ssd(c) && tier_rows(c, s, po, layer, head) == 0)
		return 0;
	return attach(c, s, po, layer, head);
}

static void side_name(char *out, size_t cap, const struct policy_ops *po, uint32_t layer, uint32_t head)
{
	snprintf(out, cap, "%s-l%u-h%u.idx", po->name, layer, head);
}

/*
 * The body of the slot's saved index, when a side file is there with a
 * sound header for this policy over at most @p n tokens.
 */
static int read_saved(struct kv_ctx *c, const struct policy_ops *po, uint32_t policy, uint32_t layer,
		      uint32_t head, uint64_t n, void **buf, size_t *len, uint64_t *covered)
{
	char name[96];
	/* the other heads of the layer are loaded next, by this ATTEND's other
	 * tasks: their files are read at the same time, not one after another */
	const uint32_t H = kv_ctx_geometry(c)->n_kv_heads;
	for (uint32_t h = 0; h < H; h++)
		if (h != head) {
			side_name(name, sizeof(name), po, layer, h);
			(void)kv_ctx_side_prefetch(c, name);
		}
	side_name(name, sizeof(name), po, layer, head);
	int rc = kv_ctx_side_load(c, name, buf, len);
	if (rc)
		return rc;
	const uint8_t *p = *buf;
	uint32_t magic, version, pol;
	if (*len > PX_HEADER) {
		memcpy(&magic, p, 4);
		memcpy(&version, p + 4, 4);
		memcpy(&pol, p + 8, 4);
		memcpy(covered, p + 16, 8);
		/* an index over more tokens than the layer holds is not this context's */
		if (magic == PX_MAGIC && version == PX_VERSION && pol == policy && *covered && *covered <= n)
			return 0;
	}
	free(*buf);
	*buf = NULL;
	return -EBADMSG;
}

/* Load the slot's index from a side file body over @p covered tokens, with what its search needs. */
static int load_index(struct kv_ctx *c, struct slot *s, const struct policy_ops *po, uint32_t layer,
		      uint32_t head, const uint8_t *body, size_t len, uint64_t covered)
{
	const unsigned d = kv_ctx_geometry(c)->head_dim;
	float *k = NULL;
	struct index_keys keys = { .n = covered, .d = d };
	int rc = 0;
	if (!po->attach_rows && !po->sparse_keys) {
		/* the policy scores fp32 keys, or copies them */
		k = malloc(covered * d * sizeof(float) + 4);
		rc = k ? gather_f32(c, layer, head, covered, k, NULL) : -ENOMEM;
		keys.k = k;
	}
	if (!rc)
		rc = po->load(body, len, po->keeps_keys ? &keys : NULL, &s->ix);
	if (!rc) {
		s->n = covered;
		if (po->attach_rows) {
			rc = place_rows(c, s, po, layer, head);
		} else if (!po->keeps_keys && !po->sparse_keys) {
			s->k = k;
			k = NULL;
		}
	}
	free(k);
	return rc;
}

static void side_name_queries(char *out, size_t cap, uint32_t layer)
{
	snprintf(out, cap, "prefill-l%u.q", layer);
}

/* The layer's prefill query store, looked for in the side files once; made when @p create. qmu held. */
static struct qstore *qstore_of(struct kv_ctx *c, struct ctx_indexes *x, uint32_t layer, int create)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const uint32_t G = g->n_q_heads / g->n_kv_heads;
	const uint32_t cap = PREFILL_VECTORS / G > 2 ? PREFILL_VECTORS / G : 2;
	if (!x->q[layer] && !x->q_tried[layer]) {
		char name[64];
		void *buf;
		size_t len;
		side_name_queries(name, sizeof(name), layer);
		/* a file that fails its checks is overwritten by the next QUERIES */
		if (!kv_ctx_side_load(c, name, &buf, &len)) {
			qstore_load(buf, len, g->n_q_heads, g->head_dim, cap, &x->q[layer]);
			free(buf);
		}
		x->q_tried[layer] = 1;
	}
	if (!x->q[layer] && create)
		x->q[layer] = qstore_new(g->n_q_heads, g->head_dim, cap);
	return x->q[layer];
}

static void qstore_account(struct ctx_indexes *x)
{
	size_t now = 0;
	for (uint32_t l = 0; l < x->L; l++)
		now += x->q[l] ? qstore_memory(x->q[l]) : 0;
	atomic_fetch_add(&n_bytes, now);
	atomic_fetch_sub(&n_bytes, x->q_bytes);
	x->q_bytes = now;
}

int attend_policy_queries(struct kv_ctx *c, uint32_t layer, uint64_t first, uint32_t n_pos, const float *q,
			  uint64_t *kept, uint64_t *seen)
{
	const struct kv_geometry *g = kv_ctx_geometry(c);
	if (layer >= g->n_layers || !n_pos)
		return -EINVAL;
	struct ctx_indexes *x = indexes_of(c);
	if (!x)
		return -ENOMEM;
	pthread_mutex_lock(&x->qmu);
	struct qstore *qs = qstore_of(c, x, layer, 1);
	int rc = !qs ? -ENOMEM : first != qstore_seen(qs) ? -ERANGE : qstore_add(qs, n_pos, q);
	*kept = qs ? qstore_kept(qs) : 0;
	*seen = qs ? qstore_seen(qs) : 0;
	if (!rc) {
		uint8_t *blob;
		size_t len;
		char name[64];
		side_name_queries(name, sizeof(name), layer);
		if (!(rc = qstore_save(qs, &blob, &len))) {
			rc = kv_ctx_side_save(c, name, blob, len);
			free(blob);
		}
		if (rc == -ENOTSUP)     /* no data directory: RAM is all there is */
			rc = 0;
	}
	qstore_account(x);
	pthread_mutex_unlock(&x->qmu);
	return rc;
}

/* The layer's prefill queries for KV head @p head's group, scaled as search() wants them. */
static int prefill_group(struct kv_ctx *c, struct ctx_indexes *x, uint32_t layer, uint32_t head, unsigned G,
			 float **q, uint64_t *n)
{
	const unsigned d = kv_ctx_geometry(c)->head_dim;
	*q = NULL;
	*n = 0;
	pthread_mutex_lock(&x->qmu);
	struct qstore *qs = qstore_of(c, x, layer, 0);
	int rc = qs ? qstore_group(qs, head * G, G, 1.0f / sqrtf((float)d), q, n) : 0;
	qstore_account(x);
	pthread_mutex_unlock(&x->qmu);
	return rc;
}

/* ---- episodic: surprise and a layer's events ---------------------------------- */

#define SIDE_SURPRISE "surprise.seg"

/*
 * The context's segmenter, looked for in the side files once; made when
 * @p create. smu held. Side file: magic "MNSG" u32, version u32, starts
 * u64, the starts u64 [n], then seg_save()'s blob.
 */
static struct seg_state *seg_of(struct kv_ctx *c, struct ctx_indexes *x, int create)
{
	if (!x->seg && !x->seg_tried) {
		void *buf;
		size_t len;
		x->seg_tried = 1;
		/* a file that fails its checks is overwritten by the next SURPRISE */
		if (!kv_ctx_side_load(c, SIDE_SURPRISE, &buf, &len)) {
			const uint8_t *p = buf;
			uint32_t magic = 0, version = 0;
			uint64_t n = 0;
			if (len >= 16) {
				memcpy(&magic, p, 4);
				memcpy(&version, p + 4, 4);
				memcpy(&n, p + 8, 8);
			}
			struct seg_state *st = NULL;
			if (magic == SG_MAGIC && version == SG_VERSION && n <= (len - 16) / 8 &&
			    !seg_load(p + 16 + n * 8, len - 16 - n * 8, &st)) {
				uint64_t *starts = malloc(n * 8 + 8);
				int ok = starts != NULL;
				if (ok)
					memcpy(starts, p + 16, n * 8);
				/* ascending, from 0, inside what was fed */
				for (uint64_t i = 0; ok && i < n; i++)
					ok = (i ? starts[i] > starts[i - 1] : starts[i] == 0) && starts[i] < seg_tokens(st);
				if (ok) {
					x->seg = st;
					x->starts = starts;
					x->n_starts = x->cap_starts = n;
				} else {
					seg_free(st);
					free(starts);
				}
			}
			free(buf);
		}
	}
	if (!x->seg && create)
		x->seg = seg_new(&seg_config);
	return x->seg;
}

static int seg_persist(struct kv_ctx *c, struct ctx_indexes *x)
{
	uint8_t *blob;
	size_t len;
	int rc = seg_save(x->seg, &blob, &len);
	if (rc)
		return rc;
	const size_t total = 16 + x->n_starts * 8 + len;
	uint8_t *buf = malloc(total);
	if (buf) {
		const uint32_t h[2] = { SG_MAGIC, SG_VERSION };
		memcpy(buf, h, 8);
		memcpy(buf + 8, &x->n_starts, 8);
		memcpy(buf + 16, x->starts, x->n_starts * 8);
		memcpy(buf + 16 + x->n_starts * 8, blob, len);
		rc = kv_ctx_side_save(c, SIDE_SURPRISE, buf, total);
	} else {
		rc = -ENOMEM;
	}
	free(buf);
	free(blob);
	return rc == -ENOTSUP ? 0 : rc; /* no data directory: RAM is all there is */
}

int attend_policy_surprise(struct kv_ctx *c, uint64_t first, uint32_t n, const float *surprise, uint64_t *seen,
			   uint64_t *events)
{
	if (!n)
		return -EINVAL;
	struct ctx_indexes *x = indexes_of(c);
	if (!x)
		return -ENOMEM;
	pthread_mutex_lock(&x->smu);
	struct seg_state *st = seg_of(c, x, 1);
	int rc = !st ? -ENOMEM : first != seg_tokens(st) ? -ERANGE : 0;
	if (!rc && x->cap_starts - x->n_starts < n) {
		uint64_t cap = x->n_starts + n + x->cap_starts / 2;
		uint64_t *p = realloc(x->starts, cap * sizeof(uint64_t));
		if (p) {
			x->starts = p;
			x->cap_starts = cap;
		} else {
			rc = -ENOMEM;
		}
	}
	if (!rc) {
		int64_t k = seg_feed(st, surprise, n, x->starts + x->n_starts);
		rc = k < 0 ? (int)k : 0;
		if (!rc) {
			x->n_starts += (uint64_t)k;
			rc = seg_persist(c, x);
		}
	}
	*seen = st ? seg_tokens(st) : 0;
	*events = x->n_starts;
	pthread_mutex_unlock(&x->smu);
	return rc;
}

void attend_policy_segmentation(struct kv_ctx *c, uint64_t *seen, uint64_t *events, uint32_t *source)
{
	struct ctx_indexes *x = indexes_of(c);
	*seen = *events = 0;
	*source = ATTEND_SEG_NONE;
	if (!x)
		return;
	pthread_mutex_lock(&x->smu);
	struct seg_state *st = seg_of(c, x, 0);
	*seen = st ? seg_tokens(st) : 0;
	*events = x->n_starts;
	pthread_mutex_unlock(&x->smu);
	/* not under emu: STAT must not wait for a segmentation in progress */
	*source = atomic_load(&x->seg_source);
}

struct seg_keys {
	struct kv_ctx *c;
	uint32_t layer;
};

static int seg_keys_of(void *arg, unsigned head, uint64_t t0, uint32_t cnt, float *out)
{
	const struct seg_keys *k = arg;
	return gather_range_f32(k->c, k->layer, head, t0, cnt, out);
}

static void side_name_events(char *out, size_t cap, uint32_t layer)
{
	snprintf(out, cap, "events-l%u.ev", layer);
}

/* The layer's events from its side file (magic "MNEV" u32, version u32, source u32, 0 u32, covered u64, n u64, starts u64 [n]). */
static int events_load(struct kv_ctx *c, uint32_t layer, uint64_t n, struct layer_events *e)
{
	char name[64];
	void *buf;
	size_t len;
	side_name_events(name, sizeof(name), layer);
	int rc = kv_ctx_side_load(c, name, &buf, &len);
	if (rc)
		return rc;
	const uint8_t *p = buf;
	uint32_t h[4] = { 0 };
	uint64_t covered = 0, cnt = 0;
	rc = -EBADMSG;
	if (len >= 32) {
		memcpy(h, p, 16);
		memcpy(&covered, p + 16, 8);
		memcpy(&cnt, p + 24, 8);
	}
	if (h[0] == EV_MAGIC && h[1] == SG_VERSION && (h[2] == ATTEND_SEG_SURPRISE || h[2] == ATTEND_SEG_NOVELTY) &&
	    !h[3] && covered == n && cnt && cnt <= (len - 32) / 8 && len == 32 + cnt * 8) {
		uint64_t *st = malloc(cnt * 8);
		int ok = st != NULL;
		if (ok)
			memcpy(st, p + 32, cnt * 8);
		for (uint64_t i = 0; ok && i < cnt; i++)
			ok = (i ? st[i] > st[i - 1] : st[i] == 0) && st[i] < n;
		if (ok) {
			free(e->starts);
			*e = (struct layer_events){ .starts = st, .n_ev = cnt, .covered = n, .source = h[2] };
			rc = 0;
		} else {
			free(st);
		}
	}
	free(buf);
	return rc;
}

static void events_save(struct kv_ctx *c, uint32_t layer, const struct layer_events *e)
{
	const size_t len = 32 + e->n_ev * 8;
	uint8_t *buf = malloc(len);
	if (!buf)
		return;
	const uint32_t h[4] = { EV_MAGIC, SG_VERSION, e->source, 0 };
	memcpy(buf, h, 16);
	memcpy(buf + 16, &e->covered, 8);
	memcpy(buf + 24, &e->n_ev, 8);
	memcpy(buf + 32, e->starts, e->n_ev * 8);
	char name[64];
	side_name_events(name, sizeof(name), layer);
	/* best effort: without it the next daemon segments again */
	kv_ctx_side_save(c, name, buf, len);
	free(buf);
}

/*
 * The events of @p layer's first @p n tokens, a copy for the caller: saved ones, else
 * segmented now, from the context's surprise when it covers the n tokens,
 * else from key novelty, refined on the key graph summed over every KV head
 * (positions are token indices, the geometry's rope_theta undoes RoPE).
 */
static int layer_events(struct kv_ctx *c, struct ctx_indexes *x, uint32_t layer, uint64_t n, uint64_t **starts,
			uint64_t *n_ev)
{
	pthread_mutex_lock(&x->emu);
	struct layer_events *e = &x->ev[layer];
	int rc = 0;
	if (e->covered != n && events_load(c, layer, n, e)) {
		const struct kv_geometry *g = kv_ctx_geometry(c);
		uint64_t *from = NULL, n_from = 0;
		pthread_mutex_lock(&x->smu);
		struct seg_state *st = seg_of(c, x, 0);
		if (st && seg_tokens(st) >= n) {
			while (n_from < x->n_starts && x->starts[n_from] < n)
				n_from++;
			if (!(from = malloc(n_from * 8 + 8)))
				rc = -ENOMEM;
			else
				memcpy(from, x->starts, n_from * 8);
		}
		pthread_mutex_unlock(&x->smu);
		struct seg_keys sk = { .c = c, .layer = layer };
		struct seg_layer_src src = { .n = n, .heads = g->n_kv_heads, .d = g->head_dim,
					     .rope_theta = g->head_dim % 2 == 0 && g->rope_theta > 0 ? g->rope_theta : 0,
					     .keys = seg_keys_of, .ctx = &sk, .starts = from, .n_starts = n_from };
		struct seg_layer_opts o = { .seg = seg_config, .refine = 1 };
		struct seg_layer_out out;
		if (!rc && !(rc = seg_layer(&src, &o, &out))) {
			free(e->starts);
			*e = (struct layer_events){ .starts = out.starts, .n_ev = out.n_ev, .covered = n,
						    .source = from ? ATTEND_SEG_SURPRISE : ATTEND_SEG_NOVELTY };
			events_save(c, layer, e);
		}
		free(from);
	}
	if (!rc) {
		atomic_store(&x->seg_source, e->source);
		*n_ev = e->n_ev;
		if (!(*starts = malloc(e->n_ev * 8)))
			rc = -ENOMEM;
		else
			memcpy(*starts, e->starts, e->n_ev * 8);
	}
	pthread_mutex_unlock(&x->emu);
	return rc;
}

/* A loaded episodic index: STAT's source from the layer's saved events, when they are there. */
static void layer_events_source(struct kv_ctx *c, struct ctx_indexes *x, uint32_t layer, uint64_t covered)
{
	pthread_mutex_lock(&x->emu);
	if (x->ev[layer].covered == covered || !events_load(c, layer, covered, &x->ev[layer]))
		atomic_store(&x->seg_source, x->ev[layer].source);
	pthread_mutex_unlock(&x->emu);
}

/* RAM the slot holds, counted in n_bytes. mu held. */
static void slot_account(struct slot *s, const struct policy_ops *po, unsigned G, unsigned d)
{
	size_t now = (s->ix ? po->memory(s->ix) : 0) + (s->k ? s->n * d * sizeof(float) : 0) +
		     (s->recent ? (size_t)RECENT_QUERIES * G * d * sizeof(float) : 0);
	atomic_fetch_add(&n_bytes, now);
	atomic_fetch_sub(&n_bytes, s->bytes);
	s->bytes = now;
}

static void save(struct kv_ctx *c, const struct slot *s, const struct policy_ops *po, uint32_t policy,
		 uint32_t layer, uint32_t head)
{
	uint8_t *blob;
	size_t len;
	if (po->save(s->ix, &blob, &len))
		return;
	uint8_t *buf = malloc(PX_HEADER + len);
	if (buf) {
		uint32_t h[4] = { PX_MAGIC, PX_VERSION, policy, 0 };
		memcpy(buf, h, sizeof(h));
		memcpy(buf + 16, &s->n, 8);
		memcpy(buf + PX_HEADER, blob, len);
		char name[96];
		side_name(name, sizeof(name), po, layer, head);
		/* best effort: without it the next daemon builds again */
		kv_ctx_side_save(c, name, buf, PX_HEADER + len);
	}
	free(buf);
	free(blob);
}

/* The slot's index: loaded when saved, else built over the layer's tokens. Read lock held. */
static int ensure_index(struct kv_ctx *c, struct ctx_indexes *x, struct slot *s, const struct policy_ops *po,
			uint32_t policy, uint32_t layer, uint32_t head, unsigned G, enum index_source *how)
{
	pthread_mutex_lock(&s->mu);
	int rc = 0;
	*how = INDEX_PRESENT;
	if (s->ix)
		goto out;
	const struct kv_geometry *g = kv_ctx_geometry(c);
	const uint64_t n = kv_ctx_layer_tokens(c, layer);
	void *blob;
	size_t len;
	uint64_t covered;
	if (read_saved(c, po, policy, layer, head, n, &blob, &len, &covered) == 0) {
		rc = load_index(c, s, po, layer, head, (const uint8_t *)blob + PX_HEADER, len - PX_HEADER, covered);
		free(blob);
		if (!rc) {
			atomic_fetch_add(&n_loads, 1);
			*how = INDEX_LOADED;
			/* STAT says what the loaded events came from (their side file; none: unknown) */
			if (policy == POLICY_EPISODIC)
				layer_events_source(c, x, layer, covered);
			goto done;
		}
		/* a body the policy refuses is built over */
		if (s->ix)
			po->free(s->ix);
		s->ix = NULL;
		free(s->k);
		s->k = NULL;
	}
	float *pq = NULL, *k = NULL, *v = NULL;
	uint64_t npq = 0, *ev = NULL, n_ev = 0;
	rc = 0;
	/* ann's edges come from prefill queries: a graph of keys alone finds a
	 * fraction of what it should (0.18 against 0.93 top-100 recall in
	 * test_ann), so none is built without them */
	if (policy == POLICY_ANN && !(rc = prefill_group(c, x, layer, head, G, &pq, &npq)) && !npq)
		rc = -ENOTSUP;
	if (!rc && policy == POLICY_EPISODIC)
		rc = layer_events(c, x, layer, n, &ev, &n_ev);
	/* episodic ranks events with received attention when prefill queries are there */
	if (!rc && policy == POLICY_EPISODIC)
		rc = prefill_group(c, x, layer, head, G, &pq, &npq);
	if (!rc) {
		k = malloc(n * g->head_dim * sizeof(float) + 4);
		v = malloc(n * g->head_dim * sizeof(float) + 4);
		rc = k && v ? gather_f32(c, layer, head, n, k, v) : -ENOMEM;
	}
	if (!rc) {
		struct index_keys keys = { .k = k, .n = n, .d = g->head_dim };
		struct index_build_params bp = { .seed = 1, .group = G, .v = v, .prefill_q = pq, .n_prefill = npq,
						 .event_starts = ev, .n_events = n_ev,
						 .rerank = policy == POLICY_QUEST ? quest_rerank : 0 };
		if (!(rc = po->build(&keys, &bp, &s->ix))) {
			atomic_fetch_add(&n_builds, 1);
			*how = INDEX_BUILT;
			s->n = n;
			/* sparse_keys policies fetch the few rows they tail fill from the blocks */
			if (!po->keeps_keys && !po->sparse_keys) {
				s->k = k;
				k = NULL;
			}
			save(c, s, po, policy, layer, head);
		}
	}
	free(pq);
	free(ev);
	free(k);
	free(v);
	/* the build's fp32 copies are gone before the rows are gathered */
	if (!rc)
		rc = place_rows(c, s, po, layer, head);
done:
	if (rc && s->ix) {
		po->free(s->ix);
		s->ix = NULL;
		free(s->k);
		s->k = NULL;
	}
	if (!rc)
		slot_account(s, po, G, g->head_dim);
out:
	pthread_mutex_unlock(&s->mu);
	return rc;
}

/*
 * Policies that extend (ann): keep the group's queries in the slot's ring
 * and, once EXTEND_TOKENS tokens were appended past the index, take them
 * in with the ring's queries (the index is then saved again). Searches wait
 * on the slot's write lock while extend() runs.
 */
static int remember_and_extend(struct kv_ctx *c, struct slot *s, const struct policy_ops *po, uint32_t policy,
			       uint32_t layer, uint32_t head, unsigned G, const float *q)
{
	if (!po->extend || po->attach_rows)
		return 0;
	const unsigned d = kv_ctx_geometry(c)->head_dim;
	const size_t gd = (size_t)G * d;
	int rc = 0;
	float *k = NULL, *rq = NULL;
	pthread_mutex_lock(&s->mu);
	if (!s->recent) {
		if (!(s->recent = malloc(RECENT_QUERIES * gd * sizeof(float)))) {
			rc = -ENOMEM;
			goto out;
		}
		slot_account(s, po, G, d);
	}
	memcpy(s->recent + s->recent_next * gd, q, gd * sizeof(float));
	s->recent_next = (s->recent_next + 1) % RECENT_QUERIES;
	if (s->recent_n < RECENT_QUERIES)
		s->recent_n++;
	const uint64_t n = kv_ctx_layer_tokens(c, layer);
	if (!s->ix || n < s->n + EXTEND_TOKENS)
		goto out;
	k = malloc(n * d * sizeof(float) + 4);
	rq = malloc(s->recent_n * gd * sizeof(float));
	if (!k || !rq) {
		rc = -ENOMEM;
		goto out;
	}
	if ((rc = gather_f32(c, layer, head, n, k, NULL)))
		goto out;
	/* oldest first */
	for (uint32_t i = 0; i < s->recent_n; i++) {
		uint32_t at = (s->recent_next + RECENT_QUERIES - s->recent_n + i) % RECENT_QUERIES;
		memcpy(rq + i * gd, s->recent + at * gd, gd * sizeof(float));
	}
	struct index_keys keys = { .k = k, .n = n, .d = d };
	struct index_build_params bp = { .seed = 1, .group = G };
	pthread_rwlock_wrlock(&s->rw);
	rc = po->extend(s->ix, &keys, rq, s->recent_n, G, &bp);
	if (!rc) {
		s->n = n;
		if (!po->keeps_keys) {
			free(s->k);
			s->k = k;
			k = NULL;
		}
	}
	pthread_rwlock_unlock(&s->rw);
	if (!rc) {
		slot_account(s, po, G, d);
		save(c, s, po, policy, layer, head);
	}
out:
	pthread_mutex_unlock(&s->mu);
	free(k);
	free(rq);
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
	uint32_t sinks, window;
	const float *qs;
	float *o, *lse;
	_Atomic uint64_t scanned, loaded;
	_Atomic int err;
	_Atomic uint64_t err_block;
	_Atomic uint32_t err_head;
	struct head_work *work;   /* [n_kv_heads]: what the pick pass leaves the fold pass */
};

/*
 * A KV head's buffers for a policy ATTEND: kept by the thread that makes
 * the request (attend_scratch()), grown to the largest request seen and
 * reused, so a decode step allocates nothing once warm.
 */
struct head_bufs {
	uint64_t *ids, *pos, *blocks;
	size_t ids_cap, pos_cap, blocks_cap;
	uint32_t *runs;
	size_t runs_cap;
	float *ek, *ec, *ev;      /* EST_CAP estimate rows, made with the buffers */
};

/*
 * One KV head between the two passes of a policy ATTEND. The pick pass
 * searches every head's index and sends the picked blocks to be read
 * ahead; the fold pass attends them once the reads are under way for all
 * heads, so a cold ATTEND's reads overlap its searches and the index loads
 * of the other heads instead of following each one.
 */
struct head_work {
	struct head_bufs *buf;
	float m[ATTN_MAX_GROUP], l[ATTN_MAX_GROUP]; /* online softmax state; the sums are in o */
	uint64_t *ids, picked;    /* sorted picks inside the range */
	bool ids_folded;          /* the pick pass folded them from the index's own rows */
	uint64_t *pos, n_pos;     /* or, with rows on the tier, where they lie there (sorted) */
	struct kv_ctx *rows;      /* the slot's tier rows (borrowed: the slot holds them) */
	uint32_t rows_layer;
	float *ek, *ec, *ev;      /* the estimated clusters */
	uint32_t n_est;
	uint64_t idx_end;         /* the index's part of the range ends here */
	uint64_t covered;         /* tokens the index covered when searched */
	uint64_t scanned;
};

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/*
 * Fold sorted rows @p ids of (@p c, @p layer, @p head) into the state,
 * pinning their blocks in batches: the request's own tokens, or the
 * positions of a slot's tier rows.
 */
static int fold_rows_of(struct policy_job *j, struct kv_ctx *c, uint32_t layer, uint32_t h, const float *q,
			const uint64_t *ids, uint64_t n, float *m, float *l, float *acc, uint64_t *bad)
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
		const uint64_t t0 = now_ns();
		int rc = kv_ctx_pin_list(c, layer, h, blocks, nb, mem, bad);
		atomic_fetch_add_explicit(&t_pin, now_ns() - t0, memory_order_relaxed);
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
		kv_ctx_unpin_list(c, layer, h, blocks, nb);
		i = e;
	}
	return 0;
}

/* Fold sorted token ids of the request's layer and KV head @p h. */
static int fold_ids(struct policy_job *j, uint32_t h, const float *q, const uint64_t *ids, uint64_t n,
		    float *m, float *l, float *acc, uint64_t *bad)
{
	return fold_rows_of(j, j->c, j->layer, h, q, ids, n, m, l, acc, bad);
}

/* Grow @p *p to hold @p need items of @p size (kept, never shrunk). @return 0 or -ENOMEM */
static int grow(void **p, size_t *cap, size_t need, size_t size)
{
	if (need <= *cap)
		return 0;
	void *n = realloc(*p, need * size);
	if (!n)
		return -ENOMEM;
	*p = n;
	*cap = need;
	return 0;
}

/*
 * The distinct blocks of sorted token ids, in @p b's blocks buffer (NULL
 * when there are none or no memory: reading ahead is a hint). @p n_out
 * receives their count.
 */
static uint64_t *blocks_of(struct head_bufs *b, const uint64_t *ids, uint64_t n, uint32_t B, uint32_t *n_out)
{
	*n_out = 0;
	if (!n || n > UINT32_MAX || grow((void **)&b->blocks, &b->blocks_cap, n, sizeof(uint64_t)))
		return NULL;
	uint64_t *blocks = b->blocks;
	uint32_t nb = 0;
	for (uint64_t i = 0; i < n; i++)
		if (!nb || blocks[nb - 1] != ids[i] / B)
			blocks[nb++] = ids[i] / B;
	*n_out = nb;
	return blocks;
}

/* Keep @p blocks [n] as the slot's last pick, in its own buffer (grown, not replaced). */
static void keep_last(struct slot *s, const uint64_t *blocks, uint32_t n)
{
	pthread_mutex_lock(&s->pick_mu);
	size_t cap = s->last_cap;
	if (!grow((void **)&s->last, &cap, n, sizeof(uint64_t))) {
		s->last_cap = (uint32_t)cap;
		memcpy(s->last, blocks, (size_t)n * sizeof(uint64_t));
		s->n_last = n;
	} else {
		s->n_last = 0; /* a hint: none rather than a stale one */
	}
	pthread_mutex_unlock(&s->pick_mu);
}

/* Read the slot's last pick of @p layer ahead: the next ATTEND of that layer will want most of it. */
static void read_last_ahead(struct kv_ctx *c, struct slot *s, uint32_t layer, uint32_t head)
{
	pthread_mutex_lock(&s->pick_mu);
	/* a pick of tier rows names their blocks (rows is set before any pick is kept) */
	if (s->n_last && s->rows)
		(void)kv_ctx_prefetch(s->rows, s->rows_layer, 0, s->last, s->n_last);
	else if (s->n_last)
		(void)kv_ctx_prefetch(c, layer, head, s->last, s->n_last);
	pthread_mutex_unlock(&s->pick_mu);
}

static int in_sorted(const uint64_t *a, uint64_t n, uint64_t x)
{
	uint64_t lo = 0, hi = n;
	while (lo < hi) {
		uint64_t mid = lo + (hi - lo) / 2;
		if (a[mid] < x)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < n && a[lo] == x;
}

/*
 * The request's sinks and window inside the index's part of the range, less
 * what the index picked (@p sel, sorted): attended exactly on top.
 */
static int fold_extras(struct policy_job *j, uint32_t h, const float *q, uint64_t idx_end, const uint64_t *sel,
		       uint64_t n_sel, float *m, float *l, float *acc, uint64_t *bad, uint64_t *added)
{
	uint64_t run[256], n = 0;
	uint64_t s_end = j->begin + j->sinks < idx_end ? j->begin + j->sinks : idx_end;
	uint64_t w_begin = j->end - j->begin > j->window ? j->end - j->window : j->begin;
	if (w_begin < s_end)
		w_begin = s_end;
	*added = 0;
	for (int part = 0; part < 2; part++) {
		uint64_t a = part ? w_begin : j->begin, e = part ? idx_end : s_end;
		for (uint64_t t = a; t < e; t++) {
			if (in_sorted(sel, n_sel, t))
				continue;
			run[n++] = t;
			if (n == 256 || t + 1 == e) {
				int rc = fold_ids(j, h, q, run, n, m, l, acc, bad);
				if (rc)
					return rc;
				*added += n;
				n = 0;
			}
		}
		if (n) {
			int rc = fold_ids(j, h, q, run, n, m, l, acc, bad);
			if (rc)
				return rc;
			*added += n;
			n = 0;
		}
	}
	return 0;
}

/* index_keys.fetch for sparse_keys policies: rows from the pinned blocks, converted to fp32. */
struct row_fetch {
	struct kv_ctx *c;
	uint32_t layer, head, B, d;
	enum kv_dtype dtype;
};

static int fetch_rows(void *arg, const uint32_t *ids, size_t cnt, float *out)
{
	const struct row_fetch *f = arg;
	const size_t row = (size_t)f->d * (f->dtype == KV_F32 ? 4 : 2);
	for (size_t i = 0; i < cnt;) {
		const uint64_t b = ids[i] / f->B;
		const uint8_t *win[1];
		uint64_t bad;
		int rc = kv_ctx_pin(f->c, f->layer, f->head, b, 1, win, &bad);
		if (rc)
			return rc;
		/* the run of ids in this block */
		for (; i < cnt && ids[i] / f->B == b; i++)
			for (uint32_t j = 0; j < f->d; j++)
				out[i * f->d + j] = kv_load(f->dtype, win[0] + (ids[i] % f->B) * row, j);
		kv_ctx_unpin(f->c, f->layer, f->head, b, 1);
	}
	return 0;
}

/* index_keys.fetch_ordered for tier rows: positions [first, first + cnt) of the slot's layer. */
static int fetch_tier_rows(void *arg, uint64_t first, uint32_t cnt, float *out)
{
	const struct row_fetch *f = arg;
	const size_t row = (size_t)f->d * (f->dtype == KV_F32 ? 4 : 2);
	kv_ctx_read_begin(f->c);
	int rc = 0;
	for (uint64_t p = first; p < first + cnt && !rc;) {
		const uint64_t b = p / f->B;
		const uint8_t *win[1];
		uint64_t bad;
		if ((rc = kv_ctx_pin(f->c, f->layer, 0, b, 1, win, &bad)))
			break;
		for (; p < first + cnt && p / f->B == b; p++)
			for (uint32_t i = 0; i < f->d; i++)
				out[(p - first) * f->d + i] = kv_load(f->dtype, win[0] + (p % f->B) * row, i);
		kv_ctx_unpin(f->c, f->layer, 0, b, 1);
	}
	kv_ctx_read_end(f->c);
	return rc;
}

static void job_fail(struct policy_job *j, unsigned h, int rc, uint64_t bad)
{
	int zero = 0;
	if (atomic_compare_exchange_strong(&j->err, &zero, rc)) {
		atomic_store(&j->err_block, bad);
		atomic_store(&j->err_head, h);
	}
}

/* Pass 1 for KV head @p h: the index (loaded or built), its search, the picks' blocks sent ahead. */
static void pick_unit(void *arg, unsigned h)
{
	struct policy_job *j = arg;
	struct head_work *w = &j->work[h];
	const unsigned G = j->G, d = j->d;
	const float *q = j->qs + (size_t)h * G * d;
	float *o = j->o + (size_t)h * G * d;
	struct slot *s = &j->x->slots[((size_t)j->policy * j->x->L + j->layer) * j->x->H + h];
	uint64_t bad = 0;
	uint32_t *runs = NULL;
	enum index_source how;
	int rc, locked = 0;
	attn_state_init(G, d, w->m, w->l, o);
	if ((rc = ensure_index(j->c, j->x, s, j->po, j->policy, j->layer, h, G, &how)))
		goto fail;
	if ((rc = remember_and_extend(j->c, s, j->po, j->policy, j->layer, h, G, q)))
		goto fail;
	pthread_rwlock_rdlock(&s->rw);
	locked = 1;
	/* the index covers [0, s->n); the request wants [begin, end) */
	w->covered = s->n;
	w->idx_end = s->n < j->end ? s->n : j->end;
	uint64_t budget = j->budget ? j->budget : (s->n / 50 > 64 ? s->n / 50 : 64);
	if (budget > s->n)
		budget = s->n;
	const unsigned est_cap = EST_CAP;
	struct head_bufs *hb = w->buf;
	if (grow((void **)&hb->ids, &hb->ids_cap, budget + 1, sizeof(uint64_t))) {
		rc = -ENOMEM;
		goto fail;
	}
	w->ids = hb->ids;
	w->ek = hb->ek;
	w->ec = hb->ec;
	w->ev = hb->ev;
	if (j->policy == POLICY_EPISODIC) {
		pthread_mutex_lock(&s->mu);
		if (!s->hist)
			s->hist = index_history_new();
		const int none = !s->hist;
		pthread_mutex_unlock(&s->mu);
		if (none) {
			rc = -ENOMEM;
			goto fail;
		}
	}
	struct index_result res = { .tokens = w->ids, .est_cap = no_estimates ? 0 : est_cap, .est_key = w->ek,
				    .est_count = w->ec,
				    .est_vsum = w->ev, .history = s->hist, .cohere = quest_cohere };
	/* the index's own rows serve a request for everything it covers; a part of it goes by token */
	const int whole = j->begin == 0 && w->idx_end == s->n;
	const struct index_rows *own = whole && j->po->rows ? j->po->rows(s->ix) : NULL;
	const int tiered = whole && s->rows;
	if (own || tiered) {
		if (grow((void **)&hb->runs, &hb->runs_cap, (budget + 1) * 2, sizeof(uint32_t))) {
			rc = -ENOMEM;
			goto fail;
		}
		runs = hb->runs;
		res.runs = runs;
		res.runs_cap = budget + 1;
	}
	if (j->begin < w->idx_end && s->n) {
		struct row_fetch rf = { .c = j->c, .layer = j->layer, .head = h, .B = j->B, .d = d,
					.dtype = (enum kv_dtype)j->dtype };
		struct row_fetch tf = { .c = s->rows, .layer = s->rows_layer, .B = j->B, .d = d,
					.dtype = (enum kv_dtype)j->dtype };
		struct index_keys keys = { .k = s->k, .n = s->n, .d = d };
		if (!s->k && j->po->sparse_keys) {
			keys.fetch = fetch_rows;
			keys.fetch_ctx = &rf;
		} else if (!s->k && s->rows) {
			keys.fetch_ordered = fetch_tier_rows;
			keys.fetch_ctx = &tf;
		}
		const uint64_t t0 = now_ns();
		rc = j->po->search(s->ix, s->k || keys.fetch || keys.fetch_ordered ? &keys : NULL, q, G, budget, &res);
		atomic_fetch_add_explicit(&t_search, now_ns() - t0, memory_order_relaxed);
		if (rc)
			goto fail;
		w->scanned = res.scanned;
		/* estimates stand for whole clusters: only when the range is the whole index */
		w->n_est = whole ? res.n_est : 0;
		if (own && (res.n_runs || !res.n_tokens)) {
			/* the rows are the index's: attended while its lock is held */
			struct kv_rows rows = { .k = own->k, .v = own->v, .stride = own->stride,
						.dtype = (enum kv_dtype)own->dtype };
			sparse_fold_runs(j->kern, q, G, d, &rows, runs, res.n_runs, w->m, w->l, o);
			w->picked = res.n_tokens;   /* sorted: the extras are what it lacks */
			w->ids_folded = true;
		} else if (tiered && (res.n_runs || !res.n_tokens)) {
			/* the picks' places among the tier rows, read ahead now and attended in pass 2 */
			w->picked = res.n_tokens;
			if (grow((void **)&hb->pos, &hb->pos_cap, res.n_tokens + 1, sizeof(uint64_t))) {
				rc = -ENOMEM;
				goto fail;
			}
			w->pos = hb->pos;
			for (uint64_t r = 0; r < res.n_runs; r++)
				for (uint32_t i = 0; i < runs[2 * r + 1]; i++)
					w->pos[w->n_pos++] = (uint64_t)runs[2 * r] + i;
			w->rows = s->rows;
			w->rows_layer = s->rows_layer;
			uint32_t nb;
			uint64_t *blocks = blocks_of(hb, w->pos, w->n_pos, j->B, &nb);
			if (blocks) {
				(void)kv_ctx_prefetch(s->rows, s->rows_layer, 0, blocks, nb);
				keep_last(s, blocks, nb);
			}
		} else {
			/* policies return their picks sorted (policy.h); a sort only if one did not */
			for (uint64_t i = 1; i < res.n_tokens; i++)
				if (w->ids[i - 1] > w->ids[i]) {
					qsort(w->ids, res.n_tokens, sizeof(uint64_t), cmp_u64);
					break;
				}
			/* keep what lies in the requested range */
			for (uint64_t i = 0; i < res.n_tokens; i++)
				if (w->ids[i] >= j->begin && w->ids[i] < w->idx_end)
					w->ids[w->picked++] = w->ids[i];
			uint32_t nb;
			uint64_t *blocks = blocks_of(hb, w->ids, w->picked, j->B, &nb);
			if (blocks) {
				(void)kv_ctx_prefetch(j->c, j->layer, h, blocks, nb);
				/* kept for the next ATTEND of this layer, which reads it ahead */
				keep_last(s, blocks, nb);
			}
		}
	}
	pthread_rwlock_unlock(&s->rw);
	return;
fail:
	if (locked)
		pthread_rwlock_unlock(&s->rw);
	job_fail(j, h, rc, bad);
}

/* Pass 2 for KV head @p h: the picks, the sinks and window, the estimates and the unindexed tail. */
static void fold_unit(void *arg, unsigned h)
{
	struct policy_job *j = arg;
	struct head_work *w = &j->work[h];
	const unsigned G = j->G, d = j->d;
	const float *q = j->qs + (size_t)h * G * d;
	float *o = j->o + (size_t)h * G * d, *lse = j->lse + (size_t)h * G;
	uint64_t bad = 0, run[4096], extra = 0;
	int rc = 0;
	if (atomic_load(&j->err))
		return;                         /* a head failed its pick: the ATTEND fails */
	if (j->begin < w->idx_end && w->covered) {
		if (w->rows) {
			kv_ctx_read_begin(w->rows);
			rc = fold_rows_of(j, w->rows, w->rows_layer, 0, q, w->pos, w->n_pos, w->m, w->l, o, &bad);
			kv_ctx_read_end(w->rows);
			if (rc)
				goto fail;
		} else if (!w->ids_folded && (rc = fold_ids(j, h, q, w->ids, w->picked, w->m, w->l, o, &bad))) {
			goto fail;
		}
		if ((rc = fold_extras(j, h, q, w->idx_end, w->ids, w->picked, w->m, w->l, o, &bad, &extra)))
			goto fail;
		struct kv_estimates est = { .n = w->n_est, .key = w->ek, .count = w->ec, .vsum = w->ev };
		sparse_fold_estimates(q, G, d, &est, w->m, w->l, o);
	}
	/* tokens appended after the build: exact */
	uint64_t tail0 = j->begin > w->covered ? j->begin : w->covered, tail = 0;
	for (uint64_t t = tail0; t < j->end;) {
		uint64_t n = j->end - t < 4096 ? j->end - t : 4096;
		for (uint64_t i = 0; i < n; i++)
			run[i] = t + i;
		if ((rc = fold_ids(j, h, q, run, n, w->m, w->l, o, &bad)))
			goto fail;
		t += n;
		tail += n;
	}
	attn_state_finish(G, d, w->m, w->l, o, o, lse);
	atomic_fetch_add(&j->scanned, w->scanned + tail);
	atomic_fetch_add(&j->loaded, w->picked + extra + tail);
	return;
fail:
	job_fail(j, h, rc, bad);
}

/*
 * What one thread's policy ATTENDs reuse: the scaled queries, the heads'
 * work and their buffers. The requesting thread owns it while its passes
 * run (the workers fill only their own head's buffers); it is freed when
 * the thread ends.
 */
struct attend_scratch {
	float *qs;
	size_t qs_cap;
	struct head_work *work;
	struct head_bufs *bufs;
	uint32_t heads;
	unsigned d;               /* the estimate rows' width the buffers were made for */
};

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void head_bufs_free(struct head_bufs *b)
{
	free(b->ids);
	free(b->pos);
	free(b->blocks);
	free(b->runs);
	free(b->ek);
	free(b->ec);
	free(b->ev);
	memset(b, 0, sizeof(*b));
}

static void scratch_free(void *p)
{
	struct attend_scratch *sc = p;
	for (uint32_t h = 0; sc && h < sc->heads; h++)
		head_bufs_free(&sc->bufs[h]);
	if (sc) {
		free(sc->qs);
		free(sc->work);
		free(sc->bufs);
	}
	free(sc);
}

static void scratch_key_make(void)
{
	(void)pthread_key_create(&scratch_key, scratch_free);
}

/* This thread's scratch for @p heads KV heads, @p nq query floats and head_dim @p d (NULL: no memory). */
static struct attend_scratch *attend_scratch(uint32_t heads, size_t nq, unsigned d)
{
	pthread_once(&scratch_once, scratch_key_make);
	struct attend_scratch *sc = pthread_getspecific(scratch_key);
	if (!sc) {
		if (!(sc = calloc(1, sizeof(*sc))) || pthread_setspecific(scratch_key, sc)) {
			free(sc);
			return NULL;
		}
	}
	if (grow((void **)&sc->qs, &sc->qs_cap, nq, sizeof(float)))
		return NULL;
	if (heads > sc->heads || d > sc->d) {
		/* another geometry: the buffers start over (rare: a daemon serves few geometries);
		 * sc->d stays 0 until every head's buffers are there */
		sc->d = 0;
		for (uint32_t h = 0; h < sc->heads; h++)
			head_bufs_free(&sc->bufs[h]);
		free(sc->work);
		free(sc->bufs);
		sc->heads = 0;
		sc->work = calloc(heads, sizeof(*sc->work));
		sc->bufs = calloc(heads, sizeof(*sc->bufs));
		if (!sc->work || !sc->bufs) {
			free(sc->work);
			free(sc->bufs);
			sc->work = NULL;
			sc->bufs = NULL;
			return NULL;
		}
		for (uint32_t h = 0; h < heads; h++) {
			struct head_bufs *b = &sc->bufs[h];
			b->ek = malloc((size_t)EST_CAP * d * sizeof(float));
			b->ec = malloc((size_t)EST_CAP * sizeof(float));
			b->ev = malloc((size_t)EST_CAP * d * sizeof(float));
			sc->heads = h + 1;
			if (!b->ek || !b->ec || !b->ev)
				return NULL;
		}
		sc->d = d;
	}
	return sc;
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
	struct attend_scratch *sc = attend_scratch(g->n_kv_heads, (size_t)g->n_q_heads * d, d);
	if (!sc) {
		rc = -ENOMEM;
		goto out;
	}
	qs = sc->qs;
	const float scale = 1.0f / sqrtf((float)d);
	for (size_t i = 0; i < (size_t)g->n_q_heads * d; i++)
		qs[i] = req->q[i] * scale;
	struct head_work *work = sc->work;
	memset(work, 0, g->n_kv_heads * sizeof(*work));
	for (uint32_t h = 0; h < g->n_kv_heads; h++)
		work[h].buf = &sc->bufs[h];
	struct policy_job job = {
		.c = c, .po = po, .policy = policy, .x = x, .kern = attn_kernels_best(), .layer = req->layer, .G = G, .d = d,
		.dtype = g->dtype, .B = kv_ctx_block_tokens(c), .begin = req->token_begin, .end = end,
		.budget = budget, .sinks = req->sinks, .window = req->window, .qs = qs, .o = res->o,
		.lse = res->lse, .work = work,
	};
	const uint64_t t_begin = now_ns();
	ex->parallel(ex->pool, g->n_kv_heads, pick_unit, &job);
	const uint64_t t_picked = now_ns();
	/* a decode step asks for the next layer next: read what it picked last time
	 * while this layer is attended (queued after this layer's own reads) */
	if (req->layer + 1 < g->n_layers && !atomic_load(&job.err))
		for (uint32_t h = 0; h < g->n_kv_heads; h++)
			read_last_ahead(c, &x->slots[((size_t)policy * x->L + req->layer + 1) * x->H + h],
					req->layer + 1, h);
	ex->parallel(ex->pool, g->n_kv_heads, fold_unit, &job);
	atomic_fetch_add(&t_fold, now_ns() - t_picked);
	atomic_fetch_add(&t_pick, t_picked - t_begin);
	atomic_fetch_add(&t_attends, 1);
	if ((rc = atomic_load(&job.err))) {
		res->err_block = atomic_load(&job.err_block);
		res->err_head = atomic_load(&job.err_head);
		goto out;
	}
	res->scanned = atomic_load(&job.scanned);
	res->loaded = atomic_load(&job.loaded);
out:
	kv_ctx_read_end(c);
	return rc;
}

struct prepare_job {
	struct kv_ctx *c;
	const struct policy_ops *po;
	struct ctx_indexes *x;
	uint32_t policy, layer, G;
	_Atomic uint64_t counts[3];
	_Atomic int err;
};

static void prepare_unit(void *arg, unsigned h)
{
	struct prepare_job *j = arg;
	struct slot *s = &j->x->slots[((size_t)j->policy * j->x->L + j->layer) * j->x->H + h];
	enum index_source how;
	int rc = ensure_index(j->c, j->x, s, j->po, j->policy, j->layer, h, j->G, &how);
	if (rc) {
		int zero = 0;
		atomic_compare_exchange_strong(&j->err, &zero, rc);
		return;
	}
	atomic_fetch_add(&j->counts[how], 1);
}

int attend_policy_prepare(struct kv_ctx *c, uint32_t policy, uint32_t layer, const struct attend_exec *ex,
			  uint64_t counts[3])
{
	const struct policy_ops *po = policy_ops_get(policy);
	const struct kv_geometry *g = kv_ctx_geometry(c);
	if (!po || layer >= g->n_layers)
		return -EINVAL;
	struct ctx_indexes *x = indexes_of(c);
	if (!x)
		return -ENOMEM;
	struct prepare_job job = { .c = c, .po = po, .x = x, .policy = policy, .layer = layer,
				   .G = g->n_q_heads / g->n_kv_heads };
	kv_ctx_read_begin(c);
	int rc = kv_ctx_layer_tokens(c, layer) ? 0 : -ENODATA;
	if (!rc) {
		ex->parallel(ex->pool, g->n_kv_heads, prepare_unit, &job);
		rc = atomic_load(&job.err);
	}
	kv_ctx_read_end(c);
	for (int i = 0; i < 3; i++)
		counts[i] += atomic_load(&job.counts[i]);
	return rc;
}
