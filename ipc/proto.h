/*
 * Wire protocol v1: frame header and one encode/decode pair per message.
 * ipc/PROTOCOL.md is the specification; this header mirrors it.
 *
 * Encoders append to a growable buffer (struct wbuf). Decoders read a
 * payload that came from the network and trust nothing in it: every count
 * is checked against the limits below before it is used, and the payload
 * must be consumed exactly. Decoded bulk fields (tensors, id arrays) point
 * into the payload; they live as long as the payload buffer does.
 */
#ifndef MNEMO_IPC_PROTO_H
#define MNEMO_IPC_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PROTO_MAGIC 0x4F4D4E4Du
#define PROTO_VERSION 1u
#define PROTO_HEADER_SIZE 32u
#define PROTO_FLAG_REPLY 1u

#define PROTO_MAX_NAME 255u
#define PROTO_MAX_LAYERS 1024u
#define PROTO_MAX_HEADS 1024u
#define PROTO_MAX_GROUP 64u
#define PROTO_MAX_HEAD_DIM 1024u
#define PROTO_MAX_TOKENS 0xFFFFFFFFull
#define PROTO_MAX_FETCH_IDS (1u << 20)
#define PROTO_MAX_LIST 4096u
#define PROTO_MAX_ERRMSG 255u
#define PROTO_DEFAULT_MAX_FRAME (64u << 20)

enum proto_op {
	OP_HELLO = 1,
	OP_CREATE = 2,
	OP_APPEND = 3,
	OP_SEAL = 4,
	OP_ATTEND = 5,
	OP_FETCH = 6,
	OP_DROP = 7,
	OP_STAT = 8,
	OP_LIST = 9,
	OP_SHM_ATTACH = 10,
	OP_INDEX = 11,
	OP_TOKENS = 12,
	OP_LOOKUP = 13,
	OP_SHARE = 14,
	OP_QUERIES = 15,
	OP_SURPRISE = 16,
	OP_CONTINUE = 17,
	OP_COUNT
};

/** Name of an opcode for logs, "?" when unknown. */
const char *proto_op_name(uint32_t op);

struct proto_header {
	uint32_t magic;
	uint16_t version;
	uint16_t opcode;
	uint32_t flags;
	int32_t status;
	uint64_t req_id;
	uint32_t length;
	uint32_t reserved;
};

void proto_header_encode(uint8_t out[PROTO_HEADER_SIZE], const struct proto_header *h);
void proto_header_decode(const uint8_t in[PROTO_HEADER_SIZE], struct proto_header *h);
/**
 * Check a decoded header against the framing rules.
 * @param max_frame  largest payload accepted
 * @param want_reply true on the client side (frames must be replies)
 * @return 0, -EBADMSG (magic, flags, reserved), -EPROTONOSUPPORT (version),
 *         -EMSGSIZE (length over max_frame)
 */
int proto_header_check(const struct proto_header *h, uint32_t max_frame, bool want_reply);

/* ---- growable output buffer ---- */

struct wbuf {
	uint8_t *data;
	size_t len;
	size_t cap;
	int err;        /* sticky: the first -ENOMEM */
};

void wbuf_init(struct wbuf *b);
void wbuf_free(struct wbuf *b);
/** Reserve @p n bytes at the end and return them (NULL and b->err on failure). */
uint8_t *wbuf_reserve(struct wbuf *b, size_t n);
void wbuf_put(struct wbuf *b, const void *p, size_t n);
void wbuf_u16(struct wbuf *b, uint16_t v);
void wbuf_u32(struct wbuf *b, uint32_t v);
void wbuf_u64(struct wbuf *b, uint64_t v);
void wbuf_f32(struct wbuf *b, float v);
void wbuf_str(struct wbuf *b, const char *s, size_t n);
/** Hand the bytes to the caller (who frees them with free()); the buffer is reset. */
uint8_t *wbuf_steal(struct wbuf *b, size_t *len);

/* ---- bounded input cursor ---- */

struct rbuf {
	const uint8_t *p;
	size_t len;
	size_t off;
	int err;        /* sticky: -EPROTO once anything was short */
};

void rbuf_init(struct rbuf *r, const void *p, size_t len);
uint16_t rbuf_u16(struct rbuf *r);
uint32_t rbuf_u32(struct rbuf *r);
uint64_t rbuf_u64(struct rbuf *r);
float rbuf_f32(struct rbuf *r);
/** Borrow @p n bytes; NULL (and r->err) if fewer remain. */
const uint8_t *rbuf_bytes(struct rbuf *r, size_t n);
/** Borrow a str of at most @p max bytes; NULL on error. */
const char *rbuf_str(struct rbuf *r, size_t max, uint16_t *n);
/** 0 when everything was read and nothing is left, else -EPROTO. */
int rbuf_end(const struct rbuf *r);

