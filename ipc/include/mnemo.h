/**
 * @file mnemo.h
 * @brief libmnemo: the client library of the mnemo KV-cache daemon.
 *
 * A client connects to mnemod's Unix socket, creates contexts (a token
 * sequence's keys and values for every layer and KV head), appends K/V to
 * them, and asks for attention over them: mnemod returns, per query head, the
 * partial output o and its log-sum-exp lse, which the client merges with its
 * own partial over the tokens it keeps (see mnemo_merge()).
 *
 * Conventions
 * - Every function returns 0 on success or a negative errno; the daemon's
 *   message for the last failure is mnemo_last_error().
 * - A mnemo_client is not thread-safe: use one per thread (they are cheap).
 * - Synchronous calls send one request and wait for its reply. To keep
 *   several requests in flight, use the mnemo_submit_*() calls, which return
 *   a request id at once, and collect each reply with mnemo_wait_*(). The
 *   daemon executes one connection's requests in order.
 * - Tensors are little-endian in the context's dtype (f32, f16 or bf16);
 *   queries and outputs are always f32.
 */
#ifndef MNEMO_H
#define MNEMO_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Element types of stored keys and values. */
enum mnemo_dtype {
	MNEMO_F32 = 0,
	MNEMO_F16 = 1,
	MNEMO_BF16 = 2,
};

/** Retrieval policies an ATTEND may ask for. */
enum mnemo_policy {
	MNEMO_POLICY_EXACT = 0,      /**< every token of the range */
	MNEMO_POLICY_QUEST = 1,      /**< Quest: per-page key bounds */
	MNEMO_POLICY_BLOCKS = 2,     /**< InfLLM: blocks with representative keys */
	MNEMO_POLICY_CENTROIDS = 3,  /**< Squeezed Attention / RetroInfer clusters */
	MNEMO_POLICY_CENTROIDS2 = 4, /**< hierarchical clusters */
	MNEMO_POLICY_FAISS_IVF = 5,  /**< off-the-shelf ANNS baseline */
	MNEMO_POLICY_FAISS_HNSW = 6, /**< off-the-shelf ANNS baseline */
	MNEMO_POLICY_ANN = 7,        /**< RetrievalAttention's query-aware graph; built from the
				      *   prefill queries of mnemo_queries() (-ENOTSUP without) */
	MNEMO_POLICY_EPISODIC = 8,   /**< EM-LLM's events (from mnemo_surprise(), else key novelty),
				      *   retrieved by similarity and temporal contiguity */
};

/** A model's KV shape. */
struct mnemo_geometry {
	uint32_t n_layers;
	uint32_t n_kv_heads;
	uint32_t n_q_heads;       /**< a multiple of n_kv_heads (GQA) */
	uint32_t head_dim;
	enum mnemo_dtype dtype;
	float rope_theta;         /**< 0 when unknown */
};

/** What HELLO reports about the daemon. */
struct mnemo_server_info {
	uint32_t proto;
	uint32_t block_tokens;
	uint32_t max_frame;       /**< largest payload the daemon accepts */
	uint32_t workers;
	uint32_t peer_uid;        /**< the uid the daemon sees for this client */
	uint64_t host_budget;
	char version[64];
};

/** One context as STAT and LIST report it. */
struct mnemo_context_info {
	uint64_t id;
	char name[256];
	struct mnemo_geometry geom;
	uint32_t sealed;          /**< 0 open, 1 sealed */
	uint32_t recovered;       /**< open when the daemon stopped; holds its durable prefix */
	uint32_t owner_uid;
	uint64_t tokens;          /**< complete tokens (the shortest layer) */
	uint64_t bytes;           /**< K/V bytes held */
	uint32_t shared;          /**< readable by every user (mnemo_share()) */
	uint64_t surprise_seen;   /**< tokens mnemo_surprise() sent */
	uint64_t events;          /**< events the online boundary rule started over them */
	uint32_t segmentation;    /**< what episodic's last build segmented by: MNEMO_SEG_* */
	uint64_t parent;          /**< a continuation's parent context (0: not a continuation) */
	uint64_t parent_tokens;   /**< the parent's tokens it follows; ATTEND ranges count them first */
};

