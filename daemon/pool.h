/*
 * The worker pool: N threads that run whole requests (jobs) and, inside a
 * request, parallel loops split by head and token range.
 *
 * pool_parallel() blocks its caller, which runs items of its own loop while
 * it waits; a worker that is free takes items from any running loop before
 * it takes a new job. So a loop started from a job always completes, even
 * when every worker is inside one.
 */
#ifndef MNEMO_DAEMON_POOL_H
#define MNEMO_DAEMON_POOL_H

struct pool;

struct pool_job {
	struct pool_job *next;    /* owned by the pool while queued */
	void (*fn)(struct pool_job *job);
};

/** Start @p n threads (>= 1). */
int pool_start(unsigned n, struct pool **out);

/** Run the queued jobs, then stop and join every thread, and free the pool. */
void pool_stop(struct pool *p);

/** Queue a job; it runs on a worker, later. The job memory is the caller's. */
void pool_submit(struct pool *p, struct pool_job *job);

/** Run fn(arg, i) for i in [0, n) across the workers and the caller; return when all are done. */
void pool_parallel(void *p, unsigned n, void (*fn)(void *arg, unsigned i), void *arg);

unsigned pool_size(const struct pool *p);

#endif
