/* The clustered index shared by centroids and centroids2 (clusters.h). */
#include "clusters.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define CL_VERSION 1
#define CL_UNIT 16
#define CL_CHUNK 8192
#define CL_ITERS 6
#define CL_CALIB 100
#define CL_EST_SHARE 0.232f
#define CL_QUANTILE 0.7f
#define CL_COARSE_FACTOR 2.0f
#define CL_COARSE_RATIO 16        /* fine clusters per coarse cluster */
#define CL_MAX_UNIT 65536u
#define CL_MAX_ITERS 1000u
#define CL_MAX_ROW_DIM 1024u    /* attached rows: a row converts on the stack */

/* ---- build ---------------------------------------------------------------- */

/* What clustering one chunk yields; fine clusters already in final order. */
struct chunk_out {
	uint32_t kf, kc;
	float *cent, *vsum;       /* [kf][d] */
	uint32_t *cnt;            /* [kf] members */
	uint32_t *members;        /* [len] token ids grouped by fine cluster */
	float *ccent, *cvsum;     /* [kc][d] */
	uint32_t *ccnt;           /* [kc] fine clusters */
};

struct build_job {
	const struct clusters *cl;
	const float *k, *v;
	uint32_t seed;
	unsigned omp_threads;     /* for a lone chunk: FAISS may use the cores */
	int coarse;
	struct chunk_out *out;
};

static void chunk_out_free(struct chunk_out *o)
{
	free(o->cent);
	free(o->vsum);
	free(o->cnt);
	free(o->members);
	free(o->ccent);
	free(o->cvsum);
	free(o->ccnt);
	memset(o, 0, sizeof(*o));
}

static uint32_t clamp_k(double want, uint32_t max)
{
	uint32_t k = want < 1 ? 1 : want > max ? max : (uint32_t)(want + 0.5);
	return k ? k : 1;
}

/* Cluster @p n rows of @p x into about @p want clusters; labels into @p assign. */
static int cluster_rows(const float *x, size_t n, unsigned d, uint32_t k, unsigned iters, uint32_t seed,
			unsigned threads, uint32_t *assign)
{
	if (k <= 1) {
		memset(assign, 0, n * sizeof(*assign));
		return 0;
	}
	float *c = malloc((size_t)k * d * sizeof(float));
	if (!c)
		return -ENOMEM;
	int rc = ix_kmeans_ip(x, n, d, k, iters, seed, 0, threads, c, assign);
	free(c);
	return rc;
}

