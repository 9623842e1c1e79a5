/* mnemod settings: defaults, config file, flags, --help. */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <stdbool.h>
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "tier.h"

#ifndef MNEMO_VERSION
#define MNEMO_VERSION "0"
#endif

enum opt_type { OPT_PATH, OPT_SIZE, OPT_U32, OPT_STR };

struct option_def {
	const char *name;
	enum opt_type type;
	size_t off;
	const char *def;          /* "auto": resolved at run time, described in help */
	uint64_t min, max;        /* OPT_STR: max is the field's size */
	const char *help;
};

#define OFF(f) offsetof(struct config, f)
#define SIZE(f) sizeof(((struct config *)0)->f)

static const struct option_def options[] = {
	{ "socket", OPT_PATH, OFF(socket), "auto", 0, 0,
	  "Unix socket to listen on (mode 0600). auto: $XDG_RUNTIME_DIR/mnemo/mnemod.sock,\n"
	  "or var/run/mnemod.sock under the working directory without XDG_RUNTIME_DIR." },
	{ "data-dir", OPT_PATH, OFF(data_dir), "auto", 0, 0,
	  "Folder for the daemon's data: the catalog, the retrieval indexes and prefix\n"
	  "chains of each context (DATA-DIR/indexes; with an SSD tier only) and, by\n"
	  "default, the SSD tier (created 0700). It must survive a reboot, so it is not\n"
	  "the runtime dir.\n"
	  "auto: $XDG_STATE_HOME/mnemo, else $HOME/.local/state/mnemo, else var/lib/mnemo\n"
	  "under the working directory." },
	{ "host-mem", OPT_SIZE, OFF(host_mem), "auto", 1 << 20, UINT64_MAX,
	  "Host-RAM budget for K/V blocks (K, M, G, T suffixes). With an SSD tier it is a\n"
	  "cache: durable blocks nobody is reading leave RAM, least recently used first,\n"
	  "when it is full. An APPEND fails with ENOMEM only when blocks in use fill it.\n"
	  "Retrieval indexes come on top (centroids* keep a copy of their layer's K/V):\n"
	  "mnemoctl stat shows their size.\n"
	  "auto: half of physical RAM." },
	{ "ssd-dir", OPT_PATH, OFF(ssd_dir), "auto", 0, 0,
	  "Folder of the SSD tier's block files (O_DIRECT: not tmpfs). Blocks an APPEND\n"
	  "fills are written there and synced before it is acknowledged (streamed ones:\n"
	  "see --stream-sync), and the catalog\n"
	  "(DATA-DIR/catalog) names them, so a restart serves every sealed context again.\n"
	  "\"none\": RAM only, nothing survives a restart. auto: DATA-DIR/ssd." },
	{ "ssd-max", OPT_SIZE, OFF(ssd_max), "0", 0, UINT64_MAX,
	  "Most bytes of block files; an APPEND past it fails with ENOSPC. 0: no cap but\n"
	  "the file system's." },
	{ "stream-sync", OPT_SIZE, OFF(stream_sync), "16G", 0, UINT64_MAX,
	  "Bytes a context streams (APPEND with STREAM, as mnemo-preload sends) between\n"
	  "sync points: its streamed blocks are written before each reply and made\n"
	  "durable together (one flush, one catalog commit) at the next sync point, an\n"
	  "APPEND with SYNC, SEAL or a clean stop. A crash loses what came after the\n"
	  "last one; a preload resumes from there. 16G is about 30 s of writing on a\n"
	  "0.5 GB/s disk, the kernel's own window for buffered writes. 0: every APPEND\n"
	  "is durable at its reply (a flush per request writes half as fast on a\n"
	  "write-back cached disk)." },
	{ "block-tokens", OPT_U32, OFF(block_tokens), "64", 1, 256,
	  "Tokens per block (per layer and KV head), 1..256." },
	{ "workers", OPT_U32, OFF(workers), "0", 0, 1024,
	  "Compute threads; 0 means one per online core." },
	{ "max-frame", OPT_SIZE, OFF(max_frame), "64M", 4096, 1u << 30,
	  "Largest request payload accepted; larger frames are refused and the\n"
	  "connection closed. Bulk data beyond it goes through the shared-memory arena." },
	{ "max-connections", OPT_U32, OFF(max_connections), "256", 1, 65536,
	  "Connections served at once; more are accepted and closed at once." },
	{ "drain-seconds", OPT_U32, OFF(drain_seconds), "30", 0, 3600,
	  "On SIGTERM/SIGINT, how long to wait for in-flight requests before exiting." },
	{ "episodic-gamma", OPT_STR, OFF(episodic_gamma), "1.0", 0, SIZE(episodic_gamma),
	  "The episodic policy's boundary rule (EM-LLM): token t starts an event when its\n"
	  "surprise exceeds mean + GAMMA * std of the 4096 before it; larger GAMMA, fewer\n"
	  "and longer events (8 to 128 tokens). A number > 0; 1.0 is EM-LLM's default." },
	{ "estimates", OPT_STR, OFF(estimates), "on", 0, SIZE(estimates),
	  "on or off. On: centroids and centroids2 add the clusters they rank next but do\n"
	  "not attend as estimates to each ATTEND's partial (RetroInfer: a cluster stands in\n"
	  "for its members by its centroid, size and value sum). Off: the partial is exact\n"
	  "attention over the picked tokens alone (Squeezed Attention), so exp(lse) is the\n"
	  "softmax mass they hold." },
	{ "quest-rerank", OPT_STR, OFF(quest_rerank), "0", 0, SIZE(quest_rerank),
	  "0, or R in (1, 1024]: quest indexes built from then on keep 4-bit codes of the\n"
	  "keys (half a byte a channel, on each page's own min/max grid) and a search pools\n"
	  "its best pages until they hold R times the budget, scores their tokens from the\n"
	  "codes and keeps the best budget of them, reading no key from the blocks. 0 is\n"
	  "Quest's own search (whole pages by bound). An index keeps the R it was built with." },
	{ "quest-cohere", OPT_STR, OFF(quest_cohere), "0", 0, SIZE(quest_cohere),
	  "A share C in [0, 1) of a reranking quest search's budget that is filled by the\n"
	  "best tokens of the pages the rest of its pick already holds, before any other\n"
	  "page is opened: a page is a block read (with --block-tokens 16), so the pick\n"
	  "reads fewer blocks for a little of its mass (0.4 at 1%: 25% fewer blocks, 0.005\n"
	  "less of the best mass, docs/PERF.md). 0: the best tokens by score alone." },
	{ "log-level", OPT_STR, OFF(log_level), "info", 0, SIZE(log_level),
	  "error, warn, info or debug, optionally per subsystem:\n"
	  "\"info,ipc=debug\" (subsystems: daemon, ipc, store, attend)." },
};

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

