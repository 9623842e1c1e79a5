/*
 * The clustered index behind centroids and centroids2: build (per-chunk
 * mean-centred spherical k-means, optionally a coarse level), threshold
 * calibration, persistence, and the walk that turns ranked clusters into
 * tokens and estimates. Internal to index/.
 *
 * Glossary
 *   chunk     chunk_tokens consecutive tokens clustered alone (RetroInfer
 *             clusters each 8K segment alone); cluster ids are global
 *   fine      the clusters of about unit_tokens tokens
 *   coarse    clusters of fine clusters (centroids2 only); a coarse
 *             cluster's fine clusters are consecutive, and so are its tokens
 *   members   perm[off[j] .. off[j+1]): the tokens of fine cluster j
 *   stat      threshold mode's per-key statistic of a cluster (policy.h)
 *
 * Blob body (format 1), for both policies (the header's policy differs):
 *   n u64, d u32, nf u32, nc u32 (0: no coarse level), unit u32, chunk u32,
 *   iters u32, max_prefill u32, select u32, has_v u32, est_share f32,
 *   quantile f32, coarse_factor f32, thr_fine f32, thr_coarse f32 (natural
 *   logs of the thresholds, 0 when not calibrated), cent [nf][d] f32,
 *   off [nf+1] u32, perm [n] u32, vsum [nf][d] f32 if has_v, and if nc:
 *   ccent [nc][d] f32, coff [nc+1] u32, cvsum [nc][d] f32 if has_v.
 */
#ifndef MNEMO_INDEX_CLUSTERS_H
#define MNEMO_INDEX_CLUSTERS_H

#include "ix.h"

struct clusters {
	struct index base;
	uint64_t n;
	unsigned d;
	uint32_t nf, nc;
	uint32_t max_members;     /* largest fine cluster */
	float *cent;              /* [nf][d] mean of the members' raw keys */
	float *lnn;               /* [nf] log n_j (derived) */
	float *vsum;              /* [nf][d] sum of the members' values, or NULL */
	uint32_t *off;            /* [nf+1] */
	uint32_t *perm;           /* [n] */
	float *ccent;             /* [nc][d] mean of the coarse cluster's raw keys */
	float *clnn;              /* [nc] log of its token count (derived) */
	float *cvsum;             /* [nc][d] or NULL */
	uint32_t *coff;           /* [nc+1] fine clusters of coarse J: coff[J] .. coff[J+1] */
	/* configuration, saved */
	unsigned unit, chunk, iters, max_prefill;
	enum index_select select;
	float est_share, quantile, coarse_factor;
	float thr_fine, thr_coarse;
	/* attached rows (attach_rows), in member order: row i is token perm[i] */
	uint8_t *rk, *rv;
	struct index_rows rows;
};

/** Build for @p policy (POLICY_CENTROIDS, or POLICY_CENTROIDS2 with a coarse level). */
int clusters_build(const struct index_keys *keys, const struct index_build_params *p, unsigned policy,
		   struct clusters **out);
void clusters_free(struct clusters *cl);
int clusters_save(const struct clusters *cl, uint8_t **buf, size_t *len);
int clusters_load(const uint8_t *buf, size_t len, const struct index_keys *keys, unsigned policy,
		  struct clusters **out);
size_t clusters_memory(const struct clusters *cl);

/** Copy @p src (token order) into member order; replaces rows attached before. */
int clusters_attach_rows(struct clusters *cl, const struct index_rows *src);

/** Tokens of coarse cluster @p J. */
static inline uint32_t clusters_coarse_tokens(const struct clusters *cl, uint32_t J)
{
	return cl->off[cl->coff[J + 1]] - cl->off[cl->coff[J]];
}

/** Where a search stands while it walks clusters. */
struct cl_pick {
	uint64_t left;            /* budget not yet used */
	uint64_t scanned;
	int taking;               /* 0 once the budget is full or a cluster failed the threshold */
	int est_on;               /* estimates wanted and possible */
	uint64_t est_tokens, est_max;
	uint64_t *mbits;          /* member positions picked, when runs are wanted; else NULL */
	float *rowbuf;            /* [max_members][d]: keys a tail fill fetches (index_keys.fetch_ordered) */
	int err;                  /* a fetch failed: search() returns it */
};

/**
 * Start a walk: estimates are on when @p res asks and the index has values;
 * runs are recorded in @p mbits (a bitmap of n bits, cleared here) when
 * @p res asks for runs. @p mbits is the run bitmap of the scratch tail
 * (cl_scratch_tail()), which the walk's other buffers follow.
 */
void cl_pick_init(const struct clusters *cl, uint64_t budget, const struct index_result *res, struct cl_pick *st,
		  uint64_t *mbits);