/* ---- messages ---- */

struct proto_geometry {
	uint32_t n_layers;
	uint32_t n_kv_heads;
	uint32_t n_q_heads;
	uint32_t head_dim;
	uint32_t dtype;
	float rope_theta;
	uint32_t flags;
};

/** -EINVAL with a reason in @p why when a geometry breaks a limit. */
int proto_geometry_check(const struct proto_geometry *g, const char **why);
/** Bytes per element of a wire dtype, 0 if unknown. */
size_t proto_dtype_size(uint32_t dtype);

struct proto_ctxref {
	uint64_t id;
	const char *name;   /* borrowed, not terminated */
	uint16_t name_len;
};

/* SHARE: a ctxref, then u32 shared (0 or 1). */
struct msg_share_req {
	struct proto_ctxref ref;
	uint32_t shared;
};
#define PROTO_CTX_SHARED 1u   /* context record flags */

struct msg_hello_req { uint32_t proto; uint32_t flags; };
struct msg_hello_rep {
	uint32_t proto, block_tokens, max_frame, workers, peer_uid;
	uint64_t host_budget;
	const char *version;
	uint16_t version_len;
};

struct msg_create_req {
	const char *name;
	uint16_t name_len;
	struct proto_geometry geom;
};
struct msg_create_rep { uint64_t id; };
/* A continuation of a sealed context (PROTOCOL.md, CONTINUE); the reply is a msg_create_rep. */
struct msg_continue_req {
	uint64_t parent;
	const char *name;
	uint16_t name_len;
};

enum { PROTO_SRC_INLINE = 0, PROTO_SRC_SHM = 1 };
/* APPEND's u32 source carries the source in its low byte and flags above */
#define PROTO_SRC_MASK 0xffu
#define PROTO_APPEND_STREAM 0x100u   /* whole blocks straight to SSD, not kept in RAM */
#define PROTO_APPEND_SYNC 0x200u     /* everything the context wrote is durable at the reply */
#define PROTO_APPEND_FLAGS (PROTO_APPEND_STREAM | PROTO_APPEND_SYNC)

struct msg_append_req {
	uint64_t ctx;
	uint32_t layer_begin, layer_count;
	uint64_t token_begin;
	uint32_t n_tokens;
	uint32_t source;
	uint32_t flags;         /* PROTO_APPEND_*: on the wire, OR'ed into source */
	uint64_t shm_offset, shm_length;
	const uint8_t *data;    /* inline source: borrowed */
	size_t data_len;
};
struct msg_append_rep { uint64_t layer_tokens, context_tokens; };

struct msg_attend_req {
	uint64_t ctx;
	uint32_t layer, policy;
	uint64_t token_begin, token_end;
	uint32_t budget;
	uint16_t sinks, window;  /* tokens at the range's start / end always attended exactly */
	const uint8_t *q;       /* n_q x head_dim f32, little-endian, borrowed */
	size_t q_len;           /* bytes; the handler checks it against the geometry */
};
struct msg_index_req {
	uint64_t ctx;
	uint32_t policy, layer_begin, layer_count;   /* layer_count 0: to the last layer */
};
struct msg_index_rep {
	uint64_t built, loaded, present, build_ns;
};
/* Prefix reuse (PROTOCOL.md, TOKENS and LOOKUP). */
#define PROTO_CHUNK_TOKENS 256u
#define PROTO_MAX_TOKEN_IDS (1u << 22)   /* ids per TOKENS or LOOKUP: 16 MiB */
struct msg_tokens_req {
	uint64_t ctx, salt, token_begin;
	uint32_t n;
	const uint8_t *ids;     /* n u32, little-endian, borrowed */
};
struct msg_tokens_rep {
	uint64_t tokens, chunks;
};
/* Prefill queries of one layer (PROTOCOL.md, QUERIES). */
struct msg_queries_req {
	uint64_t ctx;
	uint32_t layer, n_positions;
	uint64_t first;         /* ordinal of the first position: the positions the layer was sent before */
	const uint8_t *q;       /* [n_q_heads][n_positions][head_dim] f32, borrowed */
	size_t q_len;           /* bytes; the handler checks it against the geometry */
};
struct msg_queries_rep {
	uint64_t kept, seen;    /* positions the layer keeps, and has been sent */
};
/* Per-token surprise of a context (PROTOCOL.md, SURPRISE). */
struct msg_surprise_req {
	uint64_t ctx;
	uint64_t first;         /* the first token's index: the tokens the context was sent surprise for before */
	uint32_t n;
	const uint8_t *s;       /* [n] f32, borrowed */
};
struct msg_surprise_rep {
	uint64_t seen, events;  /* tokens with surprise so far, events their boundaries start */
};
enum { PROTO_LOOKUP_IDS = 0, PROTO_LOOKUP_HASHES = 1 };
struct msg_lookup_req {
	uint64_t salt;
	uint32_t kind, n;       /* n ids (u32) or n chunk hashes (u64) */
	const uint8_t *data;    /* borrowed */
};
struct msg_lookup_rep {
	uint64_t ctx, tokens;
	uint32_t probes;
};

