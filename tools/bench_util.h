/* What every mnemo-bench suite shares: a monotonic clock and percentiles. */
#ifndef MNEMO_TOOLS_BENCH_UTIL_H
#define MNEMO_TOOLS_BENCH_UTIL_H

#include <stddef.h>
#include <stdlib.h>
#include <time.h>

static inline double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/** The @p p quantile (0..1) of @p v[n], which it sorts; 0 for n = 0. */
static inline double pct(double *v, size_t n, double p)
{
	if (!n)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	size_t i = (size_t)(p * (n - 1) + 0.5);
	return v[i < n ? i : n - 1];
}

#endif
