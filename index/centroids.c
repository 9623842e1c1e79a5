/*
 * centroids: one level of clusters per chunk (RetroInfer's layout, with
 * Squeezed Attention's threshold as the other selection mode). Building,
 * persistence and the cluster walk live in clusters.c; see policy.h for the
 * scoring and what scanned counts.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "clusters.h"

CLUSTERS_COMMON_OPS(centroids, POLICY_CENTROIDS)

static int centroids_search(const struct index *ix, const struct index_keys *keys, const float *q, unsigned G,
			    uint64_t budget, struct index_result *res)
{
	const struct clusters *cl = to_cl(ix);
	if (!cl)
		return -EINVAL;
	int rc = cl_search_prologue(cl, keys, q, G, budget, res);
	if (rc)
		return rc < 0 ? rc : 0;
	const uint32_t nf = cl->nf;
	size_t off_s = 0;
	size_t off_it = off_s + ix_align((size_t)nf * G * sizeof(float));
	size_t off_bits = off_it + ix_align((size_t)nf * sizeof(struct ix_item));
	size_t off_tmp = off_bits + ix_align(ix_bits_words(cl->n) * sizeof(uint64_t));
	size_t off_mbits = off_tmp + ix_align((size_t)cl->max_members * sizeof(struct ix_item));
	uint8_t *sc = ix_scratch(off_bits + cl_scratch_tail(cl));
	if (!sc)
		return -ENOMEM;
	float *S = (float *)(sc + off_s);
	struct ix_item *it = (struct ix_item *)(sc + off_it), *tmp = (struct ix_item *)(sc + off_tmp);
	uint64_t *bits = (uint64_t *)(sc + off_bits);

	const int thr_mode = cl->select == INDEX_SELECT_THRESHOLD;
	float lse[IX_MAX_GROUP];
	ix_dots(cl->cent, nf, cl->d, q, G, cl->d, S);
	ix_group_softmax(S, cl->lnn, NULL, nf, G, lse, thr_mode ? IX_DENSITY_MAX : IX_DENSITY, it);
	for (unsigned g = 0; g < G; g++)
		if (!isfinite(lse[g]))
			lse[g] = 0;
	memset(bits, 0, ix_bits_words(cl->n) * sizeof(uint64_t));
	struct cl_pick st;
	cl_pick_init(cl, budget, res, &st, (uint64_t *)(sc + off_mbits));
	/* clusters expected for the budget, and the estimates after them */
	size_t first = (size_t)((double)budget * nf / (double)cl->n) + 16 + (st.est_on ? res->est_cap : 0);
	struct ix_walk w;
	ix_walk_init(&w, it, nf, thr_mode ? first : 0);
	cl_pick_fine(cl, keys, q, G, lse, &w, thr_mode ? expf(cl->thr_fine) : -INFINITY, bits, tmp, &st, res);
	res->scanned = nf + st.scanned;
	res->n_tokens = ix_bits_emit(bits, cl->n, res->tokens);
	if (st.err)
		return st.err;
	cl_runs_finish(cl, &st, res);
	return 0;
}

const struct policy_ops centroids_policy_ops = {
	.version = POLICY_OPS_VERSION,
	.name = "centroids",
	.build = centroids_build,
	.search = centroids_search,
	.free = centroids_free,
	.save = centroids_save,
	.load = centroids_load,
	.memory = centroids_memory,
	.attach_rows = centroids_attach_rows,
	.rows = centroids_rows,
	.row_order = centroids_row_order,
};
