/*
 * Fuzz target for every wire decoder: the frame header, each request and
 * reply payload, the records and the error payload. Any input must be
 * either decoded or refused, never read out of bounds (ASan) and never
 * trigger undefined behaviour (UBSan). Decoded messages are re-encoded and
 * decoded again, which must give the same result.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t fuzz_seed(unsigned i, uint8_t *buf, size_t cap);

#define ROUND_TRIP(T, dec, enc, p, n)                                   \
	do {                                                            \
		T m1, m2;                                               \
		if (dec(p, n, &m1) == 0) {                              \
			struct wbuf b;                                  \
			wbuf_init(&b);                                  \
			enc(&b, &m1);                                   \
			if (!b.err && (dec(b.data, b.len, &m2) != 0 || b.len != (n))) \
				abort();                                \
			wbuf_free(&b);                                  \
		}                                                       \
	} while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size >= PROTO_HEADER_SIZE) {
		struct proto_header h;
		proto_header_decode(data, &h);
		(void)proto_header_check(&h, PROTO_DEFAULT_MAX_FRAME, false);
		(void)proto_header_check(&h, PROTO_DEFAULT_MAX_FRAME, true);
		uint8_t again[PROTO_HEADER_SIZE];
		proto_header_encode(again, &h);
		if (memcmp(again, data, PROTO_HEADER_SIZE))
			abort();
	}
	/* the first byte picks the decoder, the rest is its payload */
	if (size < 1)
		return 0;
	const uint8_t *p = data + 1;
	size_t n = size - 1;
	switch (data[0] % 25) {
	case 0: ROUND_TRIP(struct msg_hello_req, msg_hello_req_decode, msg_hello_req_encode, p, n); break;
	case 1: ROUND_TRIP(struct msg_hello_rep, msg_hello_rep_decode, msg_hello_rep_encode, p, n); break;
	case 2: ROUND_TRIP(struct msg_create_req, msg_create_req_decode, msg_create_req_encode, p, n); break;
	case 3: ROUND_TRIP(struct msg_append_req, msg_append_req_decode, msg_append_req_encode, p, n); break;
	case 4: ROUND_TRIP(struct msg_append_rep, msg_append_rep_decode, msg_append_rep_encode, p, n); break;
	case 5: ROUND_TRIP(struct proto_ctxref, msg_ctxref_decode, msg_ctxref_encode, p, n); break;
	case 6: ROUND_TRIP(struct msg_attend_req, msg_attend_req_decode, msg_attend_req_encode, p, n); break;
	case 7: ROUND_TRIP(struct msg_attend_rep, msg_attend_rep_decode, msg_attend_rep_encode, p, n); break;
	case 8: ROUND_TRIP(struct msg_fetch_req, msg_fetch_req_decode, msg_fetch_req_encode, p, n); break;
	case 9: ROUND_TRIP(struct msg_fetch_rep, msg_fetch_rep_decode, msg_fetch_rep_encode, p, n); break;
	case 10: ROUND_TRIP(struct msg_list_req, msg_list_req_decode, msg_list_req_encode, p, n); break;
	case 11: ROUND_TRIP(struct msg_shm_attach_req, msg_shm_attach_req_decode, msg_shm_attach_req_encode, p, n); break;
	case 12: {
		struct rbuf r;
		struct proto_ctx_record rec;
		rbuf_init(&r, p, n);
		(void)proto_ctx_record_read(&r, &rec);
		break;
	}
	case 13: {
		struct rbuf r;
		struct proto_daemon_record rec;
		rbuf_init(&r, p, n);
		(void)proto_daemon_record_read(&r, &rec);
		break;
	}
	case 14: {
		const char *msg;
		uint16_t len;
		(void)msg_error_decode(p, n, &msg, &len);
		break;
	}
	case 16: ROUND_TRIP(struct msg_index_req, msg_index_req_decode, msg_index_req_encode, p, n); break;
	case 17: ROUND_TRIP(struct msg_index_rep, msg_index_rep_decode, msg_index_rep_encode, p, n); break;
	case 18: ROUND_TRIP(struct msg_tokens_req, msg_tokens_req_decode, msg_tokens_req_encode, p, n); break;
	case 19: ROUND_TRIP(struct msg_lookup_req, msg_lookup_req_decode, msg_lookup_req_encode, p, n); break;
	case 20: ROUND_TRIP(struct msg_share_req, msg_share_req_decode, msg_share_req_encode, p, n); break;
	case 21: ROUND_TRIP(struct msg_queries_req, msg_queries_req_decode, msg_queries_req_encode, p, n); break;
	case 22: ROUND_TRIP(struct msg_surprise_req, msg_surprise_req_decode, msg_surprise_req_encode, p, n); break;
	case 23: ROUND_TRIP(struct msg_continue_req, msg_continue_req_decode, msg_continue_req_encode, p, n); break;
	default: {
		struct proto_geometry g;
		if (n >= sizeof(g)) {
			memcpy(&g, p, sizeof(g));
			const char *why;
			(void)proto_geometry_check(&g, &why);
		}
		break;
	}
	}
	return 0;
}