static const struct option_def *find_option(const char *name, size_t n)
{
	for (size_t i = 0; i < N_OPTIONS; i++)
		if (strlen(options[i].name) == n && !strncmp(options[i].name, name, n))
			return &options[i];
	return NULL;
}

static int parse_size(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *s == '-')
		return -EINVAL;
	unsigned shift = 0;
	switch (toupper((unsigned char)*end)) {
	case 0: break;
	case 'K': shift = 10; end++; break;
	case 'M': shift = 20; end++; break;
	case 'G': shift = 30; end++; break;
	case 'T': shift = 40; end++; break;
	default: return -EINVAL;
	}
	if (*end == 'i' || *end == 'I')
		end++;
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

static int set_option(struct config *c, const struct option_def *o, const char *val,
		      const char *where)
{
	char *field = (char *)c + o->off;
	uint64_t v;
	switch (o->type) {
	case OPT_PATH:
	case OPT_STR: {
		/* each string field has its own size: a value must fit the one it goes to */
		size_t cap = o->type == OPT_PATH ? PATH_MAX : o->max;
		if (strlen(val) >= cap) {
			fprintf(stderr, "mnemod: %s: %s is too long\n", where, o->name);
			return -EINVAL;
		}
		if (o->type == OPT_STR && !strcmp(o->name, "log-level") && log_configure(val)) {
			fprintf(stderr, "mnemod: %s: log-level \"%s\" is not LEVEL[,SUBSYS=LEVEL...] "
				"with LEVEL one of error, warn, info, debug\n", where, val);
			return -EINVAL;
		}
		strcpy(field, val);
		return 0;
	}
	case OPT_SIZE:
	case OPT_U32:
		if (!strcmp(val, "auto") && !strcmp(o->def, "auto")) {
			*(uint64_t *)field = 0;
			return 0;
		}
		if (parse_size(val, &v) || (o->type == OPT_U32 && !isdigit((unsigned char)val[strlen(val) - 1]))) {
			fprintf(stderr, "mnemod: %s: %s \"%s\" is not a %s\n", where, o->name, val,
				o->type == OPT_SIZE ? "size (e.g. 512M, 8G)" : "number");
			return -EINVAL;
		}
		if (v < o->min || v > o->max) {
			fprintf(stderr, "mnemod: %s: %s %s is outside %llu..%llu\n", where, o->name, val,
				(unsigned long long)o->min, (unsigned long long)o->max);
			return -ERANGE;
		}
		if (o->type == OPT_SIZE)
			*(uint64_t *)field = v;
		else
			*(uint32_t *)field = (uint32_t)v;
		return 0;
	}
	return -EINVAL;
}

