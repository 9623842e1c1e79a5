/*
 * Retrieval policies over the keys of one (layer, kv_head) segment.
 *
 * Glossary
 *   segment   the keys an index is built over: n consecutive tokens of one
 *             (context, layer, kv_head), given to build() as fp32 [n][d]
 *             (post-RoPE, as stored); token ids in results are relative to
 *             the segment's first token.
 *   group     the G query heads that share the KV head (GQA); search() picks
 *             one candidate set for all of them, ranking by the sum over the
 *             group of each head's softmax score (RetroInfer).
 *   budget    the most tokens search() may return for exact attention.
 *   scanned   keys (or representatives: centroids, page bounds, graph
 *             nodes) whose score against a query was computed.
 *   estimate  a cluster that is not attended exactly but stands in as one
 *             pseudo-key of weight n_j: it adds n_j * exp(q.c_j) to the
 *             softmax denominator and exp(q.c_j) * vsum_j to the numerator
 *             (RetroInfer); policies that do not estimate return none.
 *
 *   unit      what a policy ranks: a page (quest), a block (blocks), a
 *             cluster (centroids*), an inverted list or graph node (faiss-*).
 *   tail fill when the next unit in rank order does not fit in what is left
 *             of the budget, its tokens are scored exactly and the best of
 *             them fill the rest (counted in scanned), so search() uses the
 *             whole budget and a budget >= n returns every token.
 *
 * Queries passed to search() are already multiplied by 1/sqrt(d).
 * Every function returns 0 or a negative errno.
 *
 * The policies (search() counts in @c scanned what is said here):
 *
 * quest (Quest): per page of unit_tokens (16) tokens, the element-wise min
 *   and max of the keys, kept as int8 steps of a per-channel scale (max
 *   rounded up, min down: still bounds, at a byte a value); a page's bound for one head is
 *   U = sum_i max(q_i*max_i, q_i*min_i) >= q.k for every k of the page. For
 *   a group a page scores sum_g exp(U_g - log sum_pages exp(U_g)), the
 *   group's summed softmax over pages of the bounds (each term bounds the
 *   page's best key's weight under that head's page softmax); measured
 *   better than the max over heads of U_g - max_pages U_g (0.82 against
 *   0.78 of the best mass at 5 % on the unit test's data). Whole pages are
 *   taken in score order and the pages that do not fit share the rest of
 *   the budget by tail fill; Quest keeps at least 3 pages, so a budget
 *   under 3 pages takes the best tokens of the top min(3, pages) pages.
 *   scanned = pages bounded + tokens scored by tail fill (a bound reads two
 *   vectors, min and max). With rerank R > 1 (not Quest's own), the build
 *   also keeps each key as 4-bit codes on its page's [min, max] grid (half a
 *   byte a channel), and a search pools whole pages in score order until
 *   they hold R x budget tokens, scores those tokens from the codes
 *   (sum_g exp(q_g.k^ - lse_g), as tail fill scores) and keeps the best
 *   budget: no key is fetched. Measured 0.996 of the best mass at 5 % with
 *   R = 4 on the unit test's data (0.888 without); scanned = pages + pooled
 *   tokens.
 *
 * blocks (InfLLM): blocks of unit_tokens (128) tokens with 4 representative
 *   keys each. With prefill_q, the representatives are the keys that
 *   received the most attention (full softmax over the segment, summed over
 *   the last max_prefill (16) prefill positions and the group's heads), as
 *   InfLLM picks them from local queries. Without, medoids: seeds by a
 *   farthest-point traversal of the block's keys, 4 rounds of k-means in
 *   the block, then per group the key nearest its mean (measured better
 *   than the farthest points themselves: 0.65 against 0.45 of the best mass
 *   at 5 % on the unit test's data, and on par with received attention). A
 *   block's score for one head is the max over its representatives of q.r
 *   (the mean measured no better), the representatives held as int8
 *   steps of a per-channel scale (nearest step; blocks.c); for a group,
 *   the sum over heads of the softmax over blocks of those scores. Whole blocks are taken in score
 *   order, the candidates that do not fit share the rest by tail fill.
 *   scanned = representatives scored + tail fill tokens.
 *
 * centroids (RetroInfer; Squeezed Attention): each chunk of chunk_tokens
 *   (8192) is clustered alone by mean-centred spherical k-means (keys minus
 *   the chunk's mean, L2-normalised, inner-product assignment, FAISS) into
 *   about chunk/unit_tokens clusters, iters (6) iterations; empty clusters
 *   are dropped. Per cluster: centroid (the mean of the raw keys), size n_j,
 *   value sum (when v is given); members are stored contiguously by
 *   cluster. Budget mode: with Z_g = sum_l n_l*exp(q_g.c_l) (head g's
 *   softmax over clusters of n_j*exp(q_g.c_j)), cluster j scores
 *   sum_g exp(q_g.c_j) / Z_g, the group's summed estimated attention per
 *   member (its share of the mass, divided by n_j); clusters are taken in
 *   score order until the budget is filled (the first that does not fit by
 *   tail fill). Ranking by the mass itself (times n_j) favours big clusters
 *   and measured worse per budget token (0.92 against 0.97 of the best
 *   mass at 5 % on the unit test's data). The clusters after them become
 *   estimates while their sizes sum to at most est_share*n and est_cap
 *   allows (only when v was given). Threshold mode: see enum index_select;
 *   the statistic of cluster j is max_g exp(q_g.c_j) / Z_g, the threshold
 *   the quantile of that statistic over calibration keys (every key of a
 *   cluster counts); clusters are taken in statistic order. scanned = clusters
 *   scored + tail fill tokens.
 *
 * centroids2 (Squeezed Attention, hierarchical): the fine clusters of
 *   centroids, and per chunk about fine/16 coarse clusters by spherical
 *   k-means over the fine centroids (coarse centroid, size and value sum
 *   over its tokens). Search scores every coarse cluster like centroids
 *   does, keeps coarse clusters in score order until they hold
 *   coarse_factor (2) times the budget, and at least 4 of them (threshold mode: those passing the
 *   coarse threshold, within the same cap), then scores only the fine clusters inside the
 *   survivors, normalising over them alone (sizes recounted inside the
 *   survivors), and selects among them as centroids does (threshold mode:
 *   the fine threshold, calibrated the same way). A cluster is kept only
 *   when both levels pass. Estimates: the survivors' unselected fine
 *   clusters first, then the next coarse clusters as coarse pseudo-keys.
 *   scanned = coarse clusters + fine clusters scored + tail fill tokens.
 *
 * faiss-ivf (baseline): IndexIVFFlat, inner product, nlist = 4*sqrt(n)
 *   (at most n/8) lists trained by spherical k-means on at most 64 keys per
 *   list, 10 iterations; nprobe = ceil(budget / (n/nlist)). Each head
 *   fetches its top budget keys; a group keeps the union, ranked by the
 *   best over heads of (q_g.k - head g's best score). scanned = nlist +
 *   keys of the union of the probed lists.
 *
 * ann (RetrievalAttention, RoarGraph's projection): a graph of at most
 *   degree (32) out-edges per key, searched best-first from entry points.
 *   Build: keys are clustered per chunk of chunk_tokens (8192) into about
 *   chunk/unit_tokens (256) clusters by spherical k-means (iters, 6); a
 *   cluster's centroid is an entry point and its member nearest the
 *   centroid (L2) the entry key. Edge slot 0 of every key chains the
 *   cluster's members from the entry key, each to the nearest one not yet
 *   chained (a greedy tour), so every key is reachable from an entry. The
 *   query edges come next: each of up to max_prefill (4096) prefill query
 *   vectors (the group's heads counted apart; more are subsampled evenly)
 *   finds its exact top 32 keys (FAISS, flat inner product), and every key
 *   of such a list proposes the others as its neighbours; a key keeps at
 *   most 16 of its proposals: the 128 most often proposed, then pruned in
 *   order of L2 distance by the alpha-RNG rule (alpha 1.2: a candidate goes
 *   when an accepted neighbour is nearer to it, by alpha, than the key is).
 *   The remaining slots hold the key's nearest keys (L2) of its cluster.
 *   Search: every entry point is scored; the entry keys of the best 16
 *   (of all when the beam is as wide as the segment, so that it reaches
 *   every key and returns the exact top budget) seed a best-first beam
 *   of width ef = max(32, beam_factor * budget) over the group score max_g (q_g.k - off_g) (off_g: head g's best centroid
 *   score; the max makes the result the union of each head's best, and
 *   measured as good as log sum_g exp at 1.5x the speed), expanding 4
 *   candidates at a time so that their keys load together; it stops when
 *   the best unexpanded key is worse than the beam's worst. The result is
 *   the budget best of all keys scored. Search reads the index's own bf16
 *   copy of the keys (exact for bf16 KV; half the bytes a random read
 *   costs), so keys may be NULL.
 *   scanned = entry points + keys scored. Extend: the new tokens are
 *   clustered and chained as in a build and the recent queries draw their
 *   query edges over the whole segment, merged into the old ones.
 *
 * episodic (EM-LLM): events of variable length (seg_layer() in events.h:
 *   boundaries from surprise, or key novelty, refined on the pre-RoPE key
 *   graph), each with 4 representative keys chosen as blocks chooses them
 *   (received attention from the last max_prefill prefill positions, else
 *   medoids). Events are ranked in two levels: every event by its mean
 *   representative (EM-LLM keeps that one per event), the best kept while
 *   they hold under 4 budgets' tokens (at least 16 events; all when 4
 *   budgets cover the segment); those then score as a block does (max over
 *   their representatives, the group's summed softmax over them), which
 *   halves what is scored (4.8% against 9.3% of the keys at a 5% budget on
 *   test_policies' data, the same mass). Two stages:
 *   similarity takes whole events in score order while they fit in
 *   (1 - contig_share) of the budget; contiguity then pushes the
 *   neighbours (e - 1 and e + 1) of the events just picked into the
 *   requester's FIFO buffer (worst pick first, so the best pick's
 *   neighbours are the newest; an event already queued moves to the back;
 *   picked events leave it), drops the oldest until its events hold at
 *   most contig_share of the budget, and adds every event it holds. What
 *   is left of the budget goes on down the similarity ranking: whole
 *   events while they fit, the rest by tail fill, so the whole budget is
 *   used and a budget >= n returns every token. Without a history the
 *   buffer starts empty each search. scanned = events (coarse) +
 *   representatives scored + tail fill tokens.
 *
 * faiss-hnsw (baseline): IndexHNSWFlat, M = 32, inner product (FAISS's own
 *   METRIC_INNER_PRODUCT), efConstruction 40, efSearch = max(budget, 16)
 *   (FAISS searches with max(efSearch, k) anyway). Group as faiss-ivf.
 *   FAISS's C API exposes no HNSW counters, so scanned is an estimate:
 *   per head 3 * efSearch + 200 + M * levels (fitted to FAISS's internal
 *   counter, see faiss_hnsw.c), summed over the group, capped at n. Searches of
 *   one faiss-hnsw index serialise (efSearch is a field of the index).
 */
