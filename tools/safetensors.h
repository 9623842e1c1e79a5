/*
 * safetensors: the one reader and writer of trace files shared by every tool
 * (mnemo-kvgen writes traces; mnemo-preload and mnemo-bench read them).
 *
 * Glossary
 *   header        the 8-byte little-endian length n, then n bytes of JSON:
 *                 one object whose keys are tensor names (plus the optional
 *                 "__metadata__"), each mapping to {"dtype", "shape",
 *                 "data_offsets"}. The JSON may be padded with trailing
 *                 spaces.
 *   data section  everything after the header, to the end of the file.
 *   data_offsets  [begin, end): a tensor's byte range, relative to the start
 *                 of the data section. Tensors may not overlap and must
 *                 cover the data section exactly (no holes, no trailing
 *                 bytes), as the format requires.
 *   metadata      "__metadata__": a flat map from string to string.
 *
 * Every length, count, offset and shape in a file is treated as hostile: a
 * reader refuses the whole file, with a message naming the file and the
 * tensor, rather than hand out a pointer that a count could walk off.
 *
 * Tensor data is row-major and little-endian, as the format defines. Files
 * written here start their data section at a multiple of 64 bytes; a file
 * from another writer may not, so a reader that loads elements wider than a
 * byte from st_tensor.data must not assume alignment (use memcpy).
 */
#ifndef MNEMO_TOOLS_SAFETENSORS_H
#define MNEMO_TOOLS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/** Element types of the safetensors format. */
enum st_dtype {
	ST_BOOL,
	ST_U8,
	ST_I8,
	ST_F8_E5M2,
	ST_F8_E4M3,
	ST_I16,
	ST_U16,
	ST_F16,
	ST_BF16,
	ST_I32,
	ST_U32,
	ST_F32,
	ST_F64,
	ST_I64,
	ST_U64,
	ST_DTYPE_COUNT
};

/** Most dimensions a tensor may have; a file with more is refused. */
#define ST_MAX_DIMS 8
/** Largest header accepted (the format's own limit). */
#define ST_MAX_HEADER 100000000u
/** Deepest JSON nesting accepted in a header (a valid one needs 3). */
#define ST_MAX_JSON_DEPTH 8
/** Alignment of the data section in files this writer produces. */
#define ST_DATA_ALIGN 64

/** The name used in files ("BF16"), or NULL for a value out of range. */
const char *st_dtype_name(enum st_dtype t);

/** Bytes per element, or 0 for a value out of range. */
size_t st_dtype_size(enum st_dtype t);

/**
 * Parse a dtype name as the format spells it ("F32", "BF16", ...).
 * @return 0 and *out set, or -EINVAL for an unknown name.
 */
int st_dtype_parse(const char *name, enum st_dtype *out);

/** One tensor of an open file. Everything points into the file's storage. */
struct st_tensor {
	const char *name;               /**< NUL-terminated, owned by the file */
	enum st_dtype dtype;
	unsigned ndim;                  /**< 0 (a scalar) .. ST_MAX_DIMS */
	uint64_t shape[ST_MAX_DIMS];    /**< entries past ndim are 0 */
	uint64_t numel;                 /**< product of the shape (1 for a scalar) */
	uint64_t nbytes;                /**< numel * st_dtype_size(dtype) */
	uint64_t offset;                /**< begin of data_offsets */
	const void *data;               /**< nbytes bytes, maybe unaligned */
};

/** An open, validated file. Opaque. */
struct st_file;

/**
 * Open @p path, map it read-only and validate the whole header.
 *
 * @param path    file to open
 * @param out     on success, the open file; release with st_close()
 * @param err     receives a one-line message naming the file on failure
 *                (may be NULL)
 * @param errlen  size of @p err
 * @return 0; -errno from open/fstat/mmap; -EBADMSG for a malformed file;
 *         -ENOMEM.
 *
 * Tensor data stays mapped until st_close(); nothing is read until used. If
 * another process truncates the file meanwhile, touching the data raises
 * SIGBUS, as with any mapping.
 */
int st_open(const char *path, struct st_file **out, char *err, size_t errlen);

/**
 * Validate a file image already in memory (a fuzzer's input, a test's
 * buffer). The caller keeps @p buf alive and unchanged until st_close().
 *
 * @param label  name used in messages (e.g. the file name)
 * @return as st_open(), without the I/O errors.
 */
int st_open_mem(const void *buf, size_t len, const char *label,
		struct st_file **out, char *err, size_t errlen);