static int chunk_job(void *ctx, size_t item, unsigned worker)
{
	struct build_job *j = ctx;
	const struct clusters *cl = j->cl;
	const unsigned d = cl->d;
	const uint64_t t0 = (uint64_t)item * cl->chunk;
	const uint32_t len = (uint32_t)(t0 + cl->chunk < cl->n ? cl->chunk : cl->n - t0);
	const float *k = j->k + t0 * d;
	struct chunk_out *o = &j->out[item];
	float *x = NULL, *mu = NULL, *xc = NULL;
	uint32_t *assign = NULL, *map = NULL, *cnt0 = NULL, *fassign = NULL, *order = NULL, *pos = NULL;
	int rc = -ENOMEM;

	const uint32_t k0 = clamp_k((double)len / cl->unit, len);
	x = malloc((size_t)len * d * sizeof(float));
	mu = calloc(d, sizeof(float));
	assign = malloc((size_t)len * sizeof(uint32_t));
	map = malloc((size_t)k0 * sizeof(uint32_t));
	cnt0 = calloc(k0, sizeof(uint32_t));
	if (!x || !mu || !assign || !map || !cnt0)
		goto out;
	/* mean-centred, L2-normalised keys; spherical k-means with IP assignment */
	for (uint32_t t = 0; t < len; t++)
		for (unsigned i = 0; i < d; i++)
			mu[i] += k[(size_t)t * d + i];
	for (unsigned i = 0; i < d; i++)
		mu[i] /= (float)len;
	ix_centre_normalise(k, len, d, mu, x);
	if ((rc = cluster_rows(x, len, d, k0, cl->iters, j->seed + (uint32_t)item * 7919u, j->omp_threads, assign)))
		goto out;
	/* drop empty clusters */
	for (uint32_t t = 0; t < len; t++)
		cnt0[assign[t]]++;
	uint32_t kf = 0;
	for (uint32_t c = 0; c < k0; c++)
		map[c] = cnt0[c] ? kf++ : UINT32_MAX;
	for (uint32_t t = 0; t < len; t++)
		assign[t] = map[assign[t]];
	rc = -ENOMEM;
	o->kf = kf;
	o->cent = calloc((size_t)kf * d, sizeof(float));
	o->cnt = calloc(kf, sizeof(uint32_t));
	o->members = malloc((size_t)len * sizeof(uint32_t));
	if (!o->cent || !o->cnt || !o->members)
		goto out;
	if (j->v && !(o->vsum = calloc((size_t)kf * d, sizeof(float))))
		goto out;
	for (uint32_t t = 0; t < len; t++) {
		uint32_t c = assign[t];
		o->cnt[c]++;
		for (unsigned i = 0; i < d; i++)
			o->cent[(size_t)c * d + i] += k[(size_t)t * d + i];
		if (o->vsum)
			for (unsigned i = 0; i < d; i++)
				o->vsum[(size_t)c * d + i] += j->v[(t0 + t) * d + i];
	}
	for (uint32_t c = 0; c < kf; c++)
		for (unsigned i = 0; i < d; i++)
			o->cent[(size_t)c * d + i] /= (float)o->cnt[c];

	/* the final order of fine clusters: grouped by coarse cluster */
	order = malloc((size_t)kf * sizeof(uint32_t));   /* order[new] = old */
	pos = malloc((size_t)kf * sizeof(uint32_t));     /* pos[old] = new */
	if (!order || !pos)
		goto out;
	for (uint32_t c = 0; c < kf; c++)
		order[c] = c;
	if (j->coarse) {
		const uint32_t kc0 = clamp_k((double)kf / CL_COARSE_RATIO, kf);
		free(x);
		x = NULL;
		xc = malloc((size_t)kf * d * sizeof(float));
		fassign = malloc((size_t)kf * sizeof(uint32_t));
		uint32_t *ccnt0 = calloc(kc0 + 1, sizeof(uint32_t));
		if (!xc || !fassign || !ccnt0) {
			free(ccnt0);
			goto out;
		}
		ix_centre_normalise(o->cent, kf, d, mu, xc);
		rc = cluster_rows(xc, kf, d, kc0, cl->iters, j->seed + (uint32_t)item * 7919u + 1, j->omp_threads,
				  fassign);
		if (rc) {
			free(ccnt0);
			goto out;
		}
		rc = -ENOMEM;
		/* counting sort of fine clusters by coarse label, empties dropped */
		for (uint32_t c = 0; c < kf; c++)
			ccnt0[fassign[c] + 1]++;
		uint32_t kc = 0;
		for (uint32_t c = 0; c < kc0; c++)
			kc += ccnt0[c + 1] != 0;
		o->kc = kc;
		o->ccnt = malloc((size_t)kc * sizeof(uint32_t));
		o->ccent = calloc((size_t)kc * d, sizeof(float));
		if (!o->ccnt || !o->ccent || (j->v && !(o->cvsum = calloc((size_t)kc * d, sizeof(float))))) {
			free(ccnt0);
			goto out;
		}
		for (uint32_t c = 0, J = 0; c < kc0; c++)
			if (ccnt0[c + 1])
				o->ccnt[J++] = ccnt0[c + 1];
		for (uint32_t c = 1; c <= kc0; c++)
			ccnt0[c] += ccnt0[c - 1];
		for (uint32_t c = 0; c < kf; c++)
			order[ccnt0[fassign[c]]++] = c;
		free(ccnt0);
		/* coarse centroid: the mean of its tokens' raw keys; value sums add up */
		uint32_t f = 0;
		for (uint32_t J = 0; J < kc; J++) {
			uint64_t tok = 0;
			for (uint32_t e = 0; e < o->ccnt[J]; e++, f++) {
				uint32_t c = order[f];
				tok += o->cnt[c];
				for (unsigned i = 0; i < d; i++) {
					o->ccent[(size_t)J * d + i] += o->cent[(size_t)c * d + i] * (float)o->cnt[c];
					if (o->cvsum)
						o->cvsum[(size_t)J * d + i] += o->vsum[(size_t)c * d + i];
				}
			}
			for (unsigned i = 0; i < d; i++)
				o->ccent[(size_t)J * d + i] /= (float)tok;
		}
	}
	for (uint32_t c = 0; c < kf; c++)
		pos[order[c]] = c;
	/* permute fine clusters into the final order */
	{
		float *cent = malloc((size_t)kf * d * sizeof(float));
		float *vsum = o->vsum ? malloc((size_t)kf * d * sizeof(float)) : NULL;
		uint32_t *cnt = malloc((size_t)kf * sizeof(uint32_t));
		if (!cent || !cnt || (o->vsum && !vsum)) {
			free(cent);
			free(vsum);
			free(cnt);
			goto out;
		}
		for (uint32_t c = 0; c < kf; c++) {
			memcpy(cent + (size_t)pos[c] * d, o->cent + (size_t)c * d, d * sizeof(float));
			if (vsum)
				memcpy(vsum + (size_t)pos[c] * d, o->vsum + (size_t)c * d, d * sizeof(float));
			cnt[pos[c]] = o->cnt[c];
		}
		free(o->cent);
		free(o->vsum);
		free(o->cnt);
		o->cent = cent;
		o->vsum = vsum;
		o->cnt = cnt;
	}
	/* members grouped by final cluster, in token order inside a cluster */
	{
		uint32_t *start = calloc((size_t)kf + 1, sizeof(uint32_t));
		if (!start)
			goto out;
		for (uint32_t c = 0; c < kf; c++)
			start[c + 1] = start[c] + o->cnt[c];
		for (uint32_t t = 0; t < len; t++)
			o->members[start[pos[assign[t]]]++] = (uint32_t)(t0 + t);
		free(start);
	}
	rc = 0;
out:
	free(x);
	free(xc);
	free(mu);
	free(assign);
	free(map);
	free(cnt0);
	free(fassign);
	free(order);
	free(pos);
	return rc;
}

