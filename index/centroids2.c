/*
 * centroids2: coarse clusters over the fine clusters of centroids (Squeezed
 * Attention's hierarchy). A search scores every coarse centroid and only
 * the fine centroids inside the coarse clusters that survive; see policy.h
 * for the scoring and what scanned counts.
 *
 * Glossary
 *   survivor  a coarse cluster whose fine clusters are scored
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "clusters.h"

CLUSTERS_COMMON_OPS(centroids2, POLICY_CENTROIDS2)

#define MIN_SURVIVORS 4

static int centroids2_search(const struct index *ix, const struct index_keys *keys, const float *q, unsigned G,
			     uint64_t budget, struct index_result *res)
{
	const struct clusters *cl = to_cl(ix);
	if (!cl)
		return -EINVAL;
	int rc = cl_search_prologue(cl, keys, q, G, budget, res);
	if (rc)
		return rc < 0 ? rc : 0;
	const uint32_t nf = cl->nf, nc = cl->nc;
	const unsigned d = cl->d;
	size_t off_sc = 0;
	size_t off_itc = off_sc + ix_align((size_t)nc * G * sizeof(float));
	size_t off_sf = off_itc + ix_align((size_t)nc * sizeof(struct ix_item));
	size_t off_lw = off_sf + ix_align((size_t)nf * G * sizeof(float));
	size_t off_ids = off_lw + ix_align((size_t)nf * sizeof(float));
	size_t off_itf = off_ids + ix_align((size_t)nf * sizeof(uint32_t));
	size_t off_bits = off_itf + ix_align((size_t)nf * sizeof(struct ix_item));
	size_t off_tmp = off_bits + ix_align(ix_bits_words(cl->n) * sizeof(uint64_t));
	size_t off_mbits = off_tmp + ix_align((size_t)cl->max_members * sizeof(struct ix_item));
	uint8_t *sc = ix_scratch(off_bits + cl_scratch_tail(cl));
	if (!sc)
		return -ENOMEM;
	float *Sc = (float *)(sc + off_sc), *Sf = (float *)(sc + off_sf), *lw = (float *)(sc + off_lw);
	uint32_t *ids = (uint32_t *)(sc + off_ids);
	struct ix_item *itc = (struct ix_item *)(sc + off_itc), *itf = (struct ix_item *)(sc + off_itf);
	struct ix_item *tmp = (struct ix_item *)(sc + off_tmp);
	uint64_t *bits = (uint64_t *)(sc + off_bits);
	const int thr_mode = cl->select == INDEX_SELECT_THRESHOLD;

	/* coarse: every centroid */
	ix_dots(cl->ccent, nc, d, q, G, d, Sc);
	ix_group_softmax(Sc, cl->clnn, NULL, nc, G, NULL, thr_mode ? IX_DENSITY_MAX : IX_DENSITY, itc);
	struct cl_pick st;
	cl_pick_init(cl, budget, res, &st, (uint64_t *)(sc + off_mbits));
	const double cover = (double)cl->coarse_factor * (double)budget;
	const float tc = thr_mode ? expf(cl->thr_coarse) : -INFINITY;
	struct ix_walk wc;
	ix_walk_init(&wc, itc, nc, (size_t)(cover * nc / (double)cl->n) + MIN_SURVIVORS);
	/*
	 * survivors: in order while they pass and hold less than cover tokens,
	 * and at least MIN_SURVIVORS of them: coarse scores rank roughly, and
	 * a small budget must not hang on one or two coarse clusters
	 */
	size_t m = 0, kept = 0;
	double held = 0;
	const struct ix_item *c;
	while ((held < cover || kept < MIN_SURVIVORS) && (c = ix_walk_next(&wc))) {
		if (!(c->score >= tc)) {
			wc.pos--; /* not a survivor: the first coarse estimate */
			break;
		}
		const uint32_t J = c->id, f0 = cl->coff[J], f1 = cl->coff[J + 1];
		/* survivors lie apart: start the next one's centroids while this one is scored */
		if (wc.pos < wc.ready) {
			const uint32_t Jn = wc.a[wc.pos].id;
			const char *p = (const char *)(cl->cent + (size_t)cl->coff[Jn] * d);
			const size_t len = (size_t)(cl->coff[Jn + 1] - cl->coff[Jn]) * d * sizeof(float);
			for (size_t o = 0; o < len; o += 64)
				__builtin_prefetch(p + o);
		}
		ix_dots(cl->cent + (size_t)f0 * d, f1 - f0, d, q, G, d, Sf + m * G);
		for (uint32_t j = f0; j < f1; j++) {
			lw[m] = cl->lnn[j];
			ids[m++] = j;
		}
		held += clusters_coarse_tokens(cl, J);
		kept++;
	}
	/* fine: inside the survivors only, normalised among themselves */
	float lse[IX_MAX_GROUP];
	ix_group_softmax(Sf, lw, ids, m, G, lse, thr_mode ? IX_DENSITY_MAX : IX_DENSITY, itf);
	for (unsigned g = 0; g < G; g++)
		if (!isfinite(lse[g]))
			lse[g] = 0;
	memset(bits, 0, ix_bits_words(cl->n) * sizeof(uint64_t));
	size_t first = (size_t)((double)budget * nf / (double)cl->n) + 16 + (st.est_on ? res->est_cap : 0);
	struct ix_walk wf;
	ix_walk_init(&wf, itf, m, thr_mode ? first : 0);
	cl_pick_fine(cl, keys, q, G, lse, &wf, thr_mode ? expf(cl->thr_fine) : -INFINITY, bits, tmp, &st, res);
	/* then the coarse clusters after the survivors, as coarse pseudo-keys */
	while (st.est_on && (c = ix_walk_next(&wc)))
		if (!cl_estimate(d, cl->ccent + (size_t)c->id * d, clusters_coarse_tokens(cl, c->id),
				 cl->cvsum + (size_t)c->id * d, &st, res))
			break;
	res->scanned = nc + m + st.scanned;
	res->n_tokens = ix_bits_emit(bits, cl->n, res->tokens);
	if (st.err)
		return st.err;
	cl_runs_finish(cl, &st, res);
	return 0;
}

const struct policy_ops centroids2_policy_ops = {
	.version = POLICY_OPS_VERSION,
	.name = "centroids2",
	.build = centroids2_build,
	.search = centroids2_search,
	.free = centroids2_free,
	.save = centroids2_save,
	.load = centroids2_load,
	.memory = centroids2_memory,
	.attach_rows = centroids2_attach_rows,
	.rows = centroids2_rows,
	.row_order = centroids2_row_order,
};