/* Valid encodings of every message for the replay driver to mutate; byte 0
 * picks the decoder as in LLVMFuzzerTestOneInput. */
size_t fuzz_seed(unsigned i, uint8_t *buf, size_t cap)
{
	uint8_t q[64] = { 0 };
	struct wbuf b;
	wbuf_init(&b);
	static const uint8_t sel[14] = { 0, 2, 3, 6, 8, 5, 14, 10, 16, 18, 19, 21, 22, 23 };
	wbuf_put(&b, &sel[i % 14], 1);
	switch (i % 14) {
	case 0: msg_hello_req_encode(&b, &(struct msg_hello_req){ 1, 0 }); break;
	case 1: msg_create_req_encode(&b, &(struct msg_create_req){ "abc", 3, { 2, 2, 4, 8, 2, 1e4f, 0 } }); break;
	case 2: msg_append_req_encode(&b, &(struct msg_append_req){ .ctx = 1, .layer_count = 1, .n_tokens = 1,
								    .data = q, .data_len = 64 }); break;
	case 3: msg_attend_req_encode(&b, &(struct msg_attend_req){ .ctx = 1, .q = q, .q_len = 64 }); break;
	case 4: msg_fetch_req_encode(&b, &(struct msg_fetch_req){ .ctx = 1, .n_ids = 2, .ids = q }); break;
	case 5: msg_ctxref_encode(&b, &(struct proto_ctxref){ 0, "name", 4 }); break;
	case 6: msg_error_encode(&b, "some error"); break;
	case 7: msg_list_req_encode(&b, &(struct msg_list_req){ 0, 10 }); break;
	case 8: msg_index_req_encode(&b, &(struct msg_index_req){ .ctx = 1, .policy = 4 }); break;
	case 9: msg_tokens_req_encode(&b, &(struct msg_tokens_req){ .ctx = 1, .salt = 7, .n = 3, .ids = q }); break;
	case 11: msg_queries_req_encode(&b, &(struct msg_queries_req){ .ctx = 1, .n_positions = 2, .q = q,
									 .q_len = 64 }); break;
	case 12: msg_surprise_req_encode(&b, &(struct msg_surprise_req){ .ctx = 1, .first = 3, .n = 16, .s = q }); break;
	case 13: msg_continue_req_encode(&b, &(struct msg_continue_req){ .parent = 2, .name = "c", .name_len = 1 }); break;
	default: msg_lookup_req_encode(&b, &(struct msg_lookup_req){ .salt = 7, .kind = i & 16 ? 1 : 0, .n = 4,
								     .data = q }); break;
	}
	size_t n = b.err || b.len > cap ? 0 : b.len;
	if (n)
		memcpy(buf, b.data, n);
	wbuf_free(&b);
	return n;
}