static int derive(struct clusters *cl)
{
	cl->lnn = malloc((size_t)cl->nf * sizeof(float));
	if (!cl->lnn)
		return -ENOMEM;
	cl->max_members = 0;
	for (uint32_t j = 0; j < cl->nf; j++) {
		uint32_t c = cl->off[j + 1] - cl->off[j];
		cl->lnn[j] = logf((float)c);
		cl->max_members = c > cl->max_members ? c : cl->max_members;
	}
	if (cl->nc) {
		cl->clnn = malloc((size_t)cl->nc * sizeof(float));
		if (!cl->clnn)
			return -ENOMEM;
		for (uint32_t J = 0; J < cl->nc; J++)
			cl->clnn[J] = logf((float)clusters_coarse_tokens(cl, J));
	}
	return 0;
}

/* ---- threshold calibration ---------------------------------------------- */

#define HIST_BINS 4096
#define HIST_MIN (-80.0)          /* natural log of the smallest statistic told apart */

static void hist_add(double *h, float stat, double w)
{
	double l = stat > 0 ? log(stat) : HIST_MIN;
	long b = (long)((l - HIST_MIN) / -HIST_MIN * HIST_BINS);
	b = b < 0 ? 0 : b >= HIST_BINS ? HIST_BINS - 1 : b;
	h[b] += w;
}

/* The log threshold under which @p quantile of the weight lies. */
static float hist_quantile(const double *h, float quantile)
{
	double total = 0, acc = 0;
	for (int b = 0; b < HIST_BINS; b++)
		total += h[b];
	if (total <= 0)
		return 0;
	for (int b = 0; b < HIST_BINS; b++) {
		acc += h[b];
		if (acc >= quantile * total)
			return (float)(HIST_MIN + (-HIST_MIN) * b / HIST_BINS);
	}
	return 0;
}

static int calibrate(struct clusters *cl, const struct index_build_params *p)
{
	const unsigned G = p->group, d = cl->d;
	if (!p->prefill_q || !p->n_prefill || !G || G > IX_MAX_GROUP)
		return -EINVAL;
	uint64_t T = cl->max_prefill < p->n_prefill ? cl->max_prefill : p->n_prefill;
	const float *pq = p->prefill_q + (p->n_prefill - T) * G * d;
	size_t rows = cl->nf > cl->nc ? cl->nf : cl->nc;
	double *hf = calloc(HIST_BINS, sizeof(double)), *hc = calloc(HIST_BINS, sizeof(double));
	float *S = malloc(rows * G * sizeof(float)), *lw = malloc(rows * sizeof(float));
	uint32_t *ids = malloc(rows * sizeof(uint32_t));
	struct ix_item *it = malloc(rows * sizeof(struct ix_item));
	int rc = -ENOMEM;
	if (!hf || !hc || !S || !lw || !ids || !it)
		goto out;
	if (!cl->nc) {
		for (uint64_t t = 0; t < T; t++) {
			ix_dots(cl->cent, cl->nf, d, pq + t * G * d, G, d, S);
			ix_group_softmax(S, cl->lnn, NULL, cl->nf, G, NULL, IX_DENSITY_MAX, it);
			for (uint32_t j = 0; j < cl->nf; j++)
				hist_add(hf, it[j].score, cl->off[j + 1] - cl->off[j]);
		}
		cl->thr_fine = hist_quantile(hf, cl->quantile);
		rc = 0;
		goto out;
	}
	for (uint64_t t = 0; t < T; t++) {
		ix_dots(cl->ccent, cl->nc, d, pq + t * G * d, G, d, S);
		ix_group_softmax(S, cl->clnn, NULL, cl->nc, G, NULL, IX_DENSITY_MAX, it);
		for (uint32_t J = 0; J < cl->nc; J++)
			hist_add(hc, it[J].score, clusters_coarse_tokens(cl, J));
	}
	cl->thr_coarse = hist_quantile(hc, cl->quantile);
	const float tc = expf(cl->thr_coarse);
	for (uint64_t t = 0; t < T; t++) {
		const float *q = pq + t * G * d;
		ix_dots(cl->ccent, cl->nc, d, q, G, d, S);
		ix_group_softmax(S, cl->clnn, NULL, cl->nc, G, NULL, IX_DENSITY_MAX, it);
		/* the fine clusters of the survivors, normalised among themselves */
		size_t m = 0;
		for (uint32_t J = 0; J < cl->nc; J++) {
			if (it[J].score < tc)
				continue;
			for (uint32_t j = cl->coff[J]; j < cl->coff[J + 1]; j++) {
				lw[m] = cl->lnn[j];
				ids[m++] = j;
			}
		}
		if (!m)
			continue;
		for (size_t i = 0; i < m; i++)
			ix_dots(cl->cent + (size_t)ids[i] * d, 1, 0, q, G, d, S + i * G);
		ix_group_softmax(S, lw, ids, m, G, NULL, IX_DENSITY_MAX, it);
		for (size_t i = 0; i < m; i++)
			hist_add(hf, it[i].score, cl->off[it[i].id + 1] - cl->off[it[i].id]);
	}
	cl->thr_fine = hist_quantile(hf, cl->quantile);
	rc = 0;
out:
	free(hf);
	free(hc);
	free(S);
	free(lw);
	free(ids);
	free(it);
	return rc;
}