#ifndef MNEMO_INDEX_POLICY_H
#define MNEMO_INDEX_POLICY_H

#include <stddef.h>
#include <stdint.h>

#include "index.h"

struct index_keys {
	const float *k;           /* [n][d]; may be NULL with fetch for policies with sparse_keys */
	uint64_t n;
	unsigned d;
	/*
	 * Optional: the fp32 rows of tokens @p ids [cnt] into @p out [cnt][d],
	 * for search() of a policy with sparse_keys when k is NULL (it scores
	 * only the few tokens it tail fills). @return 0 or a negative errno,
	 * which search() returns.
	 */
	int (*fetch)(void *ctx, const uint32_t *ids, size_t cnt, float *out);
	/*
	 * Optional, for policies with row_order when k is NULL and no rows are
	 * attached: the fp32 keys of positions [first, first + cnt) of the
	 * index's row order into @p out [cnt][d] (a caller keeps the rows in
	 * that order itself). @return 0 or a negative errno, which search()
	 * returns.
	 */
	int (*fetch_ordered)(void *ctx, uint64_t first, uint32_t cnt, float *out);
	void *fetch_ctx;          /* the argument of fetch and fetch_ordered */
};

/** How centroids and centroids2 pick clusters at search time. */
enum index_select {
	/** Clusters in score order until the budget is filled (RetroInfer). */
	INDEX_SELECT_BUDGET = 0,
	/**
	 * Clusters whose estimated per-key attention, max over the group's
	 * heads, passes a threshold calibrated at build time on prefill
	 * queries (Squeezed Attention): fewer tokens than the budget when few
	 * clusters pass, never more. Needs prefill_q.
	 */
	INDEX_SELECT_THRESHOLD = 1,
};

