/* mnemoctl: administer a running mnemod (ping, list, stat, drop). */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mnemo.h"

static const char *dtype_name(enum mnemo_dtype t)
{
	switch (t) {
	case MNEMO_F32: return "f32";
	case MNEMO_F16: return "f16";
	case MNEMO_BF16: return "bf16";
	}
	return "?";
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: mnemoctl [--socket PATH] [--json] COMMAND [ARG...]\n"
		"\n"
		"Commands:\n"
		"  ping            round trip to the daemon (HELLO); prints its version and limits\n"
		"  list            this user's contexts\n"
		"  stat            the daemon: uptime, connections, memory, requests, kernels\n"
		"  stat CONTEXT    one context (a name, or #ID for an id)\n"
		"  drop CONTEXT    delete a context and free its memory\n"
		"  share CONTEXT   make a sealed context readable by every user (read-only)\n"
		"  unshare CONTEXT make it this user's alone again\n"
		"  continue CONTEXT NAME\n"
		"                  create NAME, continuing the sealed CONTEXT (this user's or shared)\n"
		"                  without copying it: its tokens follow CONTEXT's\n"
		"  index CONTEXT POLICY\n"
		"                  build (or load) the indexes of POLICY (quest, blocks, centroids,\n"
		"                  centroids2, faiss-ivf, faiss-hnsw, ann, episodic) for every layer\n"
		"                  and KV head now, so no ATTEND waits for them; slow (it builds)\n"
		"\n"
		"Options:\n"
		"  -s, --socket PATH  daemon socket (default: $MNEMO_SOCKET, else\n"
		"                     $XDG_RUNTIME_DIR/mnemo/mnemod.sock, else var/run/mnemod.sock)\n"
		"  -j, --json         one JSON object per line instead of a table\n"
		"  -h, --help         this help\n"
		"\n"
		"Exit status: 0 on success, 1 when the daemon refused or failed, 2 on bad usage.\n");
}

static void ctx_ref(const char *arg, uint64_t *id, const char **name)
{
	*id = 0;
	*name = arg;
	if (arg[0] == '#') {
		char *end;
		errno = 0;
		unsigned long long v = strtoull(arg + 1, &end, 10);
		if (!errno && *end == 0 && end != arg + 1) {
			*id = v;
			*name = NULL;
		}
	}
}

