/*
 * Representative keys of runs of consecutive tokens: what blocks (InfLLM,
 * fixed runs) and episodic (EM-LLM, events) rank their units by. Internal
 * to index/.
 *
 * Glossary
 *   unit      a run [start[u], start[u+1]) of the segment's tokens
 *   received  the attention a key got from prefill queries: the sum over
 *             the last rows query rows of softmax over the whole segment
 *   medoids   without queries: seeds by a farthest-point traversal of the
 *             unit's keys (from the key farthest from its mean), REPS_LLOYD
 *             rounds of k-means inside the unit, then per group the key
 *             nearest its mean
 */
#ifndef MNEMO_INDEX_REPS_H
#define MNEMO_INDEX_REPS_H

#include <stdint.h>

#define REPS_MAX 4u
#define REPS_LLOYD 4

struct reps_in {
	const float *k;           /* [n][d] the segment's keys */
	uint64_t n;
	unsigned d;
	/* units: start[u] for u <= n_units (start[n_units] == n); NULL: fixed runs of @c block */
	const uint32_t *start;
	unsigned block;
	uint64_t n_units;
	unsigned reps;            /* per unit, <= REPS_MAX; a shorter unit repeats its last pick */
	const float *pq;          /* optional [rows][d] query rows (received attention); NULL: medoids */
	unsigned rows;
	unsigned threads;
};

/**
 * Fill @p rep [n_units][reps][d].
 * @return 0, -EINVAL, -ENOMEM
 */
int ix_reps(const struct reps_in *in, float *rep);

#endif