struct index_build_params {
	uint32_t seed;            /* deterministic builds */
	unsigned threads;         /* 0: all cores */
	const float *prefill_q;   /* optional [n_prefill][G][d] queries, pre-scaled (calibration, ann) */
	uint64_t n_prefill;
	unsigned group;           /* G */
	const float *v;           /* optional [n][d] values (centroids keep per-cluster value sums) */
	/*
	 * Tuning: 0 (or 0.0) keeps the policy's default, given in brackets;
	 * a policy ignores what it does not use. All are saved with the index.
	 */
	unsigned unit_tokens;     /* quest: page [16]; blocks: block [128]; centroids*: mean tokens per cluster [16] */
	unsigned chunk_tokens;    /* centroids*: tokens clustered together [8192] */
	unsigned iters;           /* centroids*: k-means iterations [6] */
	unsigned max_prefill;     /* the last prefill queries used: blocks [16], calibration [100] */
	float est_share;          /* centroids*: most tokens estimated, as a share of n [0.232]; < 0: none */
	enum index_select select; /* centroids*: [budget] or threshold */
	float quantile;           /* threshold mode: share of calibration keys under the threshold [0.7] */
	float coarse_factor;      /* centroids2: coarse survivors hold at most this many times the budget [2] */
	unsigned degree;          /* ann: out-edges per key [32] */
	float beam_factor;        /* ann: beam width as a share of the budget [1] */
	float rerank;             /* quest: > 1 keeps 4-bit codes of the keys and reranks a pool of
				   * this many budgets from them (see quest) [0: Quest's own search] */
	/*
	 * episodic: the events' starts relative to the segment (ascending,
	 * [0] == 0, all < n; no event longer than 65536 tokens), as seg_layer()
	 * finds them for the whole layer; NULL: key novelty over this segment's
	 * keys alone (events.h), refined on its own key graph.
	 */
	const uint64_t *event_starts;
	uint64_t n_events;
	float contig_share;       /* episodic: the contiguity stage's share of the budget [0.3]; < 0: none */
};