/* Context names are printable ASCII, which may include quotes and backslashes. */
static void json_str(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

static void print_ctx(const struct mnemo_context_info *c, int json)
{
	if (json) {
		printf("{\"id\":%" PRIu64 ",\"name\":", c->id);
		json_str(c->name);
		printf(",\"layers\":%u,\"kv_heads\":%u,\"q_heads\":%u,\"head_dim\":%u,"
		       "\"dtype\":\"%s\",\"rope_theta\":%g,\"state\":\"%s\",\"owner_uid\":%u,"
		       "\"tokens\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"shared\":%s,\"parent\":%" PRIu64
		       ",\"parent_tokens\":%" PRIu64 ",\"surprise_seen\":%" PRIu64 ",\"events\":%" PRIu64
		       ",\"segmentation\":\"%s\"}\n",
		       c->geom.n_layers, c->geom.n_kv_heads, c->geom.n_q_heads, c->geom.head_dim,
		       dtype_name(c->geom.dtype), (double)c->geom.rope_theta,
		       c->sealed ? "sealed" : c->recovered ? "recovered" : "open", c->owner_uid, c->tokens, c->bytes,
		       c->shared ? "true" : "false", c->parent, c->parent_tokens, c->surprise_seen, c->events,
		       c->segmentation == 1 ? "surprise" : c->segmentation == 2 ? "novelty" : "none");
	} else {
		printf("%-6" PRIu64 " %-24s %6u %4u/%-4u %5u %-5s %-13s %7" PRIu64 " %10.1f\n",
		       c->id, c->name, c->geom.n_layers, c->geom.n_kv_heads, c->geom.n_q_heads,
		       c->geom.head_dim, dtype_name(c->geom.dtype),
		       c->sealed ? (c->shared ? "sealed,shared" : "sealed") : c->recovered ? "recovered" : "open",
		       c->tokens, (double)c->bytes / (1 << 20));
	}
}

static const char *ctx_header =
	"ID     NAME                     LAYERS KV/Q   D     DTYPE STATE          TOKENS        MiB\n";

int main(int argc, char **argv)
{
	const char *sock = NULL;
	int json = 0, i = 1;
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			usage(stdout);
			return 0;
		} else if (!strcmp(argv[i], "-j") || !strcmp(argv[i], "--json")) {
			json = 1;
		} else if ((!strcmp(argv[i], "-s") || !strcmp(argv[i], "--socket")) && i + 1 < argc) {
			sock = argv[++i];
		} else if (!strncmp(argv[i], "--socket=", 9)) {
			sock = argv[i] + 9;
		} else {
			fprintf(stderr, "mnemoctl: unknown option %s\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (i >= argc) {
		usage(stderr);
		return 2;
	}
	const char *cmd = argv[i++];
	const char *arg = i < argc ? argv[i++] : NULL;
	const char *arg2 = (!strcmp(cmd, "index") || !strcmp(cmd, "continue")) && i < argc ? argv[i++] : NULL;
	if (i < argc) {
		fprintf(stderr, "mnemoctl: too many arguments\n");
		return 2;
	}
	int known = !strcmp(cmd, "ping") || !strcmp(cmd, "list") || !strcmp(cmd, "stat") ||
		    !strcmp(cmd, "drop") || !strcmp(cmd, "index") || !strcmp(cmd, "share") || !strcmp(cmd, "unshare") ||
		    !strcmp(cmd, "continue");
	if (!known) {
		fprintf(stderr, "mnemoctl: unknown command %s\n", cmd);
		usage(stderr);
		return 2;
	}
	if ((!strcmp(cmd, "drop") || !strcmp(cmd, "share") || !strcmp(cmd, "unshare")) && !arg) {
		fprintf(stderr, "mnemoctl: %s needs a CONTEXT\n", cmd);
		return 2;
	}
	if (!strcmp(cmd, "continue") && !arg2) {
		fprintf(stderr, "mnemoctl: continue needs a CONTEXT and a NAME\n");
		return 2;
	}
	static const char *const policies[] = { "exact", "quest", "blocks", "centroids", "centroids2", "faiss-ivf",
						"faiss-hnsw", "ann", "episodic" };
	unsigned policy = 0;
	if (!strcmp(cmd, "index")) {
		for (unsigned p = 1; arg2 && p < sizeof(policies) / sizeof(policies[0]); p++)
			if (!strcmp(arg2, policies[p]))
				policy = p;
		if (!arg || !policy) {
			fprintf(stderr, "mnemoctl: index needs a CONTEXT and a POLICY (quest, blocks, centroids, "
					"centroids2, faiss-ivf, faiss-hnsw)\n");
			return 2;
		}
	}

	mnemo_client *c;
	const char *path = sock ? sock : mnemo_default_socket();
	int rc = mnemo_connect(path, &c);
	if (rc) {
		fprintf(stderr, "mnemoctl: cannot connect to %s: %s%s\n", path, strerror(-rc),
			rc == -ENOENT || rc == -ECONNREFUSED ? " (is mnemod running?)" : "");
		return 1;
	}

	if (!strcmp(cmd, "ping")) {
		struct timespec t0, t1;
		struct mnemo_server_info si;
		clock_gettime(CLOCK_MONOTONIC, &t0);
		rc = mnemo_hello(c, &si);
		clock_gettime(CLOCK_MONOTONIC, &t1);
		double us = (t1.tv_sec - t0.tv_sec) * 1e6 + (t1.tv_nsec - t0.tv_nsec) / 1e3;
		if (!rc) {
			if (json)
				printf("{\"version\":\"%s\",\"proto\":%u,\"rtt_us\":%.1f,\"workers\":%u,"
				       "\"block_tokens\":%u,\"max_frame\":%u,\"host_budget\":%" PRIu64
				       ",\"uid\":%u}\n", si.version, si.proto, us, si.workers,
				       si.block_tokens, si.max_frame, si.host_budget, si.peer_uid);
			else
				printf("mnemod %s (protocol %u) at %s: %.1f us; %u workers, %u-token blocks, "
				       "max frame %u MiB, host budget %.1f GiB; you are uid %u\n",
				       si.version, si.proto, path, us, si.workers, si.block_tokens,
				       si.max_frame >> 20, si.host_budget / 1073741824.0, si.peer_uid);
		}
	} else if (!strcmp(cmd, "list")) {
		struct mnemo_context_info *list;
		size_t n;
		rc = mnemo_list(c, &list, &n);
		if (!rc) {
			if (!json)
				fputs(ctx_header, stdout);
			for (size_t k = 0; k < n; k++)
				print_ctx(&list[k], json);
			free(list);
		}
	} else if (!strcmp(cmd, "stat") && !arg) {
		struct mnemo_daemon_info di;
		rc = mnemo_stat_daemon(c, &di);
		if (!rc) {
			if (json)
				printf("{\"uptime_ms\":%" PRIu64 ",\"connections\":%u,\"contexts\":%u,"
				       "\"workers\":%u,\"block_tokens\":%u,\"host_used\":%" PRIu64
				       ",\"host_budget\":%" PRIu64 ",\"requests\":%" PRIu64
				       ",\"errors\":%" PRIu64 ",\"ssd_used\":%" PRIu64 ",\"ssd_max\":%" PRIu64
				       ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64 ",\"evictions\":%" PRIu64
				       ",\"ssd_reads\":%" PRIu64 ",\"ssd_writes\":%" PRIu64
				       ",\"ssd_read_bytes\":%" PRIu64 ",\"ssd_write_bytes\":%" PRIu64
				       ",\"bad_blocks\":%" PRIu64 ",\"index_builds\":%" PRIu64
				       ",\"index_loads\":%" PRIu64 ",\"index_bytes\":%" PRIu64
				       ",\"policy_attends\":%" PRIu64 ",\"policy_pick_ns\":%" PRIu64
				       ",\"policy_search_ns\":%" PRIu64 ",\"policy_fold_ns\":%" PRIu64
				       ",\"policy_pin_ns\":%" PRIu64 ",\"cpu_ns\":%" PRIu64 ",\"kernels\":\"%s\"}\n",
				       di.uptime_ms, di.connections, di.contexts, di.workers, di.block_tokens,
				       di.host_used, di.host_budget, di.requests, di.errors, di.ssd_used,
				       di.ssd_max, di.hits, di.misses, di.evictions, di.ssd_reads, di.ssd_writes,
				       di.ssd_read_bytes, di.ssd_write_bytes, di.bad_blocks, di.index_builds,
				       di.index_loads, di.index_bytes, di.policy_attends, di.policy_pick_ns,
				       di.policy_search_ns, di.policy_fold_ns, di.policy_pin_ns, di.cpu_ns, di.kernels);
			else {
				printf("uptime       %.1f s (CPU %.1f s)\nconnections  %u\ncontexts     %u\n"
				       "workers      %u\nblock        %u tokens\nkernels      %s\n"
				       "requests     %" PRIu64 " (%" PRIu64 " failed)\n"
				       "host tier    %.1f / %.1f MiB; block pins %" PRIu64 " hits, %" PRIu64
				       " misses; %" PRIu64 " evictions\n",
				       di.uptime_ms / 1e3, di.cpu_ns / 1e9, di.connections, di.contexts, di.workers,
				       di.block_tokens, di.kernels, di.requests, di.errors,
				       di.host_used / 1048576.0, di.host_budget / 1048576.0, di.hits, di.misses,
				       di.evictions);
				printf("indexes      %.1f MiB in RAM; %" PRIu64 " built, %" PRIu64 " loaded from disk\n",
				       di.index_bytes / 1048576.0, di.index_builds, di.index_loads);
				if (di.policy_attends)
					printf("policy       %" PRIu64 " ATTENDs; per ATTEND: pick %.2f ms (search %.2f ms over"
					       " the heads), fold %.2f ms (pins %.2f ms over the heads)\n",
					       di.policy_attends, di.policy_pick_ns / 1e6 / di.policy_attends,
					       di.policy_search_ns / 1e6 / di.policy_attends,
					       di.policy_fold_ns / 1e6 / di.policy_attends,
					       di.policy_pin_ns / 1e6 / di.policy_attends);
				if (di.ssd_max == UINT64_MAX)
					printf("ssd tier     none (--ssd-dir none): nothing survives a restart\n");
				else
				{
					char cap[48] = "no cap (--ssd-max 0)";
					if (di.ssd_max)
						snprintf(cap, sizeof(cap), "cap %.1f MiB", di.ssd_max / 1048576.0);
					printf("ssd tier     %.1f MiB used, %s; %" PRIu64 " reads (%.1f MiB), %"
					       PRIu64 " writes (%.1f MiB); %" PRIu64 " bad blocks\n",
					       di.ssd_used / 1048576.0, cap, di.ssd_reads, di.ssd_read_bytes / 1048576.0,
					       di.ssd_writes, di.ssd_write_bytes / 1048576.0, di.bad_blocks);
				}
			}
		}
	} else if (!strcmp(cmd, "stat")) {
		uint64_t id;
		const char *name;
		ctx_ref(arg, &id, &name);
		struct mnemo_context_info ci;
		rc = mnemo_stat(c, id, name, &ci);
		if (!rc) {
			if (!json)
				fputs(ctx_header, stdout);
			print_ctx(&ci, json);
		}
	} else if (!strcmp(cmd, "share") || !strcmp(cmd, "unshare")) {
		uint64_t id;
		const char *name;
		ctx_ref(arg, &id, &name);
		int on = !strcmp(cmd, "share");
		if (!(rc = mnemo_share(c, id, name, on))) {
			if (json) {
				printf("{\"context\":");
				json_str(arg);
				printf(",\"shared\":%s}\n", on ? "true" : "false");
			} else {
				printf("%s is %s\n", arg, on ? "shared read-only with every user" : "private");
			}
		}
	} else if (!strcmp(cmd, "continue")) {
		uint64_t id, cont;
		const char *name;
		ctx_ref(arg, &id, &name);
		struct mnemo_context_info ci;
		if (!(rc = mnemo_stat(c, id, name, &ci)) && !(rc = mnemo_continue(c, ci.id, arg2, &cont))) {
			if (json) {
				printf("{\"id\":%" PRIu64 ",\"name\":", cont);
				json_str(arg2);
				printf(",\"parent\":%" PRIu64 ",\"parent_tokens\":%" PRIu64 "}\n", ci.id, ci.tokens);
			} else {
				printf("created %s (#%" PRIu64 "), continuing %s after its %" PRIu64 " tokens\n", arg2, cont,
				       arg, ci.tokens);
			}
		}
	} else if (!strcmp(cmd, "index")) {
		uint64_t id;
		const char *name;
		ctx_ref(arg, &id, &name);
		struct mnemo_context_info ci;
		struct mnemo_index_info ii;
		if (!(rc = mnemo_stat(c, id, name, &ci)) &&
		    !(rc = mnemo_index(c, ci.id, (enum mnemo_policy)policy, 0, 0, &ii))) {
			if (json)
				printf("{\"ctx\":%" PRIu64 ",\"policy\":\"%s\",\"built\":%" PRIu64 ",\"loaded\":%" PRIu64
				       ",\"present\":%" PRIu64 ",\"seconds\":%.3f}\n", ci.id, policies[policy], ii.built,
				       ii.loaded, ii.present, ii.elapsed_ns / 1e9);
			else
				printf("%s indexes of %s: %" PRIu64 " built, %" PRIu64 " loaded, %" PRIu64
				       " already in memory, in %.1f s\n", policies[policy], arg, ii.built, ii.loaded,
				       ii.present, ii.elapsed_ns / 1e9);
		}
	} else {
		uint64_t id;
		const char *name;
		ctx_ref(arg, &id, &name);
		rc = mnemo_drop(c, id, name);
		if (!rc && !json)
			printf("dropped %s\n", arg);
		else if (!rc) {
			printf("{\"dropped\":");
			json_str(arg);
			printf("}\n");
		}
	}
	if (rc)
		fprintf(stderr, "mnemoctl: %s: %s\n", cmd, mnemo_last_error(c)[0] ? mnemo_last_error(c) : strerror(-rc));
	mnemo_close(c);
	return rc ? 1 : 0;
}