/* ---- build, free ------------------------------------------------------------ */

static int config(struct clusters *cl, const struct index_build_params *p)
{
	cl->unit = p && p->unit_tokens ? p->unit_tokens : CL_UNIT;
	cl->chunk = p && p->chunk_tokens ? p->chunk_tokens : CL_CHUNK;
	cl->iters = p && p->iters ? p->iters : CL_ITERS;
	cl->max_prefill = p && p->max_prefill ? p->max_prefill : CL_CALIB;
	cl->select = p ? p->select : INDEX_SELECT_BUDGET;
	cl->est_share = p && p->est_share != 0 ? p->est_share : CL_EST_SHARE;
	cl->quantile = p && p->quantile != 0 ? p->quantile : CL_QUANTILE;
	cl->coarse_factor = p && p->coarse_factor != 0 ? p->coarse_factor : CL_COARSE_FACTOR;
	if (cl->unit > CL_MAX_UNIT || cl->iters > CL_MAX_ITERS ||
	    (cl->select != INDEX_SELECT_BUDGET && cl->select != INDEX_SELECT_THRESHOLD) ||
	    !(cl->est_share <= 1) || !(cl->quantile > 0 && cl->quantile < 1) ||
	    !(cl->coarse_factor >= 1 && cl->coarse_factor <= 1e6f))
		return -EINVAL;
	if (cl->est_share < 0)
		cl->est_share = 0;
	return 0;
}

int clusters_build(const struct index_keys *keys, const struct index_build_params *p, unsigned policy,
		   struct clusters **out)
{
	if (!keys || !keys->k || !keys->n || keys->n > IX_MAX_TOKENS || !keys->d || keys->d > IX_MAX_DIM || !out)
		return -EINVAL;
	struct clusters *cl = calloc(1, sizeof(*cl));
	if (!cl)
		return -ENOMEM;
	cl->base.policy = policy;
	cl->n = keys->n;
	cl->d = keys->d;
	int rc = config(cl, p);
	if (rc)
		goto fail;
	if (cl->select == INDEX_SELECT_THRESHOLD && (!p->prefill_q || !p->n_prefill || !p->group)) {
		rc = -EINVAL;
		goto fail;
	}
	const size_t chunks = (size_t)((cl->n + cl->chunk - 1) / cl->chunk);
	struct chunk_out *co = calloc(chunks, sizeof(*co));
	if (!co) {
		rc = -ENOMEM;
		goto fail;
	}
	struct build_job job = {
		.cl = cl,
		.k = keys->k,
		.v = p ? p->v : NULL,
		.seed = p ? p->seed : 0,
		.omp_threads = chunks == 1 && p ? p->threads : 0,
		.coarse = policy == POLICY_CENTROIDS2,
		.out = co,
	};
	rc = ix_parallel(p ? p->threads : 0, chunks, chunk_job, &job);
	if (rc)
		goto fail_chunks;
	uint64_t nf = 0, nc = 0;
	for (size_t c = 0; c < chunks; c++) {
		nf += co[c].kf;
		nc += co[c].kc;
	}
	const unsigned d = cl->d;
	cl->nf = (uint32_t)nf;
	cl->nc = (uint32_t)nc;
	rc = -ENOMEM;
	cl->cent = malloc(nf * d * sizeof(float));
	cl->off = malloc((nf + 1) * sizeof(uint32_t));
	cl->perm = malloc(cl->n * sizeof(uint32_t));
	if (!cl->cent || !cl->off || !cl->perm || (job.v && !(cl->vsum = malloc(nf * d * sizeof(float)))))
		goto fail_chunks;
	if (nc && (!(cl->ccent = malloc(nc * d * sizeof(float))) || !(cl->coff = malloc((nc + 1) * sizeof(uint32_t))) ||
		   (job.v && !(cl->cvsum = malloc(nc * d * sizeof(float))))))
		goto fail_chunks;
	uint64_t f = 0, J = 0, t = 0;
	cl->off[0] = 0;
	if (nc)
		cl->coff[0] = 0;
	for (size_t c = 0; c < chunks; c++) {
		struct chunk_out *o = &co[c];
		memcpy(cl->cent + f * d, o->cent, (size_t)o->kf * d * sizeof(float));
		if (cl->vsum)
			memcpy(cl->vsum + f * d, o->vsum, (size_t)o->kf * d * sizeof(float));
		uint32_t len = 0;
		for (uint32_t j = 0; j < o->kf; j++) {
			len += o->cnt[j];
			cl->off[f + j + 1] = (uint32_t)(t + len);
		}
		memcpy(cl->perm + t, o->members, (size_t)len * sizeof(uint32_t));
		if (nc) {
			memcpy(cl->ccent + J * d, o->ccent, (size_t)o->kc * d * sizeof(float));
			if (cl->cvsum)
				memcpy(cl->cvsum + J * d, o->cvsum, (size_t)o->kc * d * sizeof(float));
			uint32_t fine = 0;
			for (uint32_t e = 0; e < o->kc; e++) {
				fine += o->ccnt[e];
				cl->coff[J + e + 1] = (uint32_t)(f + fine);
			}
			J += o->kc;
		}
		f += o->kf;
		t += len;
	}
	IX_ASSERT(t == cl->n && f == nf && J == nc);
	if ((rc = derive(cl)))
		goto fail_chunks;
	if (cl->select == INDEX_SELECT_THRESHOLD && (rc = calibrate(cl, p)))
		goto fail_chunks;
	for (size_t c = 0; c < chunks; c++)
		chunk_out_free(&co[c]);
	free(co);
	*out = cl;
	return 0;
fail_chunks:
	for (size_t c = 0; c < chunks; c++)
		chunk_out_free(&co[c]);
	free(co);
fail:
	clusters_free(cl);
	return rc;
}