/**
 * K and V rows of a segment as stored (dtype: 0 f32, 1 f16, 2 bf16, the
 * values of enum kv_dtype), row t at k + t * stride.
 */
struct index_rows {
	const uint8_t *k, *v;
	size_t stride;
	unsigned dtype;
};

struct index_result {
	uint64_t *tokens;         /* sorted, unique, < n; capacity = budget (caller's memory) */
	uint64_t n_tokens;
	uint64_t scanned;
	/*
	 * Optional, for policies with a row order (row_order): the same
	 * tokens as (first, count) pairs of row positions in the index's own
	 * row order, sorted, disjoint and merged where adjacent, so attention
	 * reads them as runs of contiguous rows (attached, or kept in that
	 * order by the caller). Caller's memory of runs_cap pairs; budget + 1
	 * pairs always suffice. Left at 0 runs otherwise.
	 */
	uint32_t *runs;
	uint64_t runs_cap, n_runs;
	/* estimates (may stay 0): caller's memory of capacity est_cap */
	unsigned est_cap, n_est;
	float *est_key;           /* [est_cap][d] centroid of each estimated cluster */
	float *est_count;         /* [est_cap] n_j */
	float *est_vsum;          /* [est_cap][d] sum of the values of the cluster */
	/*
	 * Optional: state one requester keeps across its decode steps
	 * (episodic's contiguity buffer); NULL: each search stands alone.
	 * Policies without such state ignore it.
	 */
	struct index_history *history;
	/*
	 * Optional, for quest with codes: the share in [0, 1) of the budget
	 * filled by the best-scored tokens of the pages the rest of the pick
	 * (the best 1 - cohere of the budget) already holds, before any other
	 * page is opened. A page is a block read, so the pick reads fewer
	 * blocks for a little of its mass (docs/PERF.md). 0: by score alone.
	 * Other policies ignore it.
	 */
	float cohere;
};