/** How the episodic policy found a layer's events (mnemo_context_info.segmentation). */
enum mnemo_segmentation {
	MNEMO_SEG_NONE = 0,       /**< no episodic index built yet */
	MNEMO_SEG_SURPRISE = 1,   /**< the surprise of mnemo_surprise() */
	MNEMO_SEG_NOVELTY = 2,    /**< key novelty: surprise was missing for some of the tokens */
};

/** The daemon as STAT reports it. */
struct mnemo_daemon_info {
	uint64_t uptime_ms;
	uint32_t connections, contexts, workers, block_tokens;
	uint64_t host_used, host_budget, requests, errors;
	uint64_t ssd_used, ssd_max;     /**< ssd_max UINT64_MAX: no SSD tier; 0: no cap */
	uint64_t hits, misses, evictions;
	uint64_t ssd_reads, ssd_writes, ssd_read_bytes, ssd_write_bytes, bad_blocks;
	uint64_t index_builds;          /**< retrieval indexes built since mnemod started */
	uint64_t index_loads;           /**< retrieval indexes loaded from disk instead */
	uint64_t index_bytes;           /**< RAM the indexes in memory hold, outside host_used */
	uint64_t policy_attends;        /**< ATTENDs with a retrieval policy */
	uint64_t policy_pick_ns;        /**< their pass 1 (index loads, searches), wall time */
	uint64_t policy_search_ns;      /**< the searches, summed over KV heads */
	uint64_t policy_fold_ns;        /**< their pass 2 (blocks pinned and attended), wall time */
	uint64_t policy_pin_ns;         /**< pass 2's block pins (SSD reads waited on), summed over KV heads */
	uint64_t cpu_ns;                /**< mnemod's CPU time (user + system, every thread) since it started */
	char kernels[32];
};

/** What an ATTEND did besides its result. */
struct mnemo_attend_info {
	uint64_t scanned;         /**< keys whose score was computed */
	uint64_t loaded;          /**< keys whose value was read */
	uint64_t compute_ns;      /**< time the daemon spent computing */
};

typedef struct mnemo_client mnemo_client;

/**
 * Connect to the daemon.
 * @param path  socket path, or NULL for the default (MNEMO_SOCKET from the
 *              environment, else $XDG_RUNTIME_DIR/mnemo/mnemod.sock, else
 *              var/run/mnemod.sock)
 * @param out   the new client; release it with mnemo_close()
 * @return 0, or -errno of socket()/connect() (-ENOENT: no daemon there)
 */
int mnemo_connect(const char *path, mnemo_client **out);

/** Close the connection and free the client and its arena. NULL is a no-op. */
void mnemo_close(mnemo_client *c);

/** The daemon's message for the last failed call; valid until the next call. */
const char *mnemo_last_error(const mnemo_client *c);

/** The default socket path (static storage, overwritten by the next call). */
const char *mnemo_default_socket(void);

/** HELLO: check the protocol version and learn the daemon's limits. */
int mnemo_hello(mnemo_client *c, struct mnemo_server_info *info);

/**
 * CREATE a context.
 * @param name  1..255 printable ASCII bytes, unique in the daemon
 * @param id    receives the context id
 * @return 0, -EEXIST (name taken), -EINVAL (geometry), -ENOMEM
 */
int mnemo_create(mnemo_client *c, const char *name, const struct mnemo_geometry *g,
		 uint64_t *id);

/**
 * APPEND tokens [token_begin, token_begin + n_tokens) to layers
 * [layer_begin, layer_begin + layer_count).
 * @param data  [layer_count][2][n_kv_heads][n_tokens][head_dim] in the
 *              context's dtype (keys, then values); len must match exactly.
 *              If @p data lies inside this client's shared-memory arena (see
 *              mnemo_shm_attach()) it travels by reference, else inline.
 * @param context_tokens  if not NULL, receives the context's token count
 * @return 0, -ERANGE (token_begin is not a layer's length), -ENOMEM (host
 *         budget), -EROFS (sealed), -EMSGSIZE (inline data over max_frame)
 */
int mnemo_append(mnemo_client *c, uint64_t ctx, uint32_t layer_begin, uint32_t layer_count,
		 uint64_t token_begin, uint32_t n_tokens, const void *data, size_t len,
		 uint64_t *context_tokens);

/** SEAL a context: no more appends; @p tokens receives its length. */
int mnemo_seal(mnemo_client *c, uint64_t ctx, uint64_t *tokens);