void clusters_free(struct clusters *cl)
{
	if (!cl)
		return;
	free(cl->cent);
	free(cl->lnn);
	free(cl->vsum);
	free(cl->off);
	free(cl->perm);
	free(cl->ccent);
	free(cl->clnn);
	free(cl->cvsum);
	free(cl->coff);
	free(cl->rk);
	free(cl->rv);
	free(cl);
}

int clusters_attach_rows(struct clusters *cl, const struct index_rows *src)
{
	const size_t es = src ? ix_row_elem(src->dtype) : 0;
	if (!es || !src->k || !src->v || src->stride < es * cl->d || cl->d > CL_MAX_ROW_DIM)
		return -EINVAL;
	const size_t row = es * cl->d;
	uint8_t *rk = malloc(cl->n * row), *rv = malloc(cl->n * row);
	if (!rk || !rv) {
		free(rk);
		free(rv);
		return -ENOMEM;
	}
	for (uint64_t i = 0; i < cl->n; i++) {
		memcpy(rk + i * row, src->k + (size_t)cl->perm[i] * src->stride, row);
		memcpy(rv + i * row, src->v + (size_t)cl->perm[i] * src->stride, row);
	}
	free(cl->rk);
	free(cl->rv);
	cl->rk = rk;
	cl->rv = rv;
	cl->rows = (struct index_rows){ .k = rk, .v = rv, .stride = row, .dtype = src->dtype };
	return 0;
}

size_t clusters_memory(const struct clusters *cl)
{
	if (!cl)
		return 0;
	size_t d = cl->d, m = sizeof(*cl);
	m += (size_t)cl->nf * (d + 1 + 1) * sizeof(float) + (size_t)cl->n * sizeof(uint32_t);
	m += cl->vsum ? (size_t)cl->nf * d * sizeof(float) : 0;
	m += cl->rk ? 2 * cl->n * cl->rows.stride : 0;
	if (cl->nc) {
		m += (size_t)cl->nc * (d + 1 + 1) * sizeof(float) + sizeof(uint32_t);
		m += cl->cvsum ? (size_t)cl->nc * d * sizeof(float) : 0;
	}
	return m + sizeof(uint32_t);
}

/* ---- persistence ---------------------------------------------------------------- */

