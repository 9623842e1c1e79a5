/* Worker pool with caller-helps parallel loops. */
#define _GNU_SOURCE
#include "pool.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>

/* A parallel loop in progress; lives on its caller's stack. */
struct batch {
	struct batch *next;
	void (*fn)(void *arg, unsigned i);
	void *arg;
	unsigned n, claimed, done;
};

struct pool {
	pthread_mutex_t mu;
	pthread_cond_t work;      /* a job or a batch item is there, or stop */
	pthread_cond_t finished;  /* some batch item finished */
	struct pool_job *head, *tail;
	struct batch *batches;    /* those with unclaimed items */
	bool stop;
	unsigned n;
	pthread_t *threads;
};

/* Claim one item of @p b and run it; called and returns with mu held. */
static void run_item(struct pool *p, struct batch *b)
{
	unsigned i = b->claimed++;
	if (b->claimed == b->n) {
		for (struct batch **pp = &p->batches; *pp; pp = &(*pp)->next)
			if (*pp == b) {
				*pp = b->next;
				break;
			}
	}
	pthread_mutex_unlock(&p->mu);
	b->fn(b->arg, i);
	pthread_mutex_lock(&p->mu);
	if (++b->done == b->n)
		pthread_cond_broadcast(&p->finished);
}

static void *worker(void *arg)
{
	struct pool *p = arg;
	pthread_mutex_lock(&p->mu);
	for (;;) {
		if (p->batches) {
			run_item(p, p->batches);
			continue;
		}
		if (p->head) {
			struct pool_job *j = p->head;
			p->head = j->next;
			if (!p->head)
				p->tail = NULL;
			pthread_mutex_unlock(&p->mu);
			j->fn(j);
			pthread_mutex_lock(&p->mu);
			continue;
		}
		if (p->stop)
			break;
		pthread_cond_wait(&p->work, &p->mu);
	}
	pthread_mutex_unlock(&p->mu);
	return NULL;
}

int pool_start(unsigned n, struct pool **out)
{
	if (n < 1)
		return -EINVAL;
	struct pool *p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->threads = calloc(n, sizeof(*p->threads));
	if (!p->threads) {
		free(p);
		return -ENOMEM;
	}
	pthread_mutex_init(&p->mu, NULL);
	pthread_cond_init(&p->work, NULL);
	pthread_cond_init(&p->finished, NULL);
	for (unsigned i = 0; i < n; i++) {
		int rc = pthread_create(&p->threads[i], NULL, worker, p);
		if (rc) {
			p->n = i;
			pool_stop(p);
			return -rc;
		}
		p->n = i + 1;
	}
	*out = p;
	return 0;
}

void pool_stop(struct pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->mu);
	p->stop = true;
	pthread_cond_broadcast(&p->work);
	pthread_mutex_unlock(&p->mu);
	for (unsigned i = 0; i < p->n; i++)
		pthread_join(p->threads[i], NULL);
	pthread_cond_destroy(&p->work);
	pthread_cond_destroy(&p->finished);
	pthread_mutex_destroy(&p->mu);
	free(p->threads);
	free(p);
}

void pool_submit(struct pool *p, struct pool_job *job)
{
	job->next = NULL;
	pthread_mutex_lock(&p->mu);
	if (p->tail)
		p->tail->next = job;
	else
		p->head = job;
	p->tail = job;
	pthread_cond_signal(&p->work);
	pthread_mutex_unlock(&p->mu);
}

void pool_parallel(void *pool, unsigned n, void (*fn)(void *arg, unsigned i), void *arg)
{
	struct pool *p = pool;
	if (n == 0)
		return;
	if (n == 1 || p->n < 2) {
		for (unsigned i = 0; i < n; i++)
			fn(arg, i);
		return;
	}
	struct batch b = { .fn = fn, .arg = arg, .n = n };
	pthread_mutex_lock(&p->mu);
	b.next = p->batches;
	p->batches = &b;
	pthread_cond_broadcast(&p->work);
	while (b.claimed < b.n)
		run_item(p, &b);
	while (b.done < b.n)
		pthread_cond_wait(&p->finished, &p->mu);
	pthread_mutex_unlock(&p->mu);
}

unsigned pool_size(const struct pool *p)
{
	return p->n;
}