/**
 * ATTEND: attention of every query head of @p layer over tokens
 * [token_begin, token_end) (token_end UINT64_MAX: to the end).
 * @param q    [n_q_heads][head_dim] f32
 * @param o    receives [n_q_heads][head_dim] f32
 * @param lse  receives [n_q_heads] f32 (natural log; -INFINITY for an empty range)
 * @param info if not NULL, receives counters
 */
int mnemo_attend(mnemo_client *c, uint64_t ctx, uint32_t layer, enum mnemo_policy policy,
		 uint64_t token_begin, uint64_t token_end, const float *q,
		 float *o, float *lse, struct mnemo_attend_info *info);

/**
 * mnemo_attend() with a retrieval policy and a budget: at most @p budget
 * tokens per KV head are attended exactly (0: the daemon's default, 2% of
 * the indexed tokens); see ipc/PROTOCOL.md, ATTEND.
 */
int mnemo_attend_ex(mnemo_client *c, uint64_t ctx, uint32_t layer, enum mnemo_policy policy,
		    uint32_t budget, uint64_t token_begin, uint64_t token_end, const float *q,
		    float *o, float *lse, struct mnemo_attend_info *info);

/** What an INDEX did, counted in (layer, KV head) indexes. */
struct mnemo_index_info {
	uint64_t built;           /**< built now */
	uint64_t loaded;          /**< loaded from the daemon's data directory */
	uint64_t present;         /**< already in memory */
	uint64_t elapsed_ns;      /**< time the daemon spent */
};

/**
 * INDEX: make the indexes of @p policy ready for layers
 * [layer_begin, layer_begin + layer_count) (count 0: to the last layer) so
 * that no later ATTEND waits for a build: offline preloading. Slow (it
 * builds); the indexes are saved with the context when the daemon has an
 * SSD tier.
 */
int mnemo_index(mnemo_client *c, uint64_t ctx, enum mnemo_policy policy, uint32_t layer_begin,
		uint32_t layer_count, struct mnemo_index_info *info);

/** What the daemon holds of a layer's prefill queries after mnemo_queries(). */
struct mnemo_queries_info {
	uint64_t kept;            /**< positions kept (an even subsample, at most 4096 / group size) */
	uint64_t seen;            /**< positions sent so far */
};

/**
 * QUERIES: send the queries of @p n_pos prefill positions of @p layer,
 * @p q laid out [n_q_heads][n_pos][head_dim] f32 (a trace's q_prefill for
 * one layer), unscaled. @p first counts the positions sent for the layer
 * before (0 the first time), so that a resent piece is refused (-ERANGE)
 * instead of counted twice. Policies that draw their index from queries (ann)
 * need them before their first build; the daemon keeps an even subsample
 * of all positions sent and saves it with the context. Large sets are
 * split over several frames here. Allowed on sealed contexts.
 * @return 0, -EINVAL (layer), -ERANGE (@p first is not the positions sent
 *         before; the error message says how many), -EACCES (another user's
 *         context), -ENOMEM
 */
int mnemo_queries(mnemo_client *c, uint64_t ctx, uint32_t layer, uint64_t first, uint32_t n_pos,
		  const float *q, struct mnemo_queries_info *info);

/**
 * CONTINUE: a new context @p name, owned by the caller, that continues the
 * sealed context @p parent (owned by the caller or shared) without copying
 * it. APPEND to it counts its own tokens from 0; ATTEND on it spans the
 * parent's tokens then its own (token ranges count the parent's first), each
 * part with the requested policy over its own context's index, merged.
 * The parent cannot be dropped while it has continuations (-EBUSY).
 * @return 0, -ENOENT, -EACCES (the parent is another user's and not shared),
 *         -EBUSY (the parent is not sealed), -ENODATA (the parent is empty), -EEXIST
 */
int mnemo_continue(mnemo_client *c, uint64_t parent, const char *name, uint64_t *id);

/** What the daemon holds of a context's surprise after mnemo_surprise(). */
struct mnemo_surprise_info {
	uint64_t seen;            /**< tokens sent surprise for so far */
	uint64_t events;          /**< events the online boundary rule started over them */
};