int clusters_save(const struct clusters *cl, uint8_t **buf, size_t *len)
{
	struct ix_wr w;
	const size_t d = cl->d;
	ix_wr_begin(&w, cl->base.policy, CL_VERSION, 80 + clusters_memory(cl));
	ix_wr_u64(&w, cl->n);
	ix_wr_u32(&w, cl->d);
	ix_wr_u32(&w, cl->nf);
	ix_wr_u32(&w, cl->nc);
	ix_wr_u32(&w, cl->unit);
	ix_wr_u32(&w, cl->chunk);
	ix_wr_u32(&w, cl->iters);
	ix_wr_u32(&w, cl->max_prefill);
	ix_wr_u32(&w, (uint32_t)cl->select);
	ix_wr_u32(&w, cl->vsum != NULL);
	ix_wr_f32(&w, cl->est_share);
	ix_wr_f32(&w, cl->quantile);
	ix_wr_f32(&w, cl->coarse_factor);
	ix_wr_f32(&w, cl->thr_fine);
	ix_wr_f32(&w, cl->thr_coarse);
	ix_wr_f32s(&w, cl->cent, cl->nf * d);
	ix_wr_u32s(&w, cl->off, (size_t)cl->nf + 1);
	ix_wr_u32s(&w, cl->perm, cl->n);
	if (cl->vsum)
		ix_wr_f32s(&w, cl->vsum, cl->nf * d);
	if (cl->nc) {
		ix_wr_f32s(&w, cl->ccent, cl->nc * d);
		ix_wr_u32s(&w, cl->coff, (size_t)cl->nc + 1);
		if (cl->cvsum)
			ix_wr_f32s(&w, cl->cvsum, cl->nc * d);
	}
	return ix_wr_end(&w, buf, len);
}

/* off[0] == 0, strictly increasing, off[count] == last. */
static int check_offsets(const uint32_t *off, uint32_t count, uint64_t last)
{
	if (off[0] != 0 || off[count] != last)
		return -EBADMSG;
	for (uint32_t j = 0; j < count; j++)
		if (off[j + 1] <= off[j])
			return -EBADMSG;
	return 0;
}

/* Every token exactly once. */
static int check_perm(const uint32_t *perm, uint64_t n)
{
	uint64_t *seen = calloc(ix_bits_words(n), sizeof(uint64_t));
	if (!seen)
		return -ENOMEM;
	int rc = 0;
	for (uint64_t i = 0; i < n && !rc; i++) {
		if (ix_bit_get(seen, perm[i]))
			rc = -EBADMSG;
		ix_bit_set(seen, perm[i]);
	}
	free(seen);
	return rc;
}

int clusters_load(const uint8_t *buf, size_t len, const struct index_keys *keys, unsigned policy,
		  struct clusters **out)
{
	struct ix_rd r;
	int rc = ix_rd_begin(&r, buf, len, policy, CL_VERSION);
	if (rc)
		return rc;
	uint64_t n = ix_rd_u64(&r);
	uint32_t d = ix_rd_u32(&r), nf = ix_rd_u32(&r), nc = ix_rd_u32(&r);
	uint32_t unit = ix_rd_u32(&r), chunk = ix_rd_u32(&r), iters = ix_rd_u32(&r), max_prefill = ix_rd_u32(&r);
	uint32_t select = ix_rd_u32(&r), has_v = ix_rd_u32(&r);
	float est_share = ix_rd_f32(&r), quantile = ix_rd_f32(&r), coarse_factor = ix_rd_f32(&r);
	float thr_fine = ix_rd_f32(&r), thr_coarse = ix_rd_f32(&r);
	if (r.err || !n || n > IX_MAX_TOKENS || !d || d > IX_MAX_DIM || !nf || nf > n ||
	    (policy == POLICY_CENTROIDS2 ? !nc || nc > nf : nc != 0) || !unit || unit > CL_MAX_UNIT || !chunk ||
	    !iters || iters > CL_MAX_ITERS || !max_prefill || select > INDEX_SELECT_THRESHOLD || has_v > 1 ||
	    !(est_share >= 0 && est_share <= 1) || !(quantile > 0 && quantile < 1) ||
	    !(coarse_factor >= 1 && coarse_factor <= 1e6f) || thr_fine > 0 || thr_coarse > 0 ||
	    thr_fine < HIST_MIN || thr_coarse < HIST_MIN)
		return -EBADMSG;
	if (keys && (keys->n != n || keys->d != d))
		return -EINVAL;
	struct clusters *cl = calloc(1, sizeof(*cl));
	if (!cl)
		return -ENOMEM;
	*cl = (struct clusters){
		.base.policy = policy, .n = n, .d = d, .nf = nf, .nc = nc,
		.unit = unit, .chunk = chunk, .iters = iters, .max_prefill = max_prefill,
		.select = (enum index_select)select, .est_share = est_share, .quantile = quantile,
		.coarse_factor = coarse_factor, .thr_fine = thr_fine, .thr_coarse = thr_coarse,
	};
	if ((rc = ix_rd_f32s(&r, (size_t)nf * d, &cl->cent)) ||
	    (rc = ix_rd_u32s(&r, (size_t)nf + 1, n + 1, &cl->off)) ||
	    (rc = ix_rd_u32s(&r, n, n, &cl->perm)) ||
	    (has_v && (rc = ix_rd_f32s(&r, (size_t)nf * d, &cl->vsum))))
		goto fail;
	if (nc && ((rc = ix_rd_f32s(&r, (size_t)nc * d, &cl->ccent)) ||
		   (rc = ix_rd_u32s(&r, (size_t)nc + 1, (uint64_t)nf + 1, &cl->coff)) ||
		   (has_v && (rc = ix_rd_f32s(&r, (size_t)nc * d, &cl->cvsum)))))
		goto fail;
	if ((rc = ix_rd_end(&r)) || (rc = check_offsets(cl->off, nf, n)) || (rc = check_perm(cl->perm, n)) ||
	    (nc && (rc = check_offsets(cl->coff, nc, nf))) || (rc = derive(cl)))
		goto fail;
	*out = cl;
	return 0;
fail:
	clusters_free(cl);
	return rc;
}