/**
 * Walk fine clusters in order: take whole clusters while they fit and their
 * score is >= @p thr (-INFINITY in budget mode); the first that passes but
 * does not fit is tail-filled (token score sum_g exp(q_g.k - lse[g])); the
 * rest become estimates while cl_estimate() accepts them.
 * @param tmp  room for max_members items
 */
void cl_pick_fine(const struct clusters *cl, const struct index_keys *keys, const float *q, unsigned G,
		  const float *lse, struct ix_walk *w, float thr, uint64_t *bits, struct ix_item *tmp,
		  struct cl_pick *st, struct index_result *res);

/** Add one estimate; 0 when the share or est_cap is exhausted (the walk should stop). */
int cl_estimate(unsigned d, const float *key, uint32_t count, const float *vsum, struct cl_pick *st,
		struct index_result *res);

/**
 * Bytes of scratch a search needs for its token bitmap, its tail-fill items
 * (max_members), its run bitmap and the tail fill's fetched keys
 * (max_members x d floats), in that order, each ix_align()ed.
 */
size_t cl_scratch_tail(const struct clusters *cl);

/**
 * Search prologue for both policies: keys may be NULL once rows are
 * attached, and may hold fetch_ordered alone. Returns like
 * ix_search_prologue(); for an everything budget it also sets the single run.
 */
int cl_search_prologue(const struct clusters *cl, const struct index_keys *keys, const float *q, unsigned G,
		       uint64_t budget, struct index_result *res);

/** Emit res->runs from the walk's run bitmap (a no-op without runs). */
void cl_runs_finish(const struct clusters *cl, const struct cl_pick *st, struct index_result *res);

/*
 * What both clustered policies do alike, defined for policy POLICY under the
 * prefix NAME: to_cl() (the index as clusters of that policy, else NULL),
 * NAME_build, NAME_free, NAME_save, NAME_load, NAME_memory,
 * NAME_attach_rows, NAME_rows and NAME_row_order. Each policy writes its own search.
 */
#define CLUSTERS_COMMON_OPS(NAME, POLICY)                                                               \
	static const struct clusters *to_cl(const struct index *ix)                                     \
	{                                                                                               \
		return ix && ix->policy == (POLICY) ? (const struct clusters *)ix : NULL;                \
	}                                                                                               \
	static int NAME##_build(const struct index_keys *keys, const struct index_build_params *p,      \
				struct index **out)                                                     \
	{                                                                                               \
		struct clusters *cl;                                                                    \
		int rc = clusters_build(keys, p, (POLICY), &cl);                                        \
		if (!rc)                                                                                \
			*out = &cl->base;                                                               \
		return rc;                                                                              \
	}                                                                                               \
	static void NAME##_free(struct index *ix)                                                       \
	{                                                                                               \
		if (!ix)                                                                                \
			return;                                                                         \
		IX_ASSERT(ix->policy == (POLICY));                                                      \
		clusters_free((struct clusters *)ix);                                                   \
	}                                                                                               \
	static int NAME##_save(const struct index *ix, uint8_t **buf, size_t *len)                      \
	{                                                                                               \
		const struct clusters *cl = to_cl(ix);                                                  \
		return cl && buf && len ? clusters_save(cl, buf, len) : -EINVAL;                        \
	}                                                                                               \
	static int NAME##_load(const uint8_t *buf, size_t len, const struct index_keys *keys,           \
			       struct index **out)                                                      \
	{                                                                                               \
		struct clusters *cl;                                                                    \
		if (!out)                                                                               \
			return -EINVAL;                                                                 \
		int rc = clusters_load(buf, len, keys, (POLICY), &cl);                                  \
		if (!rc)                                                                                \
			*out = &cl->base;                                                               \
		return rc;                                                                              \
	}                                                                                               \
	static size_t NAME##_memory(const struct index *ix)                                             \
	{                                                                                               \
		return clusters_memory(to_cl(ix));                                                      \
	}                                                                                               \
	static int NAME##_attach_rows(struct index *ix, const struct index_rows *src)                   \
	{                                                                                               \
		return to_cl(ix) ? clusters_attach_rows((struct clusters *)ix, src) : -EINVAL;          \
	}                                                                                               \
	static const struct index_rows *NAME##_rows(const struct index *ix)                             \
	{                                                                                               \
		const struct clusters *cl = to_cl(ix);                                                  \
		return cl && cl->rk ? &cl->rows : NULL;                                                 \
	}                                                                                               \
	static const uint32_t *NAME##_row_order(const struct index *ix)                                 \
	{                                                                                               \
		const struct clusters *cl = to_cl(ix);                                                  \
		return cl ? cl->perm : NULL;                                                            \
	}

#endif