static char *trim(char *s)
{
	while (isspace((unsigned char)*s))
		s++;
	char *e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = 0;
	return s;
}

static int load_file(struct config *c, const char *path)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		fprintf(stderr, "mnemod: cannot read config %s: %s\n", path, strerror(errno));
		return -errno;
	}
	char line[PATH_MAX + 64], where[PATH_MAX + 32];
	int rc = 0, lineno = 0;
	while (fgets(line, sizeof(line), f)) {
		lineno++;
		char *hash = strchr(line, '#');
		if (hash)
			*hash = 0;
		char *s = trim(line);
		if (!*s)
			continue;
		snprintf(where, sizeof(where), "%s:%d", path, lineno);
		char *eq = strchr(s, '=');
		if (!eq) {
			fprintf(stderr, "mnemod: %s: expected \"name = value\"\n", where);
			rc = -EINVAL;
			continue;
		}
		*eq = 0;
		char *key = trim(s), *val = trim(eq + 1);
		const struct option_def *o = find_option(key, strlen(key));
		if (!o) {
			fprintf(stderr, "mnemod: %s: unknown option \"%s\"\n", where, key);
			rc = -EINVAL;
			continue;
		}
		if (set_option(c, o, val, where))
			rc = -EINVAL;
	}
	fclose(f);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f,
		"Usage: mnemod [--config FILE] [--OPTION VALUE | --OPTION=VALUE]...\n"
		"\n"
		"mnemod keeps the KV cache of long LLM contexts and answers decode-time\n"
		"attention over it on a Unix socket (protocol: ipc/PROTOCOL.md).\n"
		"It runs in the foreground; SIGTERM or SIGINT drains in-flight requests and\n"
		"exits 0.\n"
		"\n"
		"  -c, --config FILE   read settings from FILE (\"name = value\" lines, # comments);\n"
		"                      flags given on the command line win over the file\n"
		"  -h, --help          print this help and exit\n"
		"  -V, --version       print the version and exit\n"
		"      --print-config  print the effective settings in config-file syntax and exit\n"
		"\n"
		"Options (config-file name = flag name):\n");
	for (size_t i = 0; i < N_OPTIONS; i++) {
		const struct option_def *o = &options[i];
		const char *meta = o->type == OPT_PATH ? "PATH" : o->type == OPT_SIZE ? "SIZE" :
				   o->type == OPT_U32 ? "N" : "SPEC";
		fprintf(f, "  --%s %s   (default: %s)\n", o->name, meta, o->def);
		const char *h = o->help;
		while (*h) {
			const char *nl = strchr(h, '\n');
			int n = nl ? (int)(nl - h) : (int)strlen(h);
			fprintf(f, "      %.*s\n", n, h);
			h += n + (nl ? 1 : 0);
		}
	}
	fprintf(f,
		"\n"
		"Environment: XDG_RUNTIME_DIR (default locations).\n"
		"Example config: daemon/mnemod.conf.example\n");
}