/**
 * SURPRISE: send the surprise s_t = -log p(x_t) (nats, finite) of @p n
 * tokens starting at token @p first, which must be the number of tokens
 * sent before (a resent piece gets -ERANGE). The daemon runs EM-LLM's
 * boundary rule on it as it arrives and saves its state with the context;
 * the episodic policy segments a layer by it when it covers the layer's
 * tokens, by key novelty otherwise (STAT's segmentation says which).
 * Owner only; a sealed context still takes it. Large pieces are split.
 * @return 0, -EINVAL (a non-finite value, n 0), -ERANGE, -ENOENT, -EACCES
 */
int mnemo_surprise(mnemo_client *c, uint64_t ctx, uint64_t first, uint32_t n, const float *s,
		   struct mnemo_surprise_info *info);

/** Token ids per prefix chunk: LOOKUP matches whole chunks. */
#define MNEMO_CHUNK_TOKENS 256

/**
 * TOKENS: give context @p ctx the ids of its tokens [token_begin,
 * token_begin + n), in order and without gaps, so that LOOKUP can find it
 * by prefix. @p salt is the tenant's secret: it enters every chunk hash,
 * so a LOOKUP under another salt never matches; a context's first TOKENS
 * fixes it. Ids may not run past the context's tokens.
 * @param chunks  if not NULL, receives the whole chunks now findable
 */
int mnemo_tokens(mnemo_client *c, uint64_t ctx, uint64_t salt, uint64_t token_begin, const uint32_t *ids,
		 uint32_t n, uint64_t *chunks);

/**
 * The chain of chunk hashes of @p ids [n] under @p salt, as the daemon
 * computes it: out[k] = XXH3-64 of ids [256k, 256k + 256) (u32
 * little-endian) seeded with out[k-1] ^ salt (0 ^ salt for k = 0).
 * Writes n / MNEMO_CHUNK_TOKENS hashes and returns how many.
 */
size_t mnemo_prefix_hashes(uint64_t salt, const uint32_t *ids, size_t n, uint64_t *out);

/** What LOOKUP found. */
struct mnemo_lookup_info {
	uint64_t ctx;             /**< the context holding the prefix; 0: none */
	uint64_t tokens;          /**< the prefix's length: a multiple of MNEMO_CHUNK_TOKENS */
	uint32_t probes;          /**< table probes the daemon made (about log2 of the chunks) */
};

/**
 * LOOKUP the longest prefix of @p ids [n] (under @p salt) that a context
 * this user owns holds. Sends the ids; mnemo_lookup_hashes() sends their
 * chain instead (8 bytes per 256 ids).
 */
int mnemo_lookup(mnemo_client *c, uint64_t salt, const uint32_t *ids, uint32_t n, struct mnemo_lookup_info *out);
int mnemo_lookup_hashes(mnemo_client *c, const uint64_t *hashes, uint32_t n, struct mnemo_lookup_info *out);

/** Per-request choices of a policy ATTEND (zero-initialise what you do not set). */
struct mnemo_attend_opts {
	uint32_t budget;          /**< tokens per KV head the index may pick; 0: 2% of the indexed tokens */
	uint16_t sinks;           /**< the range's first tokens, always attended exactly */
	uint16_t window;          /**< the range's last tokens, always attended exactly */
};

/** mnemo_attend_ex() with every per-request choice (@p opts may be NULL: defaults). */
int mnemo_attend_opts(mnemo_client *c, uint64_t ctx, uint32_t layer, enum mnemo_policy policy,
		      const struct mnemo_attend_opts *opts, uint64_t token_begin, uint64_t token_end,
		      const float *q, float *o, float *lse, struct mnemo_attend_info *info);

/**
 * FETCH raw K/V of @p n_ids token positions of @p layer.
 * @param out  receives [2][n_kv_heads][n_ids][head_dim] in the context's
 *             dtype; @p out_len must be at least that. If @p out lies in the
 *             arena, the daemon writes it there directly.
 */
int mnemo_fetch(mnemo_client *c, uint64_t ctx, uint32_t layer, const uint64_t *ids,
		uint32_t n_ids, void *out, size_t out_len);

/**
 * SHARE a sealed context read-only with every user (@p shared 1), or make it
 * private again (0). Only its owner may; others can then STAT, ATTEND,
 * FETCH, INDEX and LOOKUP it, never change it.
 * Sharing an open context is refused (-EBUSY).
 */
int mnemo_share(mnemo_client *c, uint64_t id, const char *name, int shared);

/** DROP a context by id, or by name when @p id is 0. */
int mnemo_drop(mnemo_client *c, uint64_t id, const char *name);

