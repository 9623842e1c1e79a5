/*
 * What the integration tests share: start a real mnemod on a temporary
 * socket and data dir with extra flags, wait until it answers, stop it with
 * a signal; and synthetic K/V that the test can recompute instead of
 * keeping gigabytes in memory.
 */
#ifndef MNEMO_TESTS_HARNESS_H
#define MNEMO_TESTS_HARNESS_H

#define _GNU_SOURCE
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "mnemo.h"

struct daemon {
	const char *bin;
	char dir[128];
	char sock[200];
	pid_t pid;
};

/* A fresh folder for socket and data, kept across restarts. */
static inline void daemon_init(struct daemon *d, const char *bin)
{
	d->bin = bin;
	d->pid = -1;
	snprintf(d->dir, sizeof(d->dir), "/var/tmp/mnemo-itest-XXXXXX");
	if (!mkdtemp(d->dir)) {
		perror("mkdtemp");
		exit(1);
	}
	snprintf(d->sock, sizeof(d->sock), "%s/mnemod.sock", d->dir);
}

/* Start with the common flags plus up to 8 more (NULL-terminated). Returns 0 once it answers. */
static inline int daemon_start(struct daemon *d, ...)
{
	char data[200];
	snprintf(data, sizeof(data), "%s/data", d->dir);
	const char *argv[32] = { d->bin, "--socket", d->sock, "--data-dir", data, "--workers", "2",
				 "--log-level", "warn" };
	int n = 9;
	va_list ap;
	va_start(ap, d);
	for (const char *a; n < 30 && (a = va_arg(ap, const char *));)
		argv[n++] = a;
	va_end(ap);
	argv[n] = NULL;
	d->pid = fork();
	if (d->pid == 0) {
		execv(d->bin, (char *const *)argv);
		_exit(127);
	}
	for (int i = 0; i < 400; i++) {
		mnemo_client *c;
		if (mnemo_connect(d->sock, &c) == 0) {
			mnemo_close(c);
			return 0;
		}
		int st;
		if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
			d->pid = -1;
			return -1;
		}
		usleep(25000);
	}
	return -1;
}

/* Signal it and wait; returns the exit status (128+signal when killed). */
static inline int daemon_stop(struct daemon *d, int sig)
{
	if (d->pid <= 0)
		return -1;
	kill(d->pid, sig);
	int st;
	waitpid(d->pid, &st, 0);
	d->pid = -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static inline void daemon_cleanup(struct daemon *d)
{
	daemon_stop(d, SIGKILL);
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", d->dir);
}

/* Deterministic element in [-1, 1) of (kind, head, token, index). */
static inline float synth(uint64_t kind, uint64_t h, uint64_t t, uint64_t j)
{
	uint64_t z = ((kind * 0x9e3779b97f4a7c15ull) ^ (h << 48) ^ (t << 12) ^ j) + 0x632be59bd9b4e019ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (float)((double)(z >> 40) / 8388608.0 - 1.0);
}

#endif
