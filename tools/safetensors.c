/*
 * safetensors reader and streaming writer (see safetensors.h for the words).
 *
 * The reader maps the file, parses the header with json-c and checks it
 * completely before anything is handed out: a tool that gets an st_file can
 * index any tensor by its shape without further bounds checks.
 */
#define _GNU_SOURCE
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
	const char *name;
	size_t size;
} dtypes[ST_DTYPE_COUNT] = {
	[ST_BOOL] = { "BOOL", 1 },
	[ST_U8] = { "U8", 1 },
	[ST_I8] = { "I8", 1 },
	[ST_F8_E5M2] = { "F8_E5M2", 1 },
	[ST_F8_E4M3] = { "F8_E4M3", 1 },
	[ST_I16] = { "I16", 2 },
	[ST_U16] = { "U16", 2 },
	[ST_F16] = { "F16", 2 },
	[ST_BF16] = { "BF16", 2 },
	[ST_I32] = { "I32", 4 },
	[ST_U32] = { "U32", 4 },
	[ST_F32] = { "F32", 4 },
	[ST_F64] = { "F64", 8 },
	[ST_I64] = { "I64", 8 },
	[ST_U64] = { "U64", 8 },
};

const char *st_dtype_name(enum st_dtype t)
{
	return (unsigned)t < ST_DTYPE_COUNT ? dtypes[t].name : NULL;
}

size_t st_dtype_size(enum st_dtype t)
{
	return (unsigned)t < ST_DTYPE_COUNT ? dtypes[t].size : 0;
}

int st_dtype_parse(const char *name, enum st_dtype *out)
{
	for (unsigned i = 0; i < ST_DTYPE_COUNT; i++) {
		if (strcmp(name, dtypes[i].name) == 0) {
			*out = (enum st_dtype)i;
			return 0;
		}
	}
	return -EINVAL;
}

