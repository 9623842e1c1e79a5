/*
 * faiss_smoke.c - link/run check for the FAISS C API (libfaiss_c + libfaiss).
 *
 * Built and run by tools/setup.sh through `pkg-config --cflags --libs faiss_c`.
 * Clusters 2000 points (16-d, drawn around 8 hidden centres) into 8 centroids
 * with faiss_kmeans_clustering, then indexes the centroids in an IndexFlatL2
 * and checks the search results against a brute-force nearest-centroid scan.
 * Exit status 0 means every check passed.
 */
#include <faiss/c_api/Clustering_c.h>
#include <faiss/c_api/IndexFlat_c.h>
#include <faiss/c_api/Index_c.h>
#include <faiss/c_api/error_c.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

enum { D = 16, N = 2000, K = 8 };

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static float rnd01(void) /* xorshift64*, uniform in [0,1) */
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (float)((rng_state * 0x2545f4914f6cdd1dULL) >> 40) / 16777216.0f;
}

static float l2sq(const float *a, const float *b)
{
	float s = 0.0f;
	for (int j = 0; j < D; j++) {
		float t = a[j] - b[j];
		s += t * t;
	}
	return s;
}

static int fail(const char *what)
{
	const char *err = faiss_get_last_error();
	fprintf(stderr, "faiss_smoke: FAIL: %s%s%s\n", what,
		err ? ": " : "", err ? err : "");
	return 1;
}

int main(void)
{
	static float x[N * D], centres[K * D], centroids[K * D];
	static float dist[N];
	static idx_t lab[N];
	float mean[D] = {0}, q_error = -1.0f;
	double sse_total = 0.0;

	for (int i = 0; i < K * D; i++)
		centres[i] = 10.0f * rnd01();
	for (int i = 0; i < N; i++)
		for (int j = 0; j < D; j++)
			x[i * D + j] = centres[(i % K) * D + j] + rnd01() - 0.5f;

	for (int i = 0; i < N; i++)
		for (int j = 0; j < D; j++)
			mean[j] += x[i * D + j] / N;
	for (int i = 0; i < N; i++)
		sse_total += l2sq(&x[i * D], mean);

	if (faiss_kmeans_clustering(D, N, K, x, centroids, &q_error) != 0)
		return fail("faiss_kmeans_clustering");
	for (int i = 0; i < K * D; i++)
		if (!isfinite(centroids[i]))
			return fail("non-finite centroid");
	/* 8 clusters must explain far more than the single-mean baseline. */
	if (!(q_error > 0.0f) || !(q_error < 0.5 * sse_total))
		return fail("implausible k-means quantisation error");

	FaissIndexFlatL2 *index = NULL;
	if (faiss_IndexFlatL2_new_with(&index, D) != 0)
		return fail("faiss_IndexFlatL2_new_with");
	if (faiss_Index_add(index, K, centroids) != 0)
		return fail("faiss_Index_add");
	if (faiss_Index_ntotal(index) != K || !faiss_Index_is_trained(index))
		return fail("index ntotal/is_trained");

	/* Each centroid must find itself at distance ~0. */
	if (faiss_Index_search(index, K, centroids, 1, dist, lab) != 0)
		return fail("faiss_Index_search (centroids)");
	for (int i = 0; i < K; i++)
		if (lab[i] != i || dist[i] > 1e-3f)
			return fail("centroid self-lookup");

	/* Every point's nearest centroid must match a brute-force scan. */
	if (faiss_Index_search(index, N, x, 1, dist, lab) != 0)
		return fail("faiss_Index_search (points)");
	double sum = 0.0;
	for (int i = 0; i < N; i++) {
		float best = INFINITY;
		for (int c = 0; c < K; c++) {
			float dd = l2sq(&x[i * D], &centroids[c * D]);
			if (dd < best)
				best = dd;
		}
		if (lab[i] < 0 || lab[i] >= K)
			return fail("label out of range");
		if (fabsf(dist[i] - best) > 1e-3f * (1.0f + best))
			return fail("search distance differs from brute force");
		sum += dist[i];
	}
	faiss_Index_free(index);

	printf("faiss_smoke: ok (kmeans q_error %.1f vs baseline %.1f, "
	       "mean NN dist %.3f)\n", q_error, sse_total, sum / N);
	return 0;
}