/**
 * Hash of one chunk of PROTO_CHUNK_TOKENS token ids in a context's chain:
 * XXH3-64 of the ids (u32 little-endian) seeded with prev ^ salt, where
 * prev is the previous chunk's hash (0 for the first chunk).
 */
uint64_t proto_chunk_hash(uint64_t prev, uint64_t salt, const uint32_t *ids);

struct msg_attend_rep {
	uint32_t n_q_heads, head_dim;
	uint64_t scanned, loaded, compute_ns;
	const float *o;         /* encode: source; decode: borrowed (may be unaligned: use memcpy) */
	const float *lse;
};

struct msg_fetch_req {
	uint64_t ctx;
	uint32_t layer, n_ids, dest, flags;
	uint64_t shm_offset, shm_length;
	const uint8_t *ids;     /* n_ids u64, borrowed */
};
struct msg_fetch_rep {
	uint32_t n_ids, dest;
	uint64_t bytes;
	const uint8_t *data;    /* inline dest only, borrowed */
};

struct msg_list_req { uint32_t offset, max; };

enum { PROTO_STATE_OPEN = 1, PROTO_STATE_SEALED = 2, PROTO_STATE_RECOVERED = 3 };

struct proto_ctx_record {
	uint64_t id;
	const char *name;
	uint16_t name_len;
	struct proto_geometry geom;
	uint32_t state, owner_uid;
	uint64_t tokens, bytes;
	uint32_t flags;         /* PROTO_CTX_SHARED */
	uint64_t surprise_seen, events;  /* SURPRISE: tokens sent, events the online rule started */
	uint32_t segmentation;  /* PROTO_SEG_*: what episodic's last build segmented by */
	uint64_t parent, parent_tokens; /* a continuation's parent and the tokens of it it follows (0: none) */
};
enum { PROTO_SEG_NONE = 0, PROTO_SEG_SURPRISE = 1, PROTO_SEG_NOVELTY = 2 };

struct proto_daemon_record {
	uint64_t uptime_ms;
	uint32_t connections, contexts, workers, block_tokens;
	uint64_t host_used, host_budget, requests, errors;
	uint64_t ssd_used, ssd_max;           /* ssd_max UINT64_MAX: no SSD tier */
	uint64_t hits, misses, evictions;     /* block pins served from RAM / read from SSD */
	uint64_t ssd_reads, ssd_writes, ssd_read_bytes, ssd_write_bytes, bad_blocks;
	uint64_t index_builds, index_loads, index_bytes;
	uint64_t policy_attends, policy_pick_ns, policy_search_ns, policy_fold_ns, policy_pin_ns;
	uint64_t cpu_ns;                      /* the daemon's user + system CPU time */
	const char *kernels;
	uint16_t kernels_len;
};

enum { PROTO_STAT_CONTEXT = 1, PROTO_STAT_DAEMON = 2 };

struct msg_shm_attach_req { uint64_t size; };

/* Each encoder appends the payload (not the header) to @p b; check b->err.
 * Each decoder returns 0 or -EPROTO (malformed) / -EMSGSIZE (over a limit). */

void msg_hello_req_encode(struct wbuf *b, const struct msg_hello_req *m);
int msg_hello_req_decode(const void *p, size_t n, struct msg_hello_req *m);
void msg_hello_rep_encode(struct wbuf *b, const struct msg_hello_rep *m);
int msg_hello_rep_decode(const void *p, size_t n, struct msg_hello_rep *m);

void msg_create_req_encode(struct wbuf *b, const struct msg_create_req *m);
int msg_create_req_decode(const void *p, size_t n, struct msg_create_req *m);
void msg_create_rep_encode(struct wbuf *b, const struct msg_create_rep *m);
void msg_continue_req_encode(struct wbuf *b, const struct msg_continue_req *m);
int msg_continue_req_decode(const void *p, size_t n, struct msg_continue_req *m);
int msg_create_rep_decode(const void *p, size_t n, struct msg_create_rep *m);