static int msg(char *err, size_t errlen, int rc, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static int msg(char *err, size_t errlen, int rc, const char *fmt, ...)
{
	if (err && errlen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return rc;
}

/* "[1,8,1000,128]" for messages; truncates silently, which is fine there. */
static void shape_str(char *buf, size_t n, unsigned ndim, const uint64_t *shape)
{
	size_t at = 0;
	int w = snprintf(buf, n, "[");
	for (unsigned i = 0; w >= 0 && (at += (size_t)w) < n && i < ndim; i++)
		w = snprintf(buf + at, n - at, "%s%" PRIu64, i ? "," : "", shape[i]);
	if (at < n)
		snprintf(buf + at, n - at, "]");
}

static uint64_t get_le64(const void *p)
{
	const uint8_t *b = p;
	uint64_t v = 0;
	for (int i = 7; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

/* ------------------------------------------------------------------ reader */

struct st_meta_entry {
	char *key;
	char *value;
};

struct st_file {
	char *label;
	void *map;                      /* our mapping, or NULL for st_open_mem */
	size_t map_len;
	size_t size;
	struct st_tensor *t;            /* data order */
	size_t nt;
	const struct st_tensor **by_name; /* into t, sorted by name */
	struct st_meta_entry *meta;     /* sorted by key */
	size_t nmeta;
};

static int cmp_offset(const void *a, const void *b)
{
	const struct st_tensor *x = a, *y = b;
	if (x->offset != y->offset)
		return x->offset < y->offset ? -1 : 1;
	return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int cmp_name(const void *a, const void *b)
{
	const struct st_tensor *const *x = a, *const *y = b;
	return strcmp((*x)->name, (*y)->name);
}

static int cmp_meta(const void *a, const void *b)
{
	return strcmp(((const struct st_meta_entry *)a)->key, ((const struct st_meta_entry *)b)->key);
}

/* A non-negative JSON integer, or -1. json-c keeps values above INT64_MAX
 * as unsigned, so read both ways. */
static int json_u64(struct json_object *o, uint64_t *out)
{
	if (!json_object_is_type(o, json_type_int))
		return -1;
	if (json_object_get_int64(o) < 0)
		return -1;
	*out = json_object_get_uint64(o);
	return 0;
}

static int parse_metadata(struct st_file *f, struct json_object *m, char *err, size_t errlen)
{
	const char *L = f->label;

	if (!json_object_is_type(m, json_type_object))
		return msg(err, errlen, -EBADMSG, "%s: __metadata__ is not a JSON object", L);
	size_t n = (size_t)json_object_object_length(m);
	f->meta = calloc(n ? n : 1, sizeof(*f->meta));
	if (!f->meta)
		return msg(err, errlen, -ENOMEM, "%s: out of memory", L);
	json_object_object_foreach(m, key, val) {
		if (!json_object_is_type(val, json_type_string))
			return msg(err, errlen, -EBADMSG,
				   "%s: __metadata__ entry \"%.64s\" is not a string", L, key);
		const char *s = json_object_get_string(val);
		if (strlen(s) != (size_t)json_object_get_string_len(val))
			return msg(err, errlen, -EBADMSG,
				   "%s: __metadata__ entry \"%.64s\" contains a NUL character", L, key);
		struct st_meta_entry *e = &f->meta[f->nmeta];
		e->key = strdup(key);
		e->value = strdup(s);
		f->nmeta++;
		if (!e->key || !e->value)
			return msg(err, errlen, -ENOMEM, "%s: out of memory", L);
	}
	qsort(f->meta, f->nmeta, sizeof(*f->meta), cmp_meta);
	return 0;
}

static int parse_tensor(struct st_file *f, const char *name, struct json_object *o,
			uint64_t data_len, char *err, size_t errlen)
{
	const char *L = f->label;
	struct st_tensor *t = &f->t[f->nt];
	struct json_object *jd, *js, *jo;
	char sh[160];

	if (!json_object_is_type(o, json_type_object))
		return msg(err, errlen, -EBADMSG, "%s: tensor %.64s: not a JSON object", L, name);
	if (!json_object_object_get_ex(o, "dtype", &jd) || !json_object_is_type(jd, json_type_string))
		return msg(err, errlen, -EBADMSG, "%s: tensor %.64s: no \"dtype\" string", L, name);
	if (!json_object_object_get_ex(o, "shape", &js) || !json_object_is_type(js, json_type_array))
		return msg(err, errlen, -EBADMSG, "%s: tensor %.64s: no \"shape\" array", L, name);
	if (!json_object_object_get_ex(o, "data_offsets", &jo) ||
	    !json_object_is_type(jo, json_type_array) || json_object_array_length(jo) != 2)
		return msg(err, errlen, -EBADMSG,
			   "%s: tensor %.64s: no \"data_offsets\" array of 2 integers", L, name);

	/* Name first, so that an error below leaves a tensor st_close can free. */
	t->name = strdup(name);
	if (!t->name)
		return msg(err, errlen, -ENOMEM, "%s: out of memory", L);
	f->nt++;

	if (st_dtype_parse(json_object_get_string(jd), &t->dtype) < 0)
		return msg(err, errlen, -EBADMSG, "%s: tensor %.64s: unknown dtype \"%.32s\"",
			   L, name, json_object_get_string(jd));

	size_t nd = json_object_array_length(js);
	if (nd > ST_MAX_DIMS)
		return msg(err, errlen, -EBADMSG, "%s: tensor %.64s: %zu dimensions (at most %d)",
			   L, name, nd, ST_MAX_DIMS);
	t->ndim = (unsigned)nd;
	t->numel = 1;
	int overflow = 0;
	for (size_t i = 0; i < nd; i++) {
		if (json_u64(json_object_array_get_idx(js, i), &t->shape[i]) < 0)
			return msg(err, errlen, -EBADMSG,
				   "%s: tensor %.64s: shape entry %zu is not a non-negative integer",
				   L, name, i);
		overflow |= __builtin_mul_overflow(t->numel, t->shape[i], &t->numel);
	}
	shape_str(sh, sizeof(sh), t->ndim, t->shape);
	overflow |= __builtin_mul_overflow(t->numel, (uint64_t)st_dtype_size(t->dtype), &t->nbytes);

	uint64_t b, e;
	if (json_u64(json_object_array_get_idx(jo, 0), &b) < 0 ||
	    json_u64(json_object_array_get_idx(jo, 1), &e) < 0)
		return msg(err, errlen, -EBADMSG,
			   "%s: tensor %.64s: data_offsets are not non-negative integers", L, name);
	if (e < b)
		return msg(err, errlen, -EBADMSG,
			   "%s: tensor %.64s: data_offsets [%" PRIu64 ", %" PRIu64 ") end before they begin",
			   L, name, b, e);
	if (overflow || e - b != t->nbytes) {
		if (overflow)
			return msg(err, errlen, -EBADMSG,
				   "%s: tensor %.64s: data_offsets [%" PRIu64 ", %" PRIu64 ") but shape %s of %s overflows 64 bits",
				   L, name, b, e, sh, st_dtype_name(t->dtype));
		return msg(err, errlen, -EBADMSG,
			   "%s: tensor %.64s: data_offsets [%" PRIu64 ", %" PRIu64 ") but shape %s of %s needs %" PRIu64 " bytes",
			   L, name, b, e, sh, st_dtype_name(t->dtype), t->nbytes);
	}
	if (e > data_len)
		return msg(err, errlen, -EBADMSG,
			   "%s: tensor %.64s: data_offsets [%" PRIu64 ", %" PRIu64 ") run past the %" PRIu64 "-byte data section (file truncated?)",
			   L, name, b, e, data_len);
	t->offset = b;
	return 0;
}

/* Tensors must tile the data section: sorted by offset, each begins where
 * the previous ended. Overlaps would let two tensors alias; holes and
 * trailing bytes are refused by the format (and betray a duplicate name
 * that the JSON parser silently collapsed). */
static int check_layout(struct st_file *f, uint64_t data_len, char *err, size_t errlen)
{
	const char *L = f->label;
	uint64_t end = 0;
	const struct st_tensor *last = NULL;

	qsort(f->t, f->nt, sizeof(*f->t), cmp_offset);
	for (size_t i = 0; i < f->nt; i++) {
		const struct st_tensor *t = &f->t[i];
		if (t->nbytes == 0 && t->offset <= end)
			continue;       /* empty: aliases nothing */
		if (t->offset < end)
			return msg(err, errlen, -EBADMSG,
				   "%s: tensor %.64s: data_offsets [%" PRIu64 ", %" PRIu64 ") overlap tensor %.64s [%" PRIu64 ", %" PRIu64 ")",
				   L, t->name, t->offset, t->offset + t->nbytes,
				   last->name, last->offset, last->offset + last->nbytes);
		if (t->offset > end)
			return msg(err, errlen, -EBADMSG,
				   "%s: data bytes [%" PRIu64 ", %" PRIu64 ") belong to no tensor (a hole, or a repeated tensor name)",
				   L, end, t->offset);
		end = t->offset + t->nbytes;
		last = t;
	}
	if (end != data_len)
		return msg(err, errlen, -EBADMSG,
			   "%s: tensors cover %" PRIu64 " bytes of a %" PRIu64 "-byte data section (trailing bytes)",
			   L, end, data_len);
	return 0;
}

static int parse(struct st_file *f, const uint8_t *buf, size_t len, char *err, size_t errlen)
{
	const char *L = f->label;
	struct json_tokener *tok = NULL;
	struct json_object *root = NULL;
	int rc;

	if (len < 8) {
		rc = msg(err, errlen, -EBADMSG,
			 "%s: %zu bytes, too short for the 8-byte header length", L, len);
		goto out;
	}
	uint64_t hlen = get_le64(buf);
	if (hlen > ST_MAX_HEADER) {
		rc = msg(err, errlen, -EBADMSG,
			 "%s: header length %" PRIu64 " exceeds the %u-byte limit (not a safetensors file?)",
			 L, hlen, ST_MAX_HEADER);
		goto out;
	}
	if (hlen > len - 8) {
		rc = msg(err, errlen, -EBADMSG,
			 "%s: header length %" PRIu64 " runs past the end of the %zu-byte file",
			 L, hlen, len);
		goto out;
	}
	if (hlen < 2) {
		rc = msg(err, errlen, -EBADMSG, "%s: header of %" PRIu64 " bytes cannot hold a JSON object",
			 L, hlen);
		goto out;
	}
	const char *hdr = (const char *)buf + 8;
	/* json-c would stop at a NUL and report success on the prefix. */
	const char *nul = memchr(hdr, 0, (size_t)hlen);
	if (nul) {
		rc = msg(err, errlen, -EBADMSG, "%s: header has a NUL byte at offset %td", L, nul - hdr);
		goto out;
	}

	tok = json_tokener_new_ex(ST_MAX_JSON_DEPTH);
	if (!tok) {
		rc = msg(err, errlen, -ENOMEM, "%s: out of memory", L);
		goto out;
	}
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT);
	root = json_tokener_parse_ex(tok, hdr, (int)hlen);
	enum json_tokener_error jerr = json_tokener_get_error(tok);
	size_t end = json_tokener_get_parse_end(tok);
	if (!root) {
		if (jerr == json_tokener_continue)
			rc = msg(err, errlen, -EBADMSG, "%s: header JSON ends early (%" PRIu64 " bytes)",
				 L, hlen);
		else
			rc = msg(err, errlen, -EBADMSG, "%s: header is not valid JSON: %s near byte %zu",
				 L, json_tokener_error_desc(jerr), end);
		goto out;
	}
	for (size_t i = end; i < hlen; i++) {
		char c = hdr[i];
		if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
			rc = msg(err, errlen, -EBADMSG,
				 "%s: header has bytes after its JSON object (at byte %zu)", L, i);
			goto out;
		}
	}
	if (!json_object_is_type(root, json_type_object)) {
		rc = msg(err, errlen, -EBADMSG, "%s: header is a JSON %s, not an object",
			 L, json_type_to_name(json_object_get_type(root)));
		goto out;
	}

	uint64_t data_len = (uint64_t)len - 8 - hlen;
	size_t n = (size_t)json_object_object_length(root);
	f->t = calloc(n ? n : 1, sizeof(*f->t));
	f->by_name = calloc(n ? n : 1, sizeof(*f->by_name));
	if (!f->t || !f->by_name) {
		rc = msg(err, errlen, -ENOMEM, "%s: out of memory", L);
		goto out;
	}
	json_object_object_foreach(root, key, val) {
		if (strcmp(key, "__metadata__") == 0)
			rc = parse_metadata(f, val, err, errlen);
		else
			rc = parse_tensor(f, key, val, data_len, err, errlen);
		if (rc < 0)
			goto out;
	}
	rc = check_layout(f, data_len, err, errlen);
	if (rc < 0)
		goto out;

	const uint8_t *data = buf + 8 + hlen;
	for (size_t i = 0; i < f->nt; i++) {
		f->t[i].data = data + f->t[i].offset;
		f->by_name[i] = &f->t[i];
	}
	qsort(f->by_name, f->nt, sizeof(*f->by_name), cmp_name);
	f->size = len;
	rc = 0;
out:
	json_object_put(root);
	if (tok)
		json_tokener_free(tok);
	return rc;
}

static struct st_file *file_new(const char *label)
{
	struct st_file *f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->label = strdup(label ? label : "safetensors");
	if (!f->label) {
		free(f);
		return NULL;
	}
	return f;
}

int st_open_mem(const void *buf, size_t len, const char *label,
		struct st_file **out, char *err, size_t errlen)
{
	struct st_file *f = file_new(label);
	int rc;

	*out = NULL;
	if (!f)
		return msg(err, errlen, -ENOMEM, "%s: out of memory", label ? label : "safetensors");
	rc = parse(f, buf, len, err, errlen);
	if (rc < 0) {
		st_close(f);
		return rc;
	}
	*out = f;
	return 0;
}

int st_open(const char *path, struct st_file **out, char *err, size_t errlen)
{
	struct st_file *f = NULL;
	struct stat st;
	int fd, rc;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return msg(err, errlen, -errno, "%s: %s", path, strerror(errno));
	if (fstat(fd, &st) < 0) {
		rc = msg(err, errlen, -errno, "%s: fstat: %s", path, strerror(errno));
		goto close_fd;
	}
	if (!S_ISREG(st.st_mode)) {
		rc = msg(err, errlen, -EINVAL, "%s: not a regular file", path);
		goto close_fd;
	}
	if ((uint64_t)st.st_size > SIZE_MAX) {
		rc = msg(err, errlen, -EFBIG, "%s: too large to map", path);
		goto close_fd;
	}
	f = file_new(path);
	if (!f) {
		rc = msg(err, errlen, -ENOMEM, "%s: out of memory", path);
		goto close_fd;
	}
	if (st.st_size > 0) {
		void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			rc = msg(err, errlen, -errno, "%s: mmap: %s", path, strerror(errno));
			goto free_file;
		}
		f->map = map;
		f->map_len = (size_t)st.st_size;
	}
	rc = parse(f, f->map, (size_t)st.st_size, err, errlen);
	if (rc < 0)
		goto free_file;
	close(fd);
	*out = f;
	return 0;

free_file:
	st_close(f);
close_fd:
	close(fd);
	return rc;
}

void st_close(struct st_file *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->nt; i++)
		free((char *)f->t[i].name);
	for (size_t i = 0; i < f->nmeta; i++) {
		free(f->meta[i].key);
		free(f->meta[i].value);
	}
	if (f->map)
		munmap(f->map, f->map_len);
	free(f->t);
	free(f->by_name);
	free(f->meta);
	free(f->label);
	free(f);
}

int st_file_offset(const struct st_file *f, const struct st_tensor *t, uint64_t *off)
{
	if (!f->map)
		return -ENOTSUP;
	*off = (uint64_t)((const uint8_t *)t->data - (const uint8_t *)f->map);
	return 0;
}

size_t st_tensor_count(const struct st_file *f)
{
	return f->nt;
}

const struct st_tensor *st_tensor_at(const struct st_file *f, size_t i)
{
	return i < f->nt ? &f->t[i] : NULL;
}

const struct st_tensor *st_find(const struct st_file *f, const char *name)
{
	size_t lo = 0, hi = f->nt;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct st_tensor *t = f->by_name[mid];
		int c = strcmp(name, t->name);
		if (c == 0)
			return t;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

int st_find_rank(const struct st_file *f, const char *name, unsigned ndim,
		 const struct st_tensor **out, char *err, size_t errlen)
{
	const struct st_tensor *t = st_find(f, name);

	*out = NULL;
	if (!t)
		return msg(err, errlen, -ENOENT, "%s: no tensor \"%s\"", f->label, name);
	if (t->ndim != ndim) {
		char sh[160];
		shape_str(sh, sizeof(sh), t->ndim, t->shape);
		return msg(err, errlen, -EINVAL, "%s: tensor %s has shape %s, expected %u dimensions",
			   f->label, name, sh, ndim);
	}
	*out = t;
	return 0;
}

const char *st_meta(const struct st_file *f, const char *key)
{
	struct st_meta_entry k = { .key = (char *)key };
	const struct st_meta_entry *e = bsearch(&k, f->meta, f->nmeta, sizeof(k), cmp_meta);
	return e ? e->value : NULL;
}

size_t st_meta_count(const struct st_file *f)
{
	return f->nmeta;
}

int st_meta_at(const struct st_file *f, size_t i, const char **key, const char **value)
{
	if (i >= f->nmeta)
		return -ERANGE;
	*key = f->meta[i].key;
	*value = f->meta[i].value;
	return 0;
}

int st_meta_f64(const struct st_file *f, const char *key, double *out)
{
	const char *s = st_meta(f, key);
	char *end;

	if (!s)
		return -ENOENT;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end || errno || !isfinite(v))
		return -EINVAL;
	*out = v;
	return 0;
}

uint64_t st_file_size(const struct st_file *f)
{
	return f->size;
}

/* ------------------------------------------------------------------ writer */

enum { W_DECLARING, W_WRITING, W_COMMITTED, W_FAILED };

struct st_wtensor {
	char *name;
	enum st_dtype dtype;
	unsigned ndim;
	uint64_t shape[ST_MAX_DIMS];
	uint64_t nbytes;
};

struct st_writer {
	char *path;
	char *tmp;
	int fd;
	int state;
	int created;            /* PATH.tmp is ours to unlink on failure */
	struct st_wtensor *t;
	size_t nt, tcap;
	struct st_meta_entry *meta;
	size_t nmeta, mcap;
	uint64_t total;         /* declared data bytes */
	uint64_t written;
	uint64_t header_len;    /* 8 + padded JSON */
	uint64_t flushed;       /* data bytes handed to writeback */
	char err[512];
};

/* Start writeback every so often so that the final fsync does not find
 * gigabytes of dirty pages, and a multi-GiB trace does not crowd the page
 * cache with dirty data. */
#define WRITEBACK_STEP (64u << 20)

/* Record why a call failed. Misuse leaves the writer usable; an I/O error
 * also sets W_FAILED (the file's contents are unknown from then on). */
static int wfail(struct st_writer *w, int rc, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int wfail(struct st_writer *w, int rc, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(w->err, sizeof(w->err), fmt, ap);
	va_end(ap);
	return rc;
}

int st_writer_create(const char *path, struct st_writer **out, char *err, size_t errlen)
{
	struct st_writer *w;

	*out = NULL;
	if (!path || !*path)
		return msg(err, errlen, -EINVAL, "safetensors writer: empty path");
	w = calloc(1, sizeof(*w));
	if (!w)
		return msg(err, errlen, -ENOMEM, "%s: out of memory", path);
	w->fd = -1;
	w->path = strdup(path);
	if (!w->path || asprintf(&w->tmp, "%s.tmp", path) < 0) {
		w->tmp = NULL;
		st_writer_destroy(w);
		return msg(err, errlen, -ENOMEM, "%s: out of memory", path);
	}
	*out = w;
	return 0;
}

int st_writer_meta(struct st_writer *w, const char *key, const char *value)
{
	if (w->state != W_DECLARING)
		return wfail(w, -EINVAL, "%s: metadata added after the header was written", w->path);
	for (size_t i = 0; i < w->nmeta; i++)
		if (strcmp(w->meta[i].key, key) == 0)
			return wfail(w, -EEXIST, "%s: metadata key \"%s\" given twice", w->path, key);
	if (w->nmeta == w->mcap) {
		size_t cap = w->mcap ? 2 * w->mcap : 8;
		void *p = realloc(w->meta, cap * sizeof(*w->meta));
		if (!p)
			return wfail(w, -ENOMEM, "%s: out of memory", w->path);
		w->meta = p;
		w->mcap = cap;
	}
	struct st_meta_entry *e = &w->meta[w->nmeta];
	e->key = strdup(key);
	e->value = strdup(value);
	if (!e->key || !e->value) {
		free(e->key);
		free(e->value);
		return wfail(w, -ENOMEM, "%s: out of memory", w->path);
	}
	w->nmeta++;
	return 0;
}

int st_writer_tensor(struct st_writer *w, const char *name, enum st_dtype dtype,
		     unsigned ndim, const uint64_t *shape)
{
	uint64_t numel = 1, nbytes, total;

	if (w->state != W_DECLARING)
		return wfail(w, -EINVAL, "%s: tensor %s declared after the header was written",
			     w->path, name);
	if (strcmp(name, "__metadata__") == 0)
		return wfail(w, -EINVAL, "%s: \"__metadata__\" is not a tensor name", w->path);
	if (!st_dtype_name(dtype))
		return wfail(w, -EINVAL, "%s: tensor %s: unknown dtype %d", w->path, name, (int)dtype);
	if (ndim > ST_MAX_DIMS)
		return wfail(w, -EINVAL, "%s: tensor %s: %u dimensions (at most %d)",
			     w->path, name, ndim, ST_MAX_DIMS);
	for (size_t i = 0; i < w->nt; i++)
		if (strcmp(w->t[i].name, name) == 0)
			return wfail(w, -EEXIST, "%s: tensor %s declared twice", w->path, name);
	for (unsigned i = 0; i < ndim; i++)
		if (__builtin_mul_overflow(numel, shape[i], &numel))
			return wfail(w, -EOVERFLOW, "%s: tensor %s: shape overflows", w->path, name);
	/* Offsets travel as JSON int64: keep the whole file below 2^62. */
	if (__builtin_mul_overflow(numel, (uint64_t)st_dtype_size(dtype), &nbytes) ||
	    __builtin_add_overflow(w->total, nbytes, &total) || total > (UINT64_C(1) << 62))
		return wfail(w, -EOVERFLOW, "%s: tensor %s: size overflows", w->path, name);
	if (w->nt == w->tcap) {
		size_t cap = w->tcap ? 2 * w->tcap : 8;
		void *p = realloc(w->t, cap * sizeof(*w->t));
		if (!p)
			return wfail(w, -ENOMEM, "%s: out of memory", w->path);
		w->t = p;
		w->tcap = cap;
	}
	struct st_wtensor *t = &w->t[w->nt];
	memset(t, 0, sizeof(*t));
	t->name = strdup(name);
	if (!t->name)
		return wfail(w, -ENOMEM, "%s: out of memory", w->path);
	t->dtype = dtype;
	t->ndim = ndim;
	for (unsigned i = 0; i < ndim; i++)
		t->shape[i] = shape[i];
	t->nbytes = nbytes;
	w->total = total;
	w->nt++;
	return 0;
}

static int write_all(int fd, const void *buf, size_t len)
{
	const char *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len > (1u << 30) ? (1u << 30) : len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* The header JSON: metadata first, tensors in declaration (= data) order. */
static int build_header(struct st_writer *w, char **out, size_t *outlen)
{
	struct json_object *root = json_object_new_object();
	int rc = -ENOMEM;
	uint64_t off = 0;

	*out = NULL;
	if (!root)
		goto out;
	if (w->nmeta) {
		struct json_object *m = json_object_new_object();
		if (!m || json_object_object_add(root, "__metadata__", m) < 0) {
			json_object_put(m);
			goto out;
		}
		for (size_t i = 0; i < w->nmeta; i++) {
			struct json_object *s = json_object_new_string(w->meta[i].value);
			if (!s || json_object_object_add(m, w->meta[i].key, s) < 0) {
				json_object_put(s);
				goto out;
			}
		}
	}
	for (size_t i = 0; i < w->nt; i++) {
		const struct st_wtensor *t = &w->t[i];
		struct json_object *o = json_object_new_object();
		if (!o || json_object_object_add(root, t->name, o) < 0) {
			json_object_put(o);
			goto out;
		}
		struct json_object *dt = json_object_new_string(st_dtype_name(t->dtype));
		struct json_object *sh = json_object_new_array();
		struct json_object *of = json_object_new_array();
		if (!dt || !sh || !of) {
			json_object_put(dt);
			json_object_put(sh);
			json_object_put(of);
			goto out;
		}
		json_object_object_add(o, "dtype", dt);
		json_object_object_add(o, "shape", sh);
		json_object_object_add(o, "data_offsets", of);
		for (unsigned d = 0; d < t->ndim; d++)
			if (json_object_array_add(sh, json_object_new_int64((int64_t)t->shape[d])) < 0)
				goto out;
		if (json_object_array_add(of, json_object_new_int64((int64_t)off)) < 0 ||
		    json_object_array_add(of, json_object_new_int64((int64_t)(off + t->nbytes))) < 0)
			goto out;
		off += t->nbytes;
	}
	size_t len;
	const char *s = json_object_to_json_string_length(root,
		JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &len);
	if (!s)
		goto out;
	/* Pad with spaces (allowed by the format) so the data section starts
	 * aligned: readers can then use the mapping in place. */
	size_t padded = (8 + len + ST_DATA_ALIGN - 1) / ST_DATA_ALIGN * ST_DATA_ALIGN - 8;
	if (padded > ST_MAX_HEADER) {
		rc = -E2BIG;
		goto out;
	}
	char *buf = malloc(8 + padded);
	if (!buf)
		goto out;
	for (int i = 0; i < 8; i++)
		buf[i] = (char)((uint64_t)padded >> (8 * i));
	memcpy(buf + 8, s, len);
	memset(buf + 8 + len, ' ', padded - len);
	*out = buf;
	*outlen = 8 + padded;
	rc = 0;
out:
	json_object_put(root);
	return rc;
}

int st_writer_begin(struct st_writer *w)
{
	char *hdr = NULL;
	size_t hlen;
	int rc;

	if (w->state != W_DECLARING)
		return wfail(w, -EINVAL, "%s: header written twice", w->path);
	rc = build_header(w, &hdr, &hlen);
	if (rc == -E2BIG)
		return wfail(w, rc, "%s: header exceeds %u bytes", w->path, ST_MAX_HEADER);
	if (rc < 0)
		return wfail(w, rc, "%s: out of memory building the header", w->path);
	w->state = W_WRITING;
	/* O_NOFOLLOW: a stale PATH.tmp that is a symlink must not redirect us. */
	w->fd = open(w->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
	if (w->fd < 0) {
		w->state = W_FAILED;
		rc = wfail(w, -errno, "%s: %s", w->tmp, strerror(errno));
		goto out;
	}
	w->created = 1;
	w->header_len = hlen;
	/* Reserve the space now: a full disk should fail in the first second,
	 * not after minutes of generation. Filesystems without it are fine. */
	rc = posix_fallocate(w->fd, 0, (off_t)(hlen + w->total));
	if (rc && rc != EOPNOTSUPP && rc != EINVAL) {
		w->state = W_FAILED;
		rc = wfail(w, -rc, "%s: reserving %" PRIu64 " bytes: %s", w->tmp,
			   hlen + w->total, strerror(rc));
		goto out;
	}
	rc = write_all(w->fd, hdr, hlen);
	if (rc < 0) {
		w->state = W_FAILED;
		rc = wfail(w, rc, "%s: write: %s", w->tmp, strerror(-rc));
	}
out:
	free(hdr);
	return rc;
}

int st_writer_write(struct st_writer *w, const void *buf, size_t len)
{
	int rc;

	if (w->state != W_WRITING)
		return wfail(w, -EINVAL, "%s: write outside begin..commit", w->path);
	if (len > w->total - w->written)
		return wfail(w, -EOVERFLOW,
			     "%s: %zu bytes written past the declared %" PRIu64 "-byte data section",
			     w->path, len - (size_t)(w->total - w->written), w->total);
	rc = write_all(w->fd, buf, len);
	if (rc < 0) {
		w->state = W_FAILED;
		return wfail(w, rc, "%s: write: %s", w->tmp, strerror(-rc));
	}
	w->written += len;
	if (w->written - w->flushed >= WRITEBACK_STEP) {
		/* Advisory: an error here resurfaces at fsync. */
		(void)sync_file_range(w->fd, (off_t)(w->header_len + w->flushed),
				      (off_t)(w->written - w->flushed), SYNC_FILE_RANGE_WRITE);
		w->flushed = w->written;
	}
	return 0;
}

uint64_t st_writer_total(const struct st_writer *w)
{
	return w->total;
}

uint64_t st_writer_written(const struct st_writer *w)
{
	return w->written;
}

uint64_t st_writer_file_size(const struct st_writer *w)
{
	return w->header_len + w->total;
}

static int fsync_dir(const char *path)
{
	char *dir = strdup(path);
	int fd, rc = 0;

	if (!dir)
		return -ENOMEM;
	char *slash = strrchr(dir, '/');
	if (!slash)
		strcpy(dir, ".");
	else if (slash == dir)
		dir[1] = 0;
	else
		*slash = 0;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		rc = -errno;
	else if (fsync(fd) < 0 && errno != EINVAL)
		rc = -errno;
	if (fd >= 0)
		close(fd);
	free(dir);
	return rc;
}

int st_writer_commit(struct st_writer *w)
{
	int rc;

	if (w->state != W_WRITING)
		return wfail(w, -EINVAL, "%s: commit without a successful begin", w->path);
	if (w->written != w->total)
		return wfail(w, -EIO, "%s: %" PRIu64 " of %" PRIu64 " data bytes written",
			     w->path, w->written, w->total);
	if (fsync(w->fd) < 0) {
		w->state = W_FAILED;
		return wfail(w, -errno, "%s: fsync: %s", w->tmp, strerror(errno));
	}
	rc = close(w->fd);
	w->fd = -1;
	if (rc < 0 || rename(w->tmp, w->path) < 0) {
		w->state = W_FAILED;
		if (rc < 0)
			return wfail(w, -errno, "%s: close: %s", w->tmp, strerror(errno));
		return wfail(w, -errno, "rename %s to %s: %s", w->tmp, w->path, strerror(errno));
	}
	w->state = W_COMMITTED;
	rc = fsync_dir(w->path);
	if (rc < 0)
		return wfail(w, rc, "%s: fsync of the directory: %s", w->path, strerror(-rc));
	return 0;
}

const char *st_writer_error(const struct st_writer *w)
{
	return w->err;
}

void st_writer_destroy(struct st_writer *w)
{
	if (!w)
		return;
	if (w->fd >= 0)
		close(w->fd);
	if (w->created && w->state != W_COMMITTED)
		unlink(w->tmp);
	for (size_t i = 0; i < w->nt; i++)
		free(w->t[i].name);
	for (size_t i = 0; i < w->nmeta; i++) {
		free(w->meta[i].key);
		free(w->meta[i].value);
	}
	free(w->t);
	free(w->meta);
	free(w->path);
	free(w->tmp);
	free(w);
}
