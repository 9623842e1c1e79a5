/*
 * The request path of ATTEND: split the work by KV head and token range,
 * run the CPU kernels over the stored blocks, merge the partials.
 *
 * Parallelism comes from the caller through struct attend_exec, so this
 * module runs the same under the daemon's worker pool, a benchmark's threads
 * or a single-threaded test.
 */
#ifndef MNEMO_RETRIEVAL_ATTEND_H
#define MNEMO_RETRIEVAL_ATTEND_H

#include <stdint.h>

#include "kernels.h"
#include "store.h"

/** Runs fn(arg, i) for i in [0, n), possibly in parallel, and returns when all are done. */
struct attend_exec {
	void (*parallel)(void *pool, unsigned n, void (*fn)(void *arg, unsigned i), void *arg);
	void *pool;
	unsigned workers;          /* how many run at once: sets the split */
};

/** Runs the work inline, one item after another. */
extern const struct attend_exec attend_exec_serial;

struct attend_request {
	uint32_t layer;
	uint64_t token_begin;
	uint64_t token_end;        /* exclusive; UINT64_MAX: the layer's end */
	const float *q;            /* [n_q_heads][head_dim], not scaled */
	/* policies only: the range's first sinks and last window tokens are
	 * attended exactly whatever the index picks (exact attends all anyway) */
	uint32_t sinks, window;
};

struct attend_result {
	float *o;                  /* [n_q_heads][head_dim], caller's memory */
	float *lse;                /* [n_q_heads] */
	uint64_t scanned;          /* keys scored, summed over KV heads */
	uint64_t loaded;           /* values read, summed over KV heads */
	uint64_t err_block;        /* on -EBADMSG: the block that failed its check */
	uint32_t err_head;
};

/**
 * Exact partial attention of every query head over the token range.
 * @return 0, -EINVAL (layer), -ERANGE (range past the layer's length),
 *         -ENOMEM, -EBADMSG (a block failed its checksum: err_block and
 *         err_head name it), -EIO
 */
int attend_exact(struct kv_ctx *c, const struct attend_request *req,
		 struct attend_result *res, const struct attend_exec *ex);

/**
 * ATTEND with retrieval policy @p policy (enum index_policy, not exact):
 * per KV head the policy's index picks at most @p budget tokens (0: 2% of
 * the indexed tokens) for the group's queries; attention is exact over
 * them, over tokens appended after the index was built, and adds the
 * policy's estimated clusters when the range is the whole index. The
 * index is loaded from the context's side files or built on first use,
 * saved there, and kept with the context.
 * @return attend_exact()'s errors, and -EINVAL for an unknown policy
 */
int attend_policy(struct kv_ctx *c, uint32_t policy, uint64_t budget, const struct attend_request *req,
		  struct attend_result *res, const struct attend_exec *ex);

/**
 * QUERIES: keep the prefill queries @p q [n_q_heads][n_pos][head_dim]
 * (unscaled) of @p layer for the indexes built from queries (ann): an even
 * subsample of every position sent, at most 4096 / G per layer (see
 * qstore.h), saved with the context's side files when it has them.
 * @param first       the positions sent before (a resent piece is refused)
 * @param kept, seen  receive the positions kept and sent so far
 * @return 0, -EINVAL (layer, n_pos 0), -ERANGE (@p first is not *seen),
 *         -ENOMEM, a side file's write error
 *         (the positions are then kept in RAM but not durable)
 */
int attend_policy_queries(struct kv_ctx *c, uint32_t layer, uint64_t first, uint32_t n_pos, const float *q,
			  uint64_t *kept, uint64_t *seen);

/** What episodic's events of a layer came from (STAT; PROTO_SEG_* on the wire). */
enum attend_segmentation {
	ATTEND_SEG_NONE = 0,       /* no episodic index built or loaded yet */
	ATTEND_SEG_SURPRISE = 1,   /* the context's SURPRISE covered the layer's tokens */
	ATTEND_SEG_NOVELTY = 2,    /* key novelty stood in (events.h) */
};

/** Daemon-wide tuning of the policies. */
struct attend_policy_config {
	float gamma;               /* episodic's boundary rule, > 0 (0: 1.0, EM-LLM's) */
	int no_estimates;          /* centroids*: attend the picked tokens alone, no estimated
				    * clusters (the lse is then a mass recall) */
	float quest_rerank;        /* quest indexes built from now on: index_build_params.rerank */
	float quest_cohere;        /* quest searches with codes: index_result.cohere, in [0, 1) */
};

/** Set it before the first request. @return 0 or -EINVAL (gamma < 0 or not finite, quest_rerank outside 0 or (1, 1024], quest_cohere outside [0, 1)). */
int attend_policy_configure(const struct attend_policy_config *cfg);

/**
 * SURPRISE: feed @p n tokens' surprise, from token @p first, to the
 * context's online boundary rule (events.h) and save its state and the
 * event starts as the side file "surprise.seg". A layer's episodic index
 * segments by them when they cover the layer's tokens.
 * @param seen, events  after the call: tokens fed, events started
 * @return 0, -EINVAL (n 0, a non-finite value: nothing is fed), -ERANGE
 *         (@p first is not the tokens fed so far), -ENOMEM, a side file's
 *         write error (the state is then kept in RAM but not durable)
 */
int attend_policy_surprise(struct kv_ctx *c, uint64_t first, uint32_t n, const float *surprise, uint64_t *seen,
			   uint64_t *events);

/** STAT's view: tokens fed SURPRISE, events started, enum attend_segmentation of the last episodic build. */
void attend_policy_segmentation(struct kv_ctx *c, uint64_t *seen, uint64_t *events, uint32_t *source);

/** Where ensure-an-index found it. */
enum index_source {
	INDEX_PRESENT = 0,         /* already in memory */
	INDEX_LOADED = 1,          /* from the context's side files */
	INDEX_BUILT = 2,
};

/**
 * Make the indexes of @p policy for every KV head of @p layer ready ahead
 * of the ATTENDs that need them (offline preloading), heads in parallel.
 * @param counts  incremented at [enum index_source] per head
 * @return 0, -EINVAL (policy, layer), -ENODATA (an empty layer), -ENOMEM,
 *         -EBADMSG (a block failed its check), -EIO
 */
int attend_policy_prepare(struct kv_ctx *c, uint32_t policy, uint32_t layer, const struct attend_exec *ex,
			  uint64_t counts[3]);

/**
 * Indexes built and indexes loaded from side files since the process
 * started, and the RAM the indexes in memory hold now (with the row copies
 * and fp32 keys they keep).
 */
void attend_policy_counts(uint64_t *builds, uint64_t *loads, uint64_t *bytes);

/** Where policy ATTENDs spent their time since the process started, in ns. */
struct attend_policy_times {
	uint64_t attends;   /**< policy ATTENDs that ran both passes */
	uint64_t pick_ns;   /**< wall time of pass 1 (index loads, searches, reads queued) */
	uint64_t search_ns; /**< the searches themselves, summed over the heads */
	uint64_t fold_ns;   /**< wall time of pass 2 (blocks pinned and attended) */
	uint64_t pin_ns;    /**< pinning blocks in pass 2 (SSD reads waited on), summed over the heads */
};

void attend_policy_times(struct attend_policy_times *out);

#endif
