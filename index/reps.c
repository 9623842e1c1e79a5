/* Representative keys of runs of consecutive tokens (reps.h). */
#include "reps.h"
#include "ix.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REPS_LSE_CHUNK 4096
#define REPS_MAX_ROWS 65536u

struct reps_job {
	const struct reps_in *in;
	float *rep;
	float *part;              /* [jobs][rows][2]: running max and sum of pass 1 */
	float *lse;               /* [rows] */
};

/* Pass 1: per query row, the log-sum-exp over a chunk of keys. */
static int lse_job(void *ctx, size_t item, unsigned worker)
{
	(void)worker;
	struct reps_job *j = ctx;
	const struct reps_in *in = j->in;
	uint64_t t0 = (uint64_t)item * REPS_LSE_CHUNK, t1 = t0 + REPS_LSE_CHUNK < in->n ? t0 + REPS_LSE_CHUNK : in->n;
	float *s = ix_scratch((size_t)in->rows * sizeof(float));
	if (!s)
		return -ENOMEM;
	float *part = j->part + (size_t)item * in->rows * 2;
	for (unsigned r = 0; r < in->rows; r++) {
		part[2 * r] = -INFINITY;
		part[2 * r + 1] = 0;
	}
	for (uint64_t t = t0; t < t1; t++) {
		ix_dots(in->k + t * in->d, 1, 0, in->pq, in->rows, in->d, s);
		for (unsigned r = 0; r < in->rows; r++) {
			float m = part[2 * r];
			if (s[r] > m) {
				part[2 * r + 1] = part[2 * r + 1] * expf(m - s[r]) + 1;
				part[2 * r] = s[r];
			} else if (s[r] > -INFINITY) {
				part[2 * r + 1] += expf(s[r] - m);
			}
		}
	}
	return 0;
}

/* The index of the largest of w[0..n) not yet taken. */
static unsigned argmax_untaken(const float *w, unsigned n, const unsigned char *taken)
{
	unsigned best = 0;
	float bw = -INFINITY;
	int found = 0;
	for (unsigned i = 0; i < n; i++)
		if (!taken[i] && (!found || w[i] > bw)) {
			bw = w[i];
			best = i;
			found = 1;
		}
	return best;
}

static float dist2(const float *a, const float *b, unsigned d)
{
	float s = 0;
	for (unsigned i = 0; i < d; i++) {
		float x = a[i] - b[i];
		s += x * x;
	}
	return s;
}

static void medoids(const float *k, unsigned len, unsigned d, unsigned n_pick, float *w, unsigned char *taken,
		    float *cm, uint32_t *grp, unsigned *pick)
{
	float *mean = cm; /* cm's first row is free until the seeds are chosen */
	for (unsigned i = 0; i < d; i++)
		mean[i] = 0;
	for (unsigned t = 0; t < len; t++)
		for (unsigned i = 0; i < d; i++)
			mean[i] += k[(size_t)t * d + i];
	for (unsigned i = 0; i < d; i++)
		mean[i] /= (float)len;
	for (unsigned t = 0; t < len; t++)
		w[t] = dist2(k + (size_t)t * d, mean, d);
	for (unsigned r = 0; r < n_pick; r++) {
		pick[r] = argmax_untaken(w, len, taken);
		taken[pick[r]] = 1;
		const float *from = k + (size_t)pick[r] * d;
		for (unsigned t = 0; t < len; t++) {
			float x = dist2(k + (size_t)t * d, from, d);
			w[t] = r == 0 || x < w[t] ? x : w[t];
		}
	}
	for (unsigned r = 0; r < n_pick; r++)
		memcpy(cm + (size_t)r * d, k + (size_t)pick[r] * d, d * sizeof(float));
	for (unsigned round = 0; round < REPS_LLOYD; round++) {
		unsigned cnt[REPS_MAX] = { 0 };
		for (unsigned t = 0; t < len; t++) {
			float bd = INFINITY;
			grp[t] = 0;
			for (unsigned r = 0; r < n_pick; r++) {
				float x = dist2(k + (size_t)t * d, cm + (size_t)r * d, d);
				if (x < bd) {
					bd = x;
					grp[t] = r;
				}
			}
		}
		for (unsigned r = 0; r < n_pick; r++)
			memset(cm + (size_t)r * d, 0, d * sizeof(float));
		for (unsigned t = 0; t < len; t++) {
			cnt[grp[t]]++;
			for (unsigned i = 0; i < d; i++)
				cm[(size_t)grp[t] * d + i] += k[(size_t)t * d + i];
		}
		for (unsigned r = 0; r < n_pick; r++)
			for (unsigned i = 0; i < d; i++)
				cm[(size_t)r * d + i] = cnt[r] ? cm[(size_t)r * d + i] / (float)cnt[r]
							       : k[(size_t)pick[r] * d + i];
	}
	for (unsigned r = 0; r < n_pick; r++) {
		float bd = INFINITY;
		for (unsigned t = 0; t < len; t++) {
			float x = dist2(k + (size_t)t * d, cm + (size_t)r * d, d);
			if (x < bd) {
				bd = x;
				pick[r] = t;
			}
		}
	}
}