/**
 * episodic's contiguity buffer for one (context, layer, KV head): a FIFO
 * of events, the neighbours of what earlier steps retrieved. Searches
 * that share one serialise on its lock; an index rebuilt or extended
 * under it (other n or event count) empties it.
 */
struct index_history;
struct index_history *index_history_new(void);
void index_history_free(struct index_history *h);
/** The buffer's events, oldest first (at most @p cap written). @return how many it holds. */
uint32_t index_history_events(struct index_history *h, uint32_t *out, uint32_t cap);

struct index;

#define POLICY_OPS_VERSION 1

struct policy_ops {
	uint32_t version;
	const char *name;
	/**
	 * Build over a segment; the index keeps no pointer into @p keys unless documented.
	 * @p p may be NULL (every default). The caller owns *out and frees it with free() below.
	 * @return 0, -EINVAL (empty or oversized keys, a tuning value out of range,
	 *         threshold mode without prefill queries), -ENOMEM, -EIO (FAISS failed)
	 */
	int (*build)(const struct index_keys *keys, const struct index_build_params *p, struct index **out);
	/** Free an index of this policy (NULL is fine); another policy's index aborts. */
	void (*free)(struct index *ix);
	/**
	 * Pick up to @p budget tokens for the group's queries @p q [G][d].
	 * @p keys are the same keys the index was built over (policies may score them;
	 * quest, blocks and centroids* need them, faiss-* accept NULL).
	 * Searches of one index may run in parallel from many threads: each borrows
	 * scratch memory from its own thread (grown once, then reused).
	 * @return 0, -EINVAL (an index of another policy, G == 0 or > 1024, keys
	 *         that are not the index's), -ENOMEM, -EIO (FAISS failed)
	 */
	int (*search)(const struct index *ix, const struct index_keys *keys, const float *q, unsigned G,
		      uint64_t budget, struct index_result *res);
	/**
	 * Serialise to a malloc'ed buffer (the caller frees it): a versioned
	 * little-endian blob with a magic, see each policy's file.
	 * @return 0, -EINVAL, -ENOMEM, -EIO
	 */
	int (*save)(const struct index *ix, uint8_t **buf, size_t *len);
	/**
	 * Rebuild an index from a blob of save(); the blob is hostile: a
	 * truncated, foreign or malformed one is refused and nothing is read
	 * outside [buf, buf + len). @p keys (may be NULL) must match the blob's n and d.
	 * @return 0, -EBADMSG (malformed), -EINVAL (keys do not match), -ENOMEM
	 */
	int (*load)(const uint8_t *buf, size_t len, const struct index_keys *keys, struct index **out);
	/** Bytes the index holds in RAM (FAISS indexes: an estimate from their sizes). */
	size_t (*memory)(const struct index *ix);
	/**
	 * Optional (NULL where a policy has none): copy the segment's K/V rows
	 * @p src (token order, as stored) into the index, grouped the way
	 * search() picks them (centroids*: cluster members contiguous), so
	 * attention over a result reads runs of rows instead of gathering
	 * tokens one by one; search() then fills res->runs and no longer needs
	 * the fp32 keys (keys may be NULL). Not saved: attach again after load().
	 * Costs the rows' size in RAM.
	 * @return 0, -EINVAL (dtype, or d > 1024), -ENOMEM
	 */
	int (*attach_rows)(struct index *ix, const struct index_rows *src);
	/** The attached rows in the index's order, or NULL. */
	const struct index_rows *(*rows)(const struct index *ix);
	/**
	 * Optional: the index's row order, [tokens()] token ids, position i
	 * holding token order[i] (centroids*: the members of each cluster in
	 * turn). A caller may keep the segment's rows in this order itself
	 * instead of attaching them (retrieval keeps them on the SSD tier):
	 * search() then fills res->runs all the same and reads the keys it
	 * tail fills through index_keys.fetch_ordered. Valid while the index is.
	 */
	const uint32_t *(*row_order)(const struct index *ix);
	/**
	 * Optional (NULL where a policy has none; those are rebuilt): take in
	 * the tokens appended since the build, [the index's n, keys->n), without
	 * rebuilding, using @p q [n_q][G][d] (pre-scaled; may be NULL with n_q 0),
	 * the group's recent queries, as a build uses prefill queries. @p keys
	 * are the whole segment's keys, the old ones unchanged. @p p as for
	 * build() (threads, seed; the tuning saved in the index is kept).
	 * On failure the index is unchanged.
	 * @return 0, -EINVAL (fewer keys than the index has, another d, G),
	 *         -ENOMEM, -EIO (FAISS failed)
	 */
	int (*extend)(struct index *ix, const struct index_keys *keys, const float *q, uint64_t n_q, unsigned G,
		      const struct index_build_params *p);
	/** Tokens the index covers (its n). */
	uint64_t (*tokens)(const struct index *ix);
	/**
	 * Nonzero when an index built, or loaded with keys, holds its own copy
	 * of them: search() then takes keys NULL and the caller may drop its
	 * fp32 keys (ann). extend() still wants the whole segment's keys.
	 */
	int keeps_keys;
	/**
	 * Nonzero when search() reads keys only for the tokens it tail fills,
	 * and takes them through index_keys.fetch when k is NULL (quest,
	 * blocks, episodic): the caller then need not hold the segment's fp32
	 * keys at all, and a loaded index needs none of them to serve.
	 */
	int sparse_keys;
};