static void resolve_auto(struct config *c)
{
	const char *xdg = getenv("XDG_RUNTIME_DIR");
	bool have_xdg = xdg && *xdg;
	if (!c->socket[0]) {
		if (have_xdg)
			snprintf(c->socket, sizeof(c->socket), "%s/mnemo/mnemod.sock", xdg);
		else
			snprintf(c->socket, sizeof(c->socket), "var/run/mnemod.sock");
	}
	if (!c->data_dir[0]) {
		const char *state = getenv("XDG_STATE_HOME"), *home = getenv("HOME");
		if (state && *state)
			snprintf(c->data_dir, sizeof(c->data_dir), "%s/mnemo", state);
		else if (home && *home)
			snprintf(c->data_dir, sizeof(c->data_dir), "%s/.local/state/mnemo", home);
		else
			snprintf(c->data_dir, sizeof(c->data_dir), "var/lib/mnemo");
	}
	if (!c->ssd_dir[0] &&
	    snprintf(c->ssd_dir, sizeof(c->ssd_dir), "%s/ssd", c->data_dir) >= (int)sizeof(c->ssd_dir))
		c->ssd_dir[0] = 0;   /* reported by the daemon as an unusable path */
	if (!c->host_mem)
		c->host_mem = tier_host_default_budget();
	if (!c->workers) {
		long n = sysconf(_SC_NPROCESSORS_ONLN);
		c->workers = n > 0 ? (uint32_t)n : 1;
	}
}

enum config_action config_load(struct config *c, int argc, char **argv)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < N_OPTIONS; i++)
		if (strcmp(options[i].def, "auto") && set_option(c, &options[i], options[i].def, "default"))
			return CONFIG_EXIT_ERR;

	/* The file first, wherever --config stands, so that flags win. */
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
			usage(stdout);
			return CONFIG_EXIT_OK;
		}
		if (!strcmp(a, "-V") || !strcmp(a, "--version")) {
			printf("mnemod %s (protocol 1)\n", MNEMO_VERSION);
			return CONFIG_EXIT_OK;
		}
		const char *file = NULL;
		if ((!strcmp(a, "-c") || !strcmp(a, "--config"))) {
			if (i + 1 >= argc) {
				fprintf(stderr, "mnemod: %s needs a FILE\n", a);
				return CONFIG_EXIT_ERR;
			}
			file = argv[++i];
		} else if (!strncmp(a, "--config=", 9)) {
			file = a + 9;
		}
		if (file && load_file(c, file))
			return CONFIG_EXIT_ERR;
	}

	bool print = false;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (!strcmp(a, "-c") || !strcmp(a, "--config")) {
			i++;
			continue;
		}
		if (!strncmp(a, "--config=", 9))
			continue;
		if (!strcmp(a, "--print-config")) {
			print = true;
			continue;
		}
		if (strncmp(a, "--", 2)) {
			fprintf(stderr, "mnemod: unexpected argument \"%s\" (see --help)\n", a);
			return CONFIG_EXIT_ERR;
		}
		const char *name = a + 2, *eq = strchr(name, '='), *val;
		size_t n = eq ? (size_t)(eq - name) : strlen(name);
		const struct option_def *o = find_option(name, n);
		if (!o) {
			fprintf(stderr, "mnemod: unknown option \"%s\" (see --help)\n", a);
			return CONFIG_EXIT_ERR;
		}
		if (eq) {
			val = eq + 1;
		} else {
			if (i + 1 >= argc) {
				fprintf(stderr, "mnemod: --%s needs a value\n", o->name);
				return CONFIG_EXIT_ERR;
			}
			val = argv[++i];
		}
		if (set_option(c, o, val, "command line"))
			return CONFIG_EXIT_ERR;
	}
	resolve_auto(c);
	if (print) {
		config_print(c, stdout);
		return CONFIG_EXIT_OK;
	}
	return CONFIG_RUN;
}

void config_print(const struct config *c, FILE *f)
{
	for (size_t i = 0; i < N_OPTIONS; i++) {
		const struct option_def *o = &options[i];
		const char *field = (const char *)c + o->off;
		switch (o->type) {
		case OPT_PATH:
		case OPT_STR:
			fprintf(f, "%s = %s\n", o->name, field);
			break;
		case OPT_SIZE:
			fprintf(f, "%s = %llu\n", o->name, (unsigned long long)*(const uint64_t *)field);
			break;
		case OPT_U32:
			fprintf(f, "%s = %u\n", o->name, *(const uint32_t *)field);
			break;
		}
	}
}