/* ---- search helpers ---------------------------------------------------------------- */

int cl_search_prologue(const struct clusters *cl, const struct index_keys *keys, const float *q, unsigned G,
		       uint64_t budget, struct index_result *res)
{
	const int need_keys = !cl->rk && !(keys && !keys->k && keys->fetch_ordered);
	int rc = ix_search_prologue(cl->n, cl->d, keys, need_keys, q, G, budget, res);
	if (rc == 1 && res->n_tokens == cl->n && res->runs && res->runs_cap) {
		res->runs[0] = 0;
		res->runs[1] = (uint32_t)cl->n;
		res->n_runs = 1;
	}
	return rc;
}

/* Member positions [first, first + count) picked: marked in the run bitmap. */
static void run_add(struct cl_pick *st, uint32_t first, uint32_t count)
{
	if (!st->mbits)
		return;
	uint64_t i = first, e = (uint64_t)first + count;
	for (; i < e && (i & 63); i++)
		ix_bit_set(st->mbits, i);
	for (; i + 64 <= e; i += 64)
		st->mbits[i / 64] = ~0ull;
	for (; i < e; i++)
		ix_bit_set(st->mbits, i);
}

void cl_runs_finish(const struct clusters *cl, const struct cl_pick *st, struct index_result *res)
{
	if (!st->mbits)
		return;
	/* maximal runs of set bits, in position order */
	const size_t words = ix_bits_words(cl->n);
	uint64_t n = 0, start = 0;
	int open = 0;
	for (size_t w = 0; w < words; w++) {
		uint64_t x = st->mbits[w];
		if (!open && !x)
			continue;
		if (open && x == ~0ull)
			continue;
		for (unsigned b = 0; b < 64; b++) {
			int on = (x >> b) & 1;
			if (on && !open) {
				start = (uint64_t)w * 64 + b;
				open = 1;
			} else if (!on && open) {
				if (n < res->runs_cap) {
					res->runs[2 * n] = (uint32_t)start;
					res->runs[2 * n + 1] = (uint32_t)((uint64_t)w * 64 + b - start);
				}
				n++;
				open = 0;
			}
		}
	}
	if (open) {
		if (n < res->runs_cap) {
			res->runs[2 * n] = (uint32_t)start;
			res->runs[2 * n + 1] = (uint32_t)(cl->n - start);
		}
		n++;
	}
	res->n_runs = n <= res->runs_cap ? n : 0;
}

/*
 * The best @p take members of fine cluster @p j by summed softmax score
 * (sum_g exp(q_g.k - lse[g])), scored from the fp32 keys or, without them,
 * the attached rows or the keys fetch_ordered gives. Returns the members
 * scored (0 with st->err set when the fetch failed).
 */
static uint64_t cl_tail_fill(const struct clusters *cl, const struct index_keys *keys, const float *q,
			     unsigned G, const float *lse, uint32_t j, uint64_t take, uint64_t *bits,
			     struct ix_item *tmp, struct cl_pick *st)
{
	const uint32_t f = cl->off[j], cnt = cl->off[j + 1] - f;
	const unsigned d = cl->d;
	float s[IX_MAX_GROUP], row[CL_MAX_ROW_DIM];
	const int fetched = !(keys && keys->k) && !cl->rk;
	if (fetched) {
		/* the cluster's members are consecutive in the row order: one fetch */
		int rc = keys && keys->fetch_ordered ? keys->fetch_ordered(keys->fetch_ctx, f, cnt, st->rowbuf) : -EINVAL;
		if (rc) {
			st->err = rc;
			return 0;
		}
	}
	for (uint32_t i = 0; i < cnt; i++) {
		const uint32_t tok = cl->perm[f + i];
		if (keys && keys->k) {
			ix_dots(keys->k + (size_t)tok * d, 1, 0, q, G, d, s);
		} else if (fetched) {
			ix_dots(st->rowbuf + (size_t)i * d, 1, 0, q, G, d, s);
		} else {
			ix_row_f32(cl->rows.k + (size_t)(f + i) * cl->rows.stride, cl->rows.dtype, d, row);
			ix_dots(row, 1, 0, q, G, d, s);
		}
		float acc = 0;
		for (unsigned g = 0; g < G; g++)
			acc += expf(s[g] - lse[g]);
		tmp[i].score = isnan(acc) ? -INFINITY : acc;
		tmp[i].id = i;
	}
	if (take > cnt)
		take = cnt;
	ix_top(tmp, cnt, take);
	for (uint64_t i = 0; i < take; i++) {
		ix_bit_set(bits, cl->perm[f + tmp[i].id]);
		run_add(st, f + tmp[i].id, 1);
	}
	return cnt;
}