/** Unmap and free. NULL is allowed. */
void st_close(struct st_file *f);

/**
 * Where tensor @p t's data starts in the file, for reading it with pread()
 * instead of through the mapping.
 * @return 0; -ENOTSUP for a file opened with st_open_mem().
 */
int st_file_offset(const struct st_file *f, const struct st_tensor *t, uint64_t *off);

/** Tensors in the file, in data order. */
size_t st_tensor_count(const struct st_file *f);

/** Tensor @p i (0 .. st_tensor_count()-1) in data order, or NULL. */
const struct st_tensor *st_tensor_at(const struct st_file *f, size_t i);

/** The tensor called @p name, or NULL. Valid until st_close(). */
const struct st_tensor *st_find(const struct st_file *f, const char *name);

/**
 * The tensor called @p name, checked to have @p ndim dimensions.
 * @return 0; -ENOENT when missing; -EINVAL for another rank. @p err says
 *         which, naming the file.
 */
int st_find_rank(const struct st_file *f, const char *name, unsigned ndim,
		 const struct st_tensor **out, char *err, size_t errlen);

/** Metadata value for @p key, or NULL. Valid until st_close(). */
const char *st_meta(const struct st_file *f, const char *key);

/** Metadata entries, sorted by key. */
size_t st_meta_count(const struct st_file *f);

/** Entry @p i of the metadata: 0, or -ERANGE past the end. */
int st_meta_at(const struct st_file *f, size_t i, const char **key, const char **value);

/**
 * Metadata value for @p key as a finite number.
 * @return 0; -ENOENT when absent; -EINVAL when not a finite number.
 */
int st_meta_f64(const struct st_file *f, const char *key, double *out);

/** Size in bytes of the file (or buffer) behind @p f. */
uint64_t st_file_size(const struct st_file *f);

/**
 * Streaming writer: declare metadata and tensors, call st_writer_begin()
 * (which writes the header), then pass every tensor's bytes in declaration
 * order through st_writer_write(), in chunks of any size, and finish with
 * st_writer_commit(). Only the header and one chunk are ever in memory.
 *
 * The file is written to PATH.tmp, fsync'ed, renamed to PATH and the
 * directory fsync'ed, so PATH is either the old file or the complete new one.
 *
 * Every call returns 0 or a negative errno; the reason is in
 * st_writer_error(). A refused call (a repeated name, a write past the
 * declared size) changes nothing; after an I/O error only
 * st_writer_destroy() is useful.
 */
struct st_writer;

/**
 * A writer for @p path (copied). Nothing is created on disk yet.
 * @return 0; -ENOMEM; -EINVAL for an empty path (message in @p err).
 */
int st_writer_create(const char *path, struct st_writer **out, char *err, size_t errlen);

/** Add a "__metadata__" entry. -EEXIST for a repeated key; -EINVAL after begin. */
int st_writer_meta(struct st_writer *w, const char *key, const char *value);

/**
 * Declare the next tensor. Data is laid out in declaration order.
 * @return 0; -EEXIST for a repeated name; -EINVAL for "__metadata__", an
 *         unknown dtype, ndim > ST_MAX_DIMS, a call after begin;
 *         -EOVERFLOW when the sizes overflow.
 */
int st_writer_tensor(struct st_writer *w, const char *name, enum st_dtype dtype,
		     unsigned ndim, const uint64_t *shape);

/** Open PATH.tmp, reserve its size and write the header. */
int st_writer_begin(struct st_writer *w);

/**
 * Append @p len bytes of tensor data (any chunking; tensors back to back in
 * declaration order). -EOVERFLOW when it goes past the declared total.
 */
int st_writer_write(struct st_writer *w, const void *buf, size_t len);

/** Bytes of tensor data declared in total, and written so far. */
uint64_t st_writer_total(const struct st_writer *w);
uint64_t st_writer_written(const struct st_writer *w);

/** Size the complete file will have (header included); valid after begin. */
uint64_t st_writer_file_size(const struct st_writer *w);

/**
 * Check every declared byte was written, fsync, rename PATH.tmp to PATH,
 * fsync the directory. -EIO (message says how many bytes are missing) if
 * the data is short.
 */
int st_writer_commit(struct st_writer *w);

/** The message of the last failure ("" if none). Valid until destroy. */
const char *st_writer_error(const struct st_writer *w);

/** Free; if not committed, close and unlink PATH.tmp. NULL is allowed. */
void st_writer_destroy(struct st_writer *w);

#endif
