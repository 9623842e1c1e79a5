/* Leveled, per-subsystem logging to stderr. */
#define _GNU_SOURCE
#include "log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define MAX_OVERRIDES 16

static const char *const names[] = { "error", "warn", "info", "debug" };

static struct {
	enum log_level def;
	int n;
	char sys[MAX_OVERRIDES][16];
	enum log_level lvl[MAX_OVERRIDES];
} cfg = { .def = LOG_INFO };

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static int parse_level(const char *s, size_t n, enum log_level *out)
{
	for (unsigned i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (strlen(names[i]) == n && !strncmp(s, names[i], n)) {
			*out = (enum log_level)i;
			return 0;
		}
	return -EINVAL;
}

int log_configure(const char *spec)
{
	__typeof__(cfg) next = { .def = LOG_INFO };
	const char *p = spec;
	while (*p) {
		const char *end = strchr(p, ',');
		size_t n = end ? (size_t)(end - p) : strlen(p);
		const char *eq = memchr(p, '=', n);
		if (eq) {
			size_t sn = (size_t)(eq - p);
			if (next.n == MAX_OVERRIDES || sn == 0 || sn >= sizeof(next.sys[0]))
				return -EINVAL;
			if (parse_level(eq + 1, n - sn - 1, &next.lvl[next.n]))
				return -EINVAL;
			memcpy(next.sys[next.n], p, sn);
			next.sys[next.n][sn] = 0;
			next.n++;
		} else if (parse_level(p, n, &next.def)) {
			return -EINVAL;
		}
		p += n;
		if (*p == ',')
			p++;
	}
	pthread_mutex_lock(&mu);
	cfg = next;
	pthread_mutex_unlock(&mu);
	return 0;
}

int log_enabled(enum log_level lvl, const char *sys)
{
	enum log_level lim = cfg.def;
	for (int i = 0; i < cfg.n; i++)
		if (!strcmp(cfg.sys[i], sys))
			lim = cfg.lvl[i];
	return lvl <= lim;
}

void log_msg(enum log_level lvl, const char *sys, const char *fmt, ...)
{
	if (!log_enabled(lvl, sys))
		return;
	char line[1024];
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s %s: ",
			 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
			 tm.tm_sec, ts.tv_nsec / 1000000, names[lvl], sys);
	va_list ap;
	va_start(ap, fmt);
	if (n >= 0 && (size_t)n < sizeof(line))
		vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	/* one fputs per line keeps lines whole across threads */
	size_t len = strlen(line);
	if (len < sizeof(line) - 1) {
		line[len] = '\n';
		line[len + 1] = 0;
	}
	fputs(line, stderr);
}