/** The ops of @p policy (enum index_policy), or NULL (exact has none). */
const struct policy_ops *policy_ops_get(uint32_t policy);

/**
 * quest only: the bound U of every page for one query head @p q [d]
 * (pre-scaled), as search() computes it; for tests and tools.
 * @param U    [cap] output, page p's bound at U[p]
 * @return the number of pages (written when <= cap), -EINVAL when @p ix
 *         is not a quest index, -ENOMEM
 */
int64_t index_quest_bounds(const struct index *ix, const float *q, float *U, uint64_t cap);

/** ann only, for tests and tools: the graph as the index holds it. */
#define INDEX_ANN_NONE UINT32_MAX  /* an empty edge slot */
struct index_ann_graph {
	uint64_t n;
	unsigned degree;
	const uint32_t *nbr;      /* [n][degree]: slot 0 the chain, then qdeg[t] query edges, then cluster neighbours */
	const uint8_t *qdeg;      /* [n] */
	uint32_t n_entries;
	const uint32_t *entries;  /* [n_entries] entry keys */
	uint64_t queries;         /* query vectors the edges were drawn from */
};

/** Fill @p g from an ann index. @return 0, or -EINVAL when @p ix is not one. */
int index_ann_graph(const struct index *ix, struct index_ann_graph *g);

/**
 * ann only, for sweeps: set the beam width's share of the budget
 * (beam_factor) of a built or loaded index; not thread-safe against its
 * searches. Any other index is left alone. @return 0 or -EINVAL.
 */
int index_ann_set_beam(struct index *ix, float beam_factor);

/**
 * episodic only, for tests and tools: the event starts as the index holds
 * them, start[0] = 0 ... start[*n_ev] = n. @return 0, or -EINVAL when @p ix is not one.
 */
int index_episodic_events(const struct index *ix, const uint32_t **start, uint64_t *n_ev);

#endif