/** Encodes the fixed part and, for an inline source, data/data_len. */
void msg_append_req_encode(struct wbuf *b, const struct msg_append_req *m);
int msg_append_req_decode(const void *p, size_t n, struct msg_append_req *m);
void msg_append_rep_encode(struct wbuf *b, const struct msg_append_rep *m);
int msg_append_rep_decode(const void *p, size_t n, struct msg_append_rep *m);

void msg_share_req_encode(struct wbuf *b, const struct msg_share_req *m);
int msg_share_req_decode(const void *p, size_t n, struct msg_share_req *m);
void msg_ctxref_encode(struct wbuf *b, const struct proto_ctxref *m);
int msg_ctxref_decode(const void *p, size_t n, struct proto_ctxref *m);
void msg_u64_encode(struct wbuf *b, uint64_t v);
int msg_u64_decode(const void *p, size_t n, uint64_t *v);

void msg_attend_req_encode(struct wbuf *b, const struct msg_attend_req *m);
int msg_attend_req_decode(const void *p, size_t n, struct msg_attend_req *m);
void msg_attend_rep_encode(struct wbuf *b, const struct msg_attend_rep *m);
int msg_attend_rep_decode(const void *p, size_t n, struct msg_attend_rep *m);

void msg_index_req_encode(struct wbuf *b, const struct msg_index_req *m);
int msg_index_req_decode(const void *p, size_t n, struct msg_index_req *m);
void msg_index_rep_encode(struct wbuf *b, const struct msg_index_rep *m);
int msg_index_rep_decode(const void *p, size_t n, struct msg_index_rep *m);

void msg_tokens_req_encode(struct wbuf *b, const struct msg_tokens_req *m);
int msg_tokens_req_decode(const void *p, size_t n, struct msg_tokens_req *m);
void msg_tokens_rep_encode(struct wbuf *b, const struct msg_tokens_rep *m);
int msg_tokens_rep_decode(const void *p, size_t n, struct msg_tokens_rep *m);
void msg_queries_req_encode(struct wbuf *b, const struct msg_queries_req *m);
int msg_queries_req_decode(const void *p, size_t n, struct msg_queries_req *m);
void msg_queries_rep_encode(struct wbuf *b, const struct msg_queries_rep *m);
int msg_queries_rep_decode(const void *p, size_t n, struct msg_queries_rep *m);
void msg_surprise_req_encode(struct wbuf *b, const struct msg_surprise_req *m);
int msg_surprise_req_decode(const void *p, size_t n, struct msg_surprise_req *m);
void msg_surprise_rep_encode(struct wbuf *b, const struct msg_surprise_rep *m);
int msg_surprise_rep_decode(const void *p, size_t n, struct msg_surprise_rep *m);
void msg_lookup_req_encode(struct wbuf *b, const struct msg_lookup_req *m);
int msg_lookup_req_decode(const void *p, size_t n, struct msg_lookup_req *m);
void msg_lookup_rep_encode(struct wbuf *b, const struct msg_lookup_rep *m);
int msg_lookup_rep_decode(const void *p, size_t n, struct msg_lookup_rep *m);

void msg_fetch_req_encode(struct wbuf *b, const struct msg_fetch_req *m);
int msg_fetch_req_decode(const void *p, size_t n, struct msg_fetch_req *m);
/** Inline dest: appends m->bytes of m->data. */
void msg_fetch_rep_encode(struct wbuf *b, const struct msg_fetch_rep *m);
int msg_fetch_rep_decode(const void *p, size_t n, struct msg_fetch_rep *m);

void msg_list_req_encode(struct wbuf *b, const struct msg_list_req *m);
int msg_list_req_decode(const void *p, size_t n, struct msg_list_req *m);

void proto_ctx_record_encode(struct wbuf *b, const struct proto_ctx_record *m);
int proto_ctx_record_read(struct rbuf *r, struct proto_ctx_record *m);
void proto_daemon_record_encode(struct wbuf *b, const struct proto_daemon_record *m);
int proto_daemon_record_read(struct rbuf *r, struct proto_daemon_record *m);

void msg_shm_attach_req_encode(struct wbuf *b, const struct msg_shm_attach_req *m);
int msg_shm_attach_req_decode(const void *p, size_t n, struct msg_shm_attach_req *m);

/** Copy @p n little-endian f32 from the wire (any alignment) into @p dst. */
void proto_f32_from_wire(float *dst, const void *src, size_t n);
/** @p n little-endian u32 from the wire (any alignment). */
void proto_u32_from_wire(uint32_t *dst, const void *src, size_t n);

/** Error payload: the message is cut at PROTO_MAX_ERRMSG bytes. */
void msg_error_encode(struct wbuf *b, const char *msg);
int msg_error_decode(const void *p, size_t n, const char **msg, uint16_t *len);

#endif
