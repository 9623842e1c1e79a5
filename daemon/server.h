/*
 * The daemon's I/O side: one libuv loop thread accepts connections, reads
 * and frames requests, hands each to the worker pool (one request in flight
 * per connection, so a connection's requests run in order), and writes the
 * replies. The loop never blocks and never computes.
 *
 * Glossary
 *   request  one complete frame read from a connection, waiting or running
 *   handler  the function of an opcode; runs on a worker (or, for the few
 *            trivial opcodes, on the loop) and fills a reply
 */
#ifndef MNEMO_DAEMON_SERVER_H
#define MNEMO_DAEMON_SERVER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "config.h"
#include "proto.h"
#include "sock.h"

struct server;
struct pool;
struct store;
struct tier;
struct ssd;

/** What every handler sees: the daemon's parts. */
struct daemon_ctx {
	const struct config *cfg;
	struct store *store;
	struct tier *host;
	struct ssd *ssd;          /* NULL with --ssd-dir none */
	struct pool *pool;
	struct prefix *prefix;    /* chunk-hash chains for LOOKUP */
	uint64_t start_ms;
	_Atomic uint64_t requests, errors;
	_Atomic uint32_t connections;
};

/** One request as a handler sees it. */
struct request {
	struct daemon_ctx *d;
	struct proto_header h;
	const uint8_t *payload;
	uint32_t len;
	uid_t uid;                /* the peer's, from SO_PEERCRED */
	pid_t pid;
	struct shm_arena *arena;  /* the connection's; handlers may replace it */
	int fd;                   /* fd that came with the frame, -1 if none; taking it sets -1 */
	struct wbuf out;          /* the reply payload */
	char err[PROTO_MAX_ERRMSG + 1];
	bool fatal;               /* close the connection after the reply */
};

typedef int (*handler_fn)(struct request *r);

struct handler {
	const char *name;
	handler_fn fn;
	bool on_loop;             /* trivial: answered on the loop thread */
};

/** The opcode table (handlers.c); NULL entries are unknown opcodes. */
extern const struct handler handlers[OP_COUNT];

/** Set the error reply's text; returns @p rc for `return req_error(...)`. */
int req_error(struct request *r, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/** mkdir -p with @p mode for every folder it creates. */
int mkdir_p(const char *path, mode_t mode);

/**
 * Bind the socket and run the loop until SIGTERM/SIGINT has drained every
 * connection. @return 0 on a clean stop, negative errno if it could not start.
 */
int server_run(struct daemon_ctx *d);

#endif