size_t cl_scratch_tail(const struct clusters *cl)
{
	return 2 * ix_align(ix_bits_words(cl->n) * sizeof(uint64_t)) +
	       ix_align((size_t)cl->max_members * sizeof(struct ix_item)) +
	       ix_align((size_t)cl->max_members * cl->d * sizeof(float));
}

void cl_pick_init(const struct clusters *cl, uint64_t budget, const struct index_result *res, struct cl_pick *st,
		  uint64_t *mbits)
{
	st->mbits = NULL;
	st->rowbuf = (float *)((uint8_t *)mbits + ix_align(ix_bits_words(cl->n) * sizeof(uint64_t)));
	st->err = 0;
	if (res->runs && res->runs_cap) {
		st->mbits = mbits;
		memset(mbits, 0, ix_bits_words(cl->n) * sizeof(uint64_t));
	}
	st->left = budget;
	st->scanned = 0;
	st->taking = 1;
	st->est_on = cl->vsum && res->est_cap && res->est_key && res->est_count && res->est_vsum &&
		     cl->est_share > 0;
	st->est_tokens = 0;
	st->est_max = (uint64_t)((double)cl->est_share * (double)cl->n);
}

int cl_estimate(unsigned d, const float *key, uint32_t count, const float *vsum, struct cl_pick *st,
		struct index_result *res)
{
	if (!st->est_on || res->n_est >= res->est_cap || st->est_tokens + count > st->est_max) {
		st->est_on = 0;
		return 0;
	}
	memcpy(res->est_key + (size_t)res->n_est * d, key, d * sizeof(float));
	memcpy(res->est_vsum + (size_t)res->n_est * d, vsum, d * sizeof(float));
	res->est_count[res->n_est++] = (float)count;
	st->est_tokens += count;
	return 1;
}

void cl_pick_fine(const struct clusters *cl, const struct index_keys *keys, const float *q, unsigned G,
		  const float *lse, struct ix_walk *w, float thr, uint64_t *bits, struct ix_item *tmp,
		  struct cl_pick *st, struct index_result *res)
{
	const struct ix_item *it;
	const unsigned d = cl->d;
	/*
	 * Budget mode: the walk would take the best clusters in order while
	 * they fit. When the best k together fit, it takes all of them before
	 * anything else matters, so they are taken without sorting them and
	 * only the rest is walked in order. k is a little under the clusters
	 * the budget holds on average.
	 */
	if (thr == -INFINITY && st->taking && w->pos == 0 && w->ready == 0) {
		size_t k = (size_t)(0.8 * (double)st->left * (double)cl->nf / (double)cl->n);
		k = k < w->n ? k : w->n;
		if (k > 64) {
			ix_select(w->a, w->n, k);
			uint64_t sum = 0;
			for (size_t i = 0; i < k; i++)
				sum += cl->off[w->a[i].id + 1] - cl->off[w->a[i].id];
			if (sum <= st->left) {
				for (size_t i = 0; i < k; i++) {
					const uint32_t j = w->a[i].id, cnt = cl->off[j + 1] - cl->off[j];
					const uint32_t *mem = cl->perm + cl->off[j];
					for (uint32_t x = 0; x < cnt; x++)
						ix_bit_set(bits, mem[x]);
					run_add(st, cl->off[j], cnt);
				}
				st->left -= sum;
				w->a += k;
				w->n -= k;
				if (!st->left)
					st->taking = 0;
			}
		}
	}
	while (st->taking && (it = ix_walk_next(w))) {
		const uint32_t j = it->id, cnt = cl->off[j + 1] - cl->off[j];
		const uint32_t *mem = cl->perm + cl->off[j];
		if (!(it->score >= thr)) {
			st->taking = 0;
			/* below the threshold: the first estimate */
			if (!cl_estimate(d, cl->cent + (size_t)j * d, cnt, cl->vsum ? cl->vsum + (size_t)j * d : NULL, st,
					 res))
				return;
			break;
		}
		if (cnt <= st->left) {
			for (uint32_t i = 0; i < cnt; i++)
				ix_bit_set(bits, mem[i]);
			run_add(st, cl->off[j], cnt);
			st->left -= cnt;
			if (!st->left)
				st->taking = 0;
			continue;
		}
		st->scanned += cl_tail_fill(cl, keys, q, G, lse, j, st->left, bits, tmp, st);
		st->left = 0;
		st->taking = 0;
	}
	while (st->est_on && (it = ix_walk_next(w))) {
		const uint32_t j = it->id;
		if (!cl_estimate(d, cl->cent + (size_t)j * d, cl->off[j + 1] - cl->off[j], cl->vsum + (size_t)j * d, st,
				 res))
			return;
	}
}
