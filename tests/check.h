/*
 * A small harness for mnemo's test programs: CHECK records a failure with
 * its line and goes on, so one run reports every broken expectation.
 * A program ends with `return check_exit();` (0 pass, 1 fail).
 */
#ifndef MNEMO_TESTS_CHECK_H
#define MNEMO_TESTS_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int check_failures, check_count;

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		check_count++;                                                  \
		if (!(cond)) {                                                  \
			check_failures++;                                       \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
			fprintf(stderr, __VA_ARGS__);                           \
			fputc('\n', stderr);                                    \
		}                                                               \
	} while (0)

static inline int check_exit(void)
{
	printf("%d checks, %d failed\n", check_count, check_failures);
	return check_failures ? 1 : 0;
}

/* Seeded from the clock unless MNEMO_TEST_SEED is set; printed so a failure can be replayed. */
static inline uint64_t check_seed(void)
{
	const char *e = getenv("MNEMO_TEST_SEED");
	uint64_t s = e ? strtoull(e, NULL, 0) : (uint64_t)time(NULL) ^ (uint64_t)clock();
	printf("seed %llu (MNEMO_TEST_SEED to replay)\n", (unsigned long long)s);
	return s;
}

static inline uint64_t check_rand(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* uniform in [-1, 1) */
static inline float check_uniform(uint64_t *s)
{
	return (float)((check_rand(s) >> 40) / 8388608.0 - 1.0);
}

#endif