/** STAT one context by id, or by name when @p id is 0. */
int mnemo_stat(mnemo_client *c, uint64_t id, const char *name, struct mnemo_context_info *out);

/** STAT the daemon. */
int mnemo_stat_daemon(mnemo_client *c, struct mnemo_daemon_info *out);

/**
 * LIST this uid's contexts.
 * @param out    receives a malloc'ed array the caller frees with free()
 * @param count  receives its length
 */
int mnemo_list(mnemo_client *c, struct mnemo_context_info **out, size_t *count);

/**
 * Attach a shared-memory arena of @p size bytes to this connection.
 * @param base  receives the arena's address; it stays valid until
 *              mnemo_close() or the next attach. Tensors placed in it travel
 *              without a copy through the socket.
 */
int mnemo_shm_attach(mnemo_client *c, size_t size, void **base);

/* ---- several requests in flight ---- */

/** Send an APPEND without waiting; @p req_id receives its id. */
int mnemo_submit_append(mnemo_client *c, uint64_t ctx, uint32_t layer_begin,
			uint32_t layer_count, uint64_t token_begin, uint32_t n_tokens,
			const void *data, size_t len, uint64_t *req_id);
/**
 * APPEND flags.
 * MNEMO_APPEND_STREAM: for preloading data larger than RAM. With an SSD
 * tier, the request's whole blocks are written from the request's bytes
 * straight to the tier and are not kept in RAM (a later read loads them);
 * that takes blocks that fill their 4 KiB-aligned slots (head_dim a multiple
 * of 16 at 64-token blocks), a token_begin on a block boundary and data in
 * the shared-memory arena at a 4 KiB-aligned offset with n_tokens a multiple
 * of the block size. Otherwise the request is served as without the flag.
 * Its blocks are written when the reply comes and durable at the context's
 * next sync point: an APPEND with MNEMO_APPEND_SYNC or without STREAM, SEAL,
 * every --stream-sync bytes the context streams, or mnemod's clean stop. A
 * crash before it loses them (a restart serves the context from its last
 * durable block, where mnemo-preload resumes).
 * MNEMO_APPEND_SYNC: everything the context has written is durable when
 * the reply comes (send it with a stream's last APPEND).
 */
#define MNEMO_APPEND_STREAM 0x100u
#define MNEMO_APPEND_SYNC 0x200u

/** mnemo_submit_append() with MNEMO_APPEND_* @p flags. */
int mnemo_submit_append_ex(mnemo_client *c, uint64_t ctx, uint32_t layer_begin,
			   uint32_t layer_count, uint64_t token_begin, uint32_t n_tokens,
			   const void *data, size_t len, uint32_t flags, uint64_t *req_id);
/** Wait for the reply of APPEND @p req_id. */
int mnemo_wait_append(mnemo_client *c, uint64_t req_id, uint64_t *context_tokens);

/** Send an ATTEND without waiting; the reply is collected by mnemo_wait_attend(). */
int mnemo_submit_attend(mnemo_client *c, uint64_t ctx, uint32_t layer, enum mnemo_policy policy,
			uint32_t budget, uint64_t token_begin, uint64_t token_end, const float *q,
			uint32_t n_floats, uint64_t *req_id);
/** mnemo_submit_attend() with every per-request choice (@p opts may be NULL). */
int mnemo_submit_attend_opts(mnemo_client *c, uint64_t ctx, uint32_t layer, enum mnemo_policy policy,
			     const struct mnemo_attend_opts *opts, uint64_t token_begin, uint64_t token_end,
			     const float *q, uint32_t n_floats, uint64_t *req_id);
int mnemo_wait_attend(mnemo_client *c, uint64_t req_id, float *o, float *lse,
		      uint32_t n_q_heads, uint32_t head_dim, struct mnemo_attend_info *info);

/* ---- helpers ---- */

/**
 * Merge partial (o2, lse2) into (o1, lse1) for one query head:
 * lse = logaddexp(lse1, lse2), o = e^(lse1-lse) o1 + e^(lse2-lse) o2.
 */
void mnemo_merge(uint32_t head_dim, float *o1, float *lse1, const float *o2, float lse2);

/** Bytes per element of @p t, 0 if unknown. */
size_t mnemo_dtype_size(enum mnemo_dtype t);

#ifdef __cplusplus
}
#endif

#endif