static int rep_job(void *ctx, size_t item, unsigned worker)
{
	(void)worker;
	struct reps_job *j = ctx;
	const struct reps_in *in = j->in;
	const unsigned d = in->d, R = in->reps;
	uint64_t t0, t1;
	if (in->start) {
		t0 = in->start[item];
		t1 = in->start[item + 1];
	} else {
		t0 = (uint64_t)item * in->block;
		t1 = t0 + in->block < in->n ? t0 + in->block : in->n;
	}
	unsigned len = (unsigned)(t1 - t0);
	const float *k = in->k + t0 * d;
	const size_t rows = in->pq ? in->rows : 0;
	size_t off_taken = ix_align(len * sizeof(float));
	size_t off_grp = off_taken + ix_align(len);
	size_t off_cm = off_grp + ix_align(len * sizeof(uint32_t));
	size_t off_s = off_cm + ix_align((size_t)R * d * sizeof(float));
	size_t need = off_s + (size_t)len * rows * sizeof(float);
	uint8_t *sc = ix_scratch(need);
	if (!sc)
		return -ENOMEM;
	float *w = (float *)sc, *cm = (float *)(sc + off_cm), *s = (float *)(sc + off_s);
	unsigned char *taken = sc + off_taken;
	uint32_t *grp = (uint32_t *)(sc + off_grp);
	memset(taken, 0, len);
	unsigned pick[REPS_MAX];
	unsigned n_pick = len < R ? len : R;
	if (rows) {
		ix_dots(k, len, d, in->pq, (unsigned)rows, d, s);
		for (unsigned i = 0; i < len; i++) {
			float acc = 0;
			for (size_t r = 0; r < rows; r++)
				acc += expf(s[i * rows + r] - j->lse[r]);
			w[i] = acc;
		}
		for (unsigned r = 0; r < n_pick; r++) {
			pick[r] = argmax_untaken(w, len, taken);
			taken[pick[r]] = 1;
		}
	} else {
		medoids(k, len, d, n_pick, w, taken, cm, grp, pick);
	}
	float *out = j->rep + (size_t)item * R * d;
	for (unsigned r = 0; r < R; r++)
		memcpy(out + (size_t)r * d, k + (size_t)pick[r < n_pick ? r : n_pick - 1] * d, d * sizeof(float));
	return 0;
}

int ix_reps(const struct reps_in *in, float *rep)
{
	if (!in || !in->k || !in->n || !in->d || !in->n_units || !in->reps || in->reps > REPS_MAX || !rep ||
	    (!in->start && !in->block) || (in->pq && (!in->rows || in->rows > REPS_MAX_ROWS)))
		return -EINVAL;
	if (in->start) {
		if (in->start[0] != 0 || in->start[in->n_units] != in->n)
			return -EINVAL;
		for (uint64_t u = 0; u < in->n_units; u++)
			if (in->start[u + 1] <= in->start[u])
				return -EINVAL;
	}
	struct reps_job job = { .in = in, .rep = rep };
	int rc = 0;
	if (in->pq) {
		size_t jobs = (in->n + REPS_LSE_CHUNK - 1) / REPS_LSE_CHUNK;
		job.part = malloc(jobs * in->rows * 2 * sizeof(float));
		job.lse = malloc(in->rows * sizeof(float));
		if (!job.part || !job.lse) {
			rc = -ENOMEM;
			goto out;
		}
		if ((rc = ix_parallel(in->threads, jobs, lse_job, &job)))
			goto out;
		for (unsigned r = 0; r < in->rows; r++) {
			float m = -INFINITY;
			double z = 0;
			for (size_t i = 0; i < jobs; i++)
				m = job.part[(i * in->rows + r) * 2] > m ? job.part[(i * in->rows + r) * 2] : m;
			for (size_t i = 0; i < jobs && isfinite(m); i++)
				z += job.part[(i * in->rows + r) * 2 + 1] *
				     exp((double)job.part[(i * in->rows + r) * 2] - m);
			job.lse[r] = isfinite(m) && z > 0 ? m + (float)log(z) : INFINITY;
		}
	}
	rc = ix_parallel(in->threads, in->n_units, rep_job, &job);
out:
	free(job.part);
	free(job.lse);
	return rc;
}
