#define _GNU_SOURCE
/*
 * The wire codec: every message round-trips, every decoder refuses every
 * truncation and trailing garbage, counts over their limits are refused, and
 * the header rules hold. The encoded bytes are also checked against a
 * hand-written little-endian layout, so encoder and decoder cannot agree on
 * a wrong format.
 */
#include <errno.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "../check.h"
#include "proto.h"
#include "sock.h"

typedef int (*decode_fn)(const void *p, size_t n, void *m);

/* Every strict prefix must be refused, and so must one extra byte. */
static void check_strict(const char *what, const struct wbuf *b, decode_fn dec, void *scratch,
			 int allow_prefix_from)
{
	for (size_t n = 0; n < b->len; n++) {
		if (allow_prefix_from >= 0 && (int)n >= allow_prefix_from)
			break;
		CHECK(dec(b->data, n, scratch) != 0, "%s: prefix of %zu/%zu bytes accepted", what, n, b->len);
	}
	uint8_t *more = malloc(b->len + 1);
	memcpy(more, b->data, b->len);
	more[b->len] = 0x5a;
	if (allow_prefix_from < 0)
		CHECK(dec(more, b->len + 1, scratch) != 0, "%s: trailing byte accepted", what);
	free(more);
}

static void test_header(void)
{
	struct proto_header h = { .magic = PROTO_MAGIC, .version = 1, .opcode = OP_ATTEND,
				  .flags = 0, .status = 0, .req_id = 0x1122334455667788ull,
				  .length = 4096, .reserved = 0 };
	uint8_t b[PROTO_HEADER_SIZE];
	proto_header_encode(b, &h);
	static const uint8_t want[PROTO_HEADER_SIZE] = {
		'M', 'N', 'M', 'O', 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0,
		0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0x10, 0, 0, 0, 0, 0, 0,
	};
	CHECK(!memcmp(b, want, sizeof(want)), "header bytes differ from the documented layout");
	struct proto_header d;
	proto_header_decode(b, &d);
	CHECK(!memcmp(&d, &h, sizeof(h)), "header round trip");
	CHECK(proto_header_check(&d, 1 << 20, false) == 0, "valid request header refused");
	CHECK(proto_header_check(&d, 1 << 20, true) == -EBADMSG, "request taken for a reply");

	struct proto_header x = h;
	x.magic ^= 1;
	CHECK(proto_header_check(&x, 1 << 20, false) == -EBADMSG, "bad magic");
	x = h;
	x.version = 2;
	CHECK(proto_header_check(&x, 1 << 20, false) == -EPROTONOSUPPORT, "bad version");
	x = h;
	x.length = (1 << 20) + 1;
	CHECK(proto_header_check(&x, 1 << 20, false) == -EMSGSIZE, "oversized");
	x = h;
	x.reserved = 1;
	CHECK(proto_header_check(&x, 1 << 20, false) == -EBADMSG, "reserved");
	x = h;
	x.flags = 4;
	CHECK(proto_header_check(&x, 1 << 20, false) == -EBADMSG, "unknown flag");
	x = h;
	x.status = -5;
	CHECK(proto_header_check(&x, 1 << 20, false) == -EBADMSG, "status on a request");
	x = h;
	x.flags = PROTO_FLAG_REPLY;
	x.status = -ENOENT;
	CHECK(proto_header_check(&x, 1 << 20, true) == 0, "error reply refused");
}

static void test_create(void)
{
	struct msg_create_req m = {
		.name = "ctx-1", .name_len = 5,
		.geom = { .n_layers = 32, .n_kv_heads = 8, .n_q_heads = 32, .head_dim = 128,
			  .dtype = 2, .rope_theta = 500000.0f },
	}, d;
	struct wbuf b;
	wbuf_init(&b);
	msg_create_req_encode(&b, &m);
	CHECK(b.len == 2 + 5 + 28, "create size %zu", b.len);
	CHECK(b.data[0] == 5 && b.data[1] == 0 && !memcmp(b.data + 2, "ctx-1", 5), "name bytes");
	CHECK(b.data[7] == 32 && b.data[11] == 8, "geometry bytes");
	CHECK(msg_create_req_decode(b.data, b.len, &d) == 0, "decode");
	CHECK(d.name_len == 5 && !memcmp(d.name, "ctx-1", 5), "name");
	CHECK(!memcmp(&d.geom, &m.geom, sizeof(m.geom)), "geometry");
	check_strict("create", &b, (decode_fn)msg_create_req_decode, &d, -1);
	wbuf_free(&b);

	/* names: empty, control characters and overlong are refused */
	const char *bad[] = { "", "a b", "x\n" };
	for (size_t i = 0; i < 3; i++) {
		struct msg_create_req e = m;
		e.name = bad[i];
		e.name_len = (uint16_t)strlen(bad[i]);
		wbuf_init(&b);
		msg_create_req_encode(&b, &e);
		CHECK(msg_create_req_decode(b.data, b.len, &d) != 0, "bad name %zu accepted", i);
		wbuf_free(&b);
	}
	char longname[300];
	memset(longname, 'n', sizeof(longname));
	struct msg_create_req e = m;
	e.name = longname;
	e.name_len = 256;
	wbuf_init(&b);
	msg_create_req_encode(&b, &e);
	CHECK(msg_create_req_decode(b.data, b.len, &d) == -EMSGSIZE, "256-byte name accepted");
	wbuf_free(&b);

	const char *why;
	struct proto_geometry g = m.geom;
	CHECK(proto_geometry_check(&g, &why) == 0, "valid geometry refused");
	g.n_q_heads = 33;
	CHECK(proto_geometry_check(&g, &why) == -EINVAL, "q not a multiple of kv");
	g = m.geom;
	g.dtype = 3;
	CHECK(proto_geometry_check(&g, &why) == -EINVAL, "dtype 3");
	g = m.geom;
	g.head_dim = 0;
	CHECK(proto_geometry_check(&g, &why) == -EINVAL, "head_dim 0");
	g = m.geom;
	g.n_layers = 1025;
	CHECK(proto_geometry_check(&g, &why) == -EINVAL, "1025 layers");
	g = m.geom;
	g.n_kv_heads = 1;
	g.n_q_heads = 65;
	CHECK(proto_geometry_check(&g, &why) == -EINVAL, "group of 65");
	g = m.geom;
	g.rope_theta = NAN;
	CHECK(proto_geometry_check(&g, &why) == -EINVAL, "NaN rope");
}

static void test_append(void)
{
	uint8_t data[96];
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (uint8_t)(i * 7);
	struct msg_append_req m = { .ctx = 9, .layer_begin = 2, .layer_count = 3, .token_begin = 1000,
				    .n_tokens = 4, .source = PROTO_SRC_INLINE, .data = data,
				    .data_len = sizeof(data) }, d;
	struct wbuf b;
	wbuf_init(&b);
	msg_append_req_encode(&b, &m);
	CHECK(b.len == 48 + sizeof(data), "append size");
	CHECK(msg_append_req_decode(b.data, b.len, &d) == 0, "decode");
	CHECK(d.ctx == 9 && d.layer_begin == 2 && d.layer_count == 3 && d.token_begin == 1000 &&
	      d.n_tokens == 4 && d.data_len == sizeof(data) && !memcmp(d.data, data, sizeof(data)),
	      "fields");
	/* an inline payload takes whatever follows the fixed part: only short fixed parts fail */
	check_strict("append", &b, (decode_fn)msg_append_req_decode, &d, 48);
	wbuf_free(&b);

	m.source = PROTO_SRC_SHM;
	m.shm_offset = 4096;
	m.shm_length = 1 << 20;
	wbuf_init(&b);
	msg_append_req_encode(&b, &m);
	CHECK(b.len == 48, "shm append carries no data");
	CHECK(msg_append_req_decode(b.data, b.len, &d) == 0 && d.shm_offset == 4096 &&
	      d.shm_length == (1 << 20), "shm fields");
	check_strict("append-shm", &b, (decode_fn)msg_append_req_decode, &d, -1);
	b.data[28] = 7;     /* source = 7 */
	CHECK(msg_append_req_decode(b.data, b.len, &d) != 0, "unknown source accepted");
	wbuf_free(&b);

	/* flags ride above the source's low byte; unknown ones are refused */
	m.flags = PROTO_APPEND_STREAM | PROTO_APPEND_SYNC;
	wbuf_init(&b);
	msg_append_req_encode(&b, &m);
	CHECK(msg_append_req_decode(b.data, b.len, &d) == 0 && d.source == PROTO_SRC_SHM &&
	      d.flags == (PROTO_APPEND_STREAM | PROTO_APPEND_SYNC), "stream and sync flags round trip");
	CHECK(b.data[29] == 0x03, "stream is bit 8 and sync bit 9 of the source word: 0x%02x", b.data[29]);
	b.data[29] = 0x04;  /* bit 10 */
	CHECK(msg_append_req_decode(b.data, b.len, &d) == -EPROTO, "unknown append flag bit 10 accepted");
	b.data[29] = 0x03;
	b.data[30] = 0x01;  /* bit 16 */
	CHECK(msg_append_req_decode(b.data, b.len, &d) == -EPROTO, "unknown append flag accepted");
	wbuf_free(&b);
	m.flags = 0;

	m.source = PROTO_SRC_SHM;
	m.layer_count = 0;
	wbuf_init(&b);
	msg_append_req_encode(&b, &m);
	CHECK(msg_append_req_decode(b.data, b.len, &d) != 0, "layer_count 0 accepted");
	wbuf_free(&b);

	struct msg_append_rep r = { .layer_tokens = 77, .context_tokens = 70 }, rd;
	wbuf_init(&b);
	msg_append_rep_encode(&b, &r);
	CHECK(msg_append_rep_decode(b.data, b.len, &rd) == 0 && rd.layer_tokens == 77 &&
	      rd.context_tokens == 70, "append reply");
	check_strict("append-rep", &b, (decode_fn)msg_append_rep_decode, &rd, -1);
	wbuf_free(&b);
}

static void test_index(void)
{
	struct msg_index_req m = { .ctx = 9, .policy = 4, .layer_begin = 2, .layer_count = 3 }, d;
	struct wbuf b;
	wbuf_init(&b);
	msg_index_req_encode(&b, &m);
	CHECK(msg_index_req_decode(b.data, b.len, &d) == 0 && d.ctx == 9 && d.policy == 4 && d.layer_begin == 2 &&
	      d.layer_count == 3, "index request");
	CHECK(msg_index_req_decode(b.data, b.len - 1, &d) != 0 && b.len == 20, "short index request accepted");
	wbuf_free(&b);
	uint32_t ids[3] = { 5, 6, 0xdeadbeef };
	{
		/* QUERIES: a round trip; no positions, or bytes that are not whole positions, refused */
		float qv[2 * 3 * 4];
		for (int i = 0; i < 24; i++)
			qv[i] = (float)i - 7.5f;
		struct msg_queries_req qq = { .ctx = 9, .layer = 3, .n_positions = 3, .first = 1ull << 40,
					      .q = (const uint8_t *)qv,
					      .q_len = sizeof(qv) }, qd;
		wbuf_init(&b);
		msg_queries_req_encode(&b, &qq);
		CHECK(msg_queries_req_decode(b.data, b.len, &qd) == 0 && qd.ctx == 9 && qd.layer == 3 &&
			      qd.n_positions == 3 && qd.first == 1ull << 40 && qd.q_len == sizeof(qv) && !memcmp(qd.q, qv, sizeof(qv)),
		      "queries round trip");
		CHECK(msg_queries_req_decode(b.data, b.len - 4, &qd) != 0, "queries of a partial position accepted");
		CHECK(msg_queries_req_decode(b.data, 24, &qd) != 0, "queries without data accepted");
		wbuf_free(&b);
		qq.n_positions = 0;
		wbuf_init(&b);
		msg_queries_req_encode(&b, &qq);
		CHECK(msg_queries_req_decode(b.data, b.len, &qd) != 0, "queries of no positions accepted");
		wbuf_free(&b);
		struct msg_queries_rep qr = { .kept = 1024, .seen = 5000 }, qrd;
		wbuf_init(&b);
		msg_queries_rep_encode(&b, &qr);
		CHECK(msg_queries_rep_decode(b.data, b.len, &qrd) == 0 && qrd.kept == 1024 && qrd.seen == 5000,
		      "queries reply round trip");
		CHECK(msg_queries_rep_decode(b.data, b.len - 1, &qrd) != 0, "short queries reply accepted");
		wbuf_free(&b);
		CHECK(!strcmp(proto_op_name(OP_QUERIES), "QUERIES"), "QUERIES has no name");
		/* SURPRISE: a round trip; no tokens, or bytes that are not n floats, refused */
		struct msg_surprise_req sq = { .ctx = 5, .first = 1ull << 33, .n = 6, .s = (const uint8_t *)qv }, sd;
		wbuf_init(&b);
		msg_surprise_req_encode(&b, &sq);
		CHECK(msg_surprise_req_decode(b.data, b.len, &sd) == 0 && sd.ctx == 5 && sd.first == 1ull << 33 &&
			      sd.n == 6 && !memcmp(sd.s, qv, 24), "surprise round trip");
		CHECK(msg_surprise_req_decode(b.data, b.len - 4, &sd) != 0, "surprise short of its n accepted");
		CHECK(msg_surprise_req_decode(b.data, 20, &sd) != 0, "surprise without n accepted");
		wbuf_free(&b);
		sq.n = 0;
		wbuf_init(&b);
		msg_surprise_req_encode(&b, &sq);
		CHECK(msg_surprise_req_decode(b.data, b.len, &sd) != 0, "surprise of no tokens accepted");
		wbuf_free(&b);
		struct msg_surprise_rep sr = { .seen = 77, .events = 3 }, srd;
		wbuf_init(&b);
		msg_surprise_rep_encode(&b, &sr);
		CHECK(msg_surprise_rep_decode(b.data, b.len, &srd) == 0 && srd.seen == 77 && srd.events == 3,
		      "surprise reply round trip");
		CHECK(msg_surprise_rep_decode(b.data, b.len - 1, &srd) != 0, "short surprise reply accepted");
		wbuf_free(&b);
		CHECK(!strcmp(proto_op_name(OP_SURPRISE), "SURPRISE"), "SURPRISE has no name");
		/* CONTINUE: a round trip; no parent, or a bad name, refused */
		struct msg_continue_req cq = { .parent = 42, .name = "next", .name_len = 4 }, cd;
		wbuf_init(&b);
		msg_continue_req_encode(&b, &cq);
		CHECK(msg_continue_req_decode(b.data, b.len, &cd) == 0 && cd.parent == 42 && cd.name_len == 4 &&
			      !memcmp(cd.name, "next", 4), "continue round trip");
		CHECK(msg_continue_req_decode(b.data, b.len - 1, &cd) != 0, "short continue accepted");
		wbuf_free(&b);
		cq.parent = 0;
		wbuf_init(&b);
		msg_continue_req_encode(&b, &cq);
		CHECK(msg_continue_req_decode(b.data, b.len, &cd) != 0, "continue of no parent accepted");
		wbuf_free(&b);
		cq.parent = 1;
		cq.name_len = 0;
		wbuf_init(&b);
		msg_continue_req_encode(&b, &cq);
		CHECK(msg_continue_req_decode(b.data, b.len, &cd) != 0, "continue without a name accepted");
		wbuf_free(&b);
		CHECK(!strcmp(proto_op_name(OP_CONTINUE), "CONTINUE"), "CONTINUE has no name");
	}
	struct msg_tokens_req tq = { .ctx = 2, .salt = 99, .token_begin = 256, .n = 3, .ids = (const uint8_t *)ids }, td;
	wbuf_init(&b);
	msg_tokens_req_encode(&b, &tq);
	CHECK(msg_tokens_req_decode(b.data, b.len, &td) == 0 && td.ctx == 2 && td.salt == 99 && td.token_begin == 256 &&
	      td.n == 3 && !memcmp(td.ids, ids, 12), "tokens request");
	CHECK(msg_tokens_req_decode(b.data, b.len - 1, &td) != 0, "short tokens request accepted");
	b.data[28] = 1; /* reserved */
	CHECK(msg_tokens_req_decode(b.data, b.len, &td) != 0, "tokens request with reserved bits accepted");
	wbuf_free(&b);
	struct msg_lookup_req lq = { .salt = 3, .kind = PROTO_LOOKUP_HASHES, .n = 1, .data = (const uint8_t *)ids }, ld;
	wbuf_init(&b);
	msg_lookup_req_encode(&b, &lq);
	CHECK(msg_lookup_req_decode(b.data, b.len, &ld) == 0 && ld.kind == 1 && ld.n == 1 && b.len == 16 + 8,
	      "lookup request");
	b.data[8] = 2; /* kind */
	CHECK(msg_lookup_req_decode(b.data, b.len, &ld) != 0, "unknown lookup kind accepted");
	wbuf_free(&b);
	struct msg_index_rep r = { 1, 2, 3, 4 }, e;
	wbuf_init(&b);
	msg_index_rep_encode(&b, &r);
	CHECK(msg_index_rep_decode(b.data, b.len, &e) == 0 && e.built == 1 && e.loaded == 2 && e.present == 3 &&
	      e.build_ns == 4, "index reply");
	wbuf_free(&b);
}

static void test_attend(void)
{
	float q[3 * 4];
	for (int i = 0; i < 12; i++)
		q[i] = (float)i * 0.5f - 1.0f;
	struct msg_attend_req m = { .ctx = 3, .layer = 1, .policy = 0, .token_begin = 10,
				    .token_end = UINT64_MAX, .budget = 7, .sinks = 4, .window = 0x1234,
				    .q = (const uint8_t *)q, .q_len = sizeof(q) }, d;
	struct wbuf b;
	wbuf_init(&b);
	msg_attend_req_encode(&b, &m);
	CHECK(msg_attend_req_decode(b.data, b.len, &d) == 0, "decode");
	float back[12];
	proto_f32_from_wire(back, d.q, 12);
	CHECK(d.ctx == 3 && d.layer == 1 && d.token_begin == 10 && d.token_end == UINT64_MAX && d.budget == 7 &&
	      d.sinks == 4 && d.window == 0x1234 && d.q_len == sizeof(q) && !memcmp(back, q, sizeof(q)), "fields");
	/* the fixed part is 40 bytes; q must be a non-empty multiple of 4 */
	check_strict("attend", &b, (decode_fn)msg_attend_req_decode, &d, 41);
	CHECK(msg_attend_req_decode(b.data, 40, &d) != 0, "no queries accepted");
	CHECK(msg_attend_req_decode(b.data, 43, &d) != 0, "3 bytes of queries accepted");
	wbuf_free(&b);

	float o[12], lse[3] = { 1.5f, -INFINITY, 42.0f };
	for (int i = 0; i < 12; i++)
		o[i] = (float)i / 3.0f;
	struct msg_attend_rep r = { .n_q_heads = 3, .head_dim = 4, .scanned = 100, .loaded = 50,
				    .compute_ns = 12345, .o = o, .lse = lse }, rd;
	wbuf_init(&b);
	msg_attend_rep_encode(&b, &r);
	CHECK(msg_attend_rep_decode(b.data, b.len, &rd) == 0, "reply decode");
	float o2[12], l2[3];
	proto_f32_from_wire(o2, rd.o, 12);
	proto_f32_from_wire(l2, rd.lse, 3);
	CHECK(rd.scanned == 100 && rd.loaded == 50 && rd.compute_ns == 12345 &&
	      !memcmp(o2, o, sizeof(o)) && l2[0] == 1.5f && l2[1] == -INFINITY && l2[2] == 42.0f,
	      "reply fields");
	check_strict("attend-rep", &b, (decode_fn)msg_attend_rep_decode, &rd, -1);
	/* an n_q_heads over the limit must be refused before any size math */
	b.data[0] = 0xff;
	b.data[1] = 0xff;
	CHECK(msg_attend_rep_decode(b.data, b.len, &rd) != 0, "huge n_q_heads accepted");
	wbuf_free(&b);
}

static void test_fetch(void)
{
	uint64_t ids[5] = { 0, 1, 63, 64, 1u << 30 };
	struct msg_fetch_req m = { .ctx = 5, .layer = 7, .n_ids = 5, .dest = PROTO_SRC_INLINE,
				   .ids = (const uint8_t *)ids }, d;
	struct wbuf b;
	wbuf_init(&b);
	msg_fetch_req_encode(&b, &m);
	CHECK(msg_fetch_req_decode(b.data, b.len, &d) == 0 && d.n_ids == 5 &&
	      !memcmp(d.ids, ids, sizeof(ids)), "fetch round trip");
	check_strict("fetch", &b, (decode_fn)msg_fetch_req_decode, &d, -1);
	/* n_ids over the limit: refused without reading that many */
	uint32_t big = PROTO_MAX_FETCH_IDS + 1;
	memcpy(b.data + 12, &big, 4);
	CHECK(msg_fetch_req_decode(b.data, b.len, &d) == -EMSGSIZE, "too many ids");
	uint32_t zero = 0;
	memcpy(b.data + 12, &zero, 4);
	CHECK(msg_fetch_req_decode(b.data, b.len, &d) != 0, "zero ids");
	wbuf_free(&b);

	uint8_t data[40];
	memset(data, 0xab, sizeof(data));
	struct msg_fetch_rep r = { .n_ids = 5, .dest = PROTO_SRC_INLINE, .bytes = 40, .data = data }, rd;
	wbuf_init(&b);
	msg_fetch_rep_encode(&b, &r);
	CHECK(msg_fetch_rep_decode(b.data, b.len, &rd) == 0 && rd.bytes == 40 &&
	      !memcmp(rd.data, data, 40), "fetch reply");
	check_strict("fetch-rep", &b, (decode_fn)msg_fetch_rep_decode, &rd, -1);
	wbuf_free(&b);
}

static void test_small(void)
{
	struct wbuf b;
	struct proto_ctxref r = { .id = 0, .name = "abc", .name_len = 3 }, rd;
	wbuf_init(&b);
	msg_ctxref_encode(&b, &r);
	CHECK(msg_ctxref_decode(b.data, b.len, &rd) == 0 && rd.name_len == 3 &&
	      !memcmp(rd.name, "abc", 3), "ctxref");
	check_strict("ctxref", &b, (decode_fn)msg_ctxref_decode, &rd, -1);
	wbuf_free(&b);

	struct msg_hello_req h = { .proto = 1 }, hd;
	wbuf_init(&b);
	msg_hello_req_encode(&b, &h);
	CHECK(msg_hello_req_decode(b.data, b.len, &hd) == 0 && hd.proto == 1, "hello");
	check_strict("hello", &b, (decode_fn)msg_hello_req_decode, &hd, -1);
	wbuf_free(&b);

	struct msg_hello_rep hr = { .proto = 1, .block_tokens = 64, .max_frame = 1 << 26,
				    .workers = 2, .peer_uid = 1000, .host_budget = 1ull << 34,
				    .version = "0.1.0", .version_len = 5 }, hrd;
	wbuf_init(&b);
	msg_hello_rep_encode(&b, &hr);
	CHECK(msg_hello_rep_decode(b.data, b.len, &hrd) == 0 && hrd.host_budget == 1ull << 34 &&
	      hrd.peer_uid == 1000 && hrd.version_len == 5, "hello reply");
	check_strict("hello-rep", &b, (decode_fn)msg_hello_rep_decode, &hrd, -1);
	wbuf_free(&b);

	struct msg_list_req l = { .offset = 3, .max = 10 }, ld;
	wbuf_init(&b);
	msg_list_req_encode(&b, &l);
	CHECK(msg_list_req_decode(b.data, b.len, &ld) == 0 && ld.offset == 3 && ld.max == 10, "list");
	check_strict("list", &b, (decode_fn)msg_list_req_decode, &ld, -1);
	wbuf_free(&b);

	struct proto_ctx_record cr = { .id = 4, .name = "n", .name_len = 1,
				       .geom = { 1, 2, 4, 8, 1, 10000.f, 0 }, .state = 2,
				       .owner_uid = 1000, .tokens = 99, .bytes = 1234, .surprise_seen = 98,
				       .events = 7, .segmentation = PROTO_SEG_NOVELTY, .parent = 3,
				       .parent_tokens = 1ull << 35 }, crd;
	wbuf_init(&b);
	proto_ctx_record_encode(&b, &cr);
	struct rbuf rb;
	rbuf_init(&rb, b.data, b.len);
	CHECK(proto_ctx_record_read(&rb, &crd) == 0 && rbuf_end(&rb) == 0 && crd.tokens == 99 &&
	      crd.geom.head_dim == 8 && crd.owner_uid == 1000 && crd.surprise_seen == 98 && crd.events == 7 &&
	      crd.segmentation == PROTO_SEG_NOVELTY && crd.parent == 3 && crd.parent_tokens == 1ull << 35, "ctx record");
	rbuf_init(&rb, b.data, b.len);
	uint8_t *seg = b.data + b.len - 20;
	seg[0] = 3;
	CHECK(proto_ctx_record_read(&rb, &crd) != 0, "ctx record with an unknown segmentation accepted");
	seg[0] = PROTO_SEG_NOVELTY;
	rbuf_init(&rb, b.data, b.len - 1);
	CHECK(proto_ctx_record_read(&rb, &crd) != 0, "short ctx record accepted");
	wbuf_free(&b);

	struct proto_daemon_record dr = { .uptime_ms = 5, .connections = 2, .host_used = 7,
					  .policy_pin_ns = 11, .cpu_ns = 13, .kernels = "avx2", .kernels_len = 4 }, drd;
	wbuf_init(&b);
	proto_daemon_record_encode(&b, &dr);
	rbuf_init(&rb, b.data, b.len);
	CHECK(proto_daemon_record_read(&rb, &drd) == 0 && rbuf_end(&rb) == 0 && drd.host_used == 7 &&
	      drd.policy_pin_ns == 11 && drd.cpu_ns == 13 && drd.kernels_len == 4, "daemon record");
	wbuf_free(&b);

	wbuf_init(&b);
	msg_error_encode(&b, "no such context");
	const char *msg;
	uint16_t n;
	CHECK(msg_error_decode(b.data, b.len, &msg, &n) == 0 && n == 15 && !memcmp(msg, "no such context", 15),
	      "error payload");
	wbuf_free(&b);
	char longmsg[400];
	memset(longmsg, 'e', sizeof(longmsg) - 1);
	longmsg[sizeof(longmsg) - 1] = 0;
	wbuf_init(&b);
	msg_error_encode(&b, longmsg);
	CHECK(msg_error_decode(b.data, b.len, &msg, &n) == 0 && n == PROTO_MAX_ERRMSG, "error cut to 255");
	wbuf_free(&b);

	uint64_t v;
	wbuf_init(&b);
	msg_u64_encode(&b, 0xdeadbeefcafef00dull);
	CHECK(msg_u64_decode(b.data, b.len, &v) == 0 && v == 0xdeadbeefcafef00dull, "u64");
	check_strict("u64", &b, (decode_fn)msg_u64_decode, &v, -1);
	wbuf_free(&b);
}

static void test_arena(void)
{
	struct shm_arena a, peer;
	CHECK(shm_arena_create(1 << 20, &a) == 0, "arena create");
	CHECK(shm_arena_range_ok(&a, 0, 1 << 20), "whole arena");
	CHECK(shm_arena_range_ok(&a, (1 << 20) - 1, 1), "last byte");
	CHECK(!shm_arena_range_ok(&a, (1 << 20) - 1, 2), "past the end");
	CHECK(!shm_arena_range_ok(&a, 1 << 20, 1), "offset at the end");
	CHECK(!shm_arena_range_ok(&a, UINT64_MAX, 2), "offset overflow");
	CHECK(!shm_arena_range_ok(&a, 8, UINT64_MAX - 4), "length overflow");

	/* the daemon side sees the same bytes through its own mapping */
	int dupfd = dup(a.fd);
	CHECK(shm_arena_adopt(dupfd, 1 << 20, &peer) == 0, "adopt");
	a.base[12345] = 0x42;
	CHECK(peer.base[12345] == 0x42, "shared bytes");
	shm_arena_close(&peer);

	CHECK(shm_arena_adopt(dup(a.fd), 4096, &peer) == -EINVAL, "size mismatch accepted");
	/* a memfd without the shrink seal could be truncated under the daemon */
	int raw = memfd_create("unsealed", MFD_CLOEXEC);
	CHECK(raw >= 0 && ftruncate(raw, 4096) == 0, "memfd");
	CHECK(shm_arena_adopt(raw, 4096, &peer) == -EINVAL, "unsealed memfd accepted");
	shm_arena_close(&a);
	struct shm_arena z;
	CHECK(shm_arena_create(0, &z) == -EINVAL, "empty arena");
}

/* The transport alone, over a socketpair: bytes and an fd arrive together,
 * extra fds are closed, and EOF reads as 0. */
static void test_transport(void)
{
	int sv[2];
	CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
	struct shm_arena a;
	CHECK(shm_arena_create(8192, &a) == 0, "arena");
	a.base[100] = 0x77;
	CHECK(sock_send_all(sv[0], "hello", 5, a.fd) == 0, "send with fd");
	char buf[16];
	int fds[2], nfds = 0;
	ssize_t n = sock_recv_fds(sv[1], buf, sizeof(buf), fds, 2, &nfds);
	CHECK(n == 5 && !memcmp(buf, "hello", 5) && nfds == 1, "recv: %zd bytes, %d fds", n, nfds);
	if (nfds == 1) {
		struct shm_arena b;
		CHECK(shm_arena_adopt(fds[0], 8192, &b) == 0 && b.base[100] == 0x77, "the fd is the arena");
		shm_arena_close(&b);
	}
	/* three fds where two are taken: the third is closed, not leaked */
	int three[3] = { dup(a.fd), dup(a.fd), dup(a.fd) };
	union { struct cmsghdr h; char b[CMSG_SPACE(3 * sizeof(int))]; } ctl;
	memset(&ctl, 0, sizeof(ctl));
	struct iovec iov = { .iov_base = "x", .iov_len = 1 };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof(ctl.b) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(3 * sizeof(int));
	memcpy(CMSG_DATA(cm), three, sizeof(three));
	CHECK(sendmsg(sv[0], &mh, 0) == 1, "sendmsg 3 fds");
	for (int i = 0; i < 3; i++)
		close(three[i]);
	n = sock_recv_fds(sv[1], buf, sizeof(buf), fds, 2, &nfds);
	CHECK(n == 1 && nfds == 2, "two of three fds: %zd %d", n, nfds);
	for (int i = 0; i < nfds; i++)
		close(fds[i]);
	n = sock_recv_fds(sv[1], buf, sizeof(buf), fds, 2, &nfds);
	CHECK(n == -EAGAIN, "nothing more: %zd", n);
	close(sv[0]);
	n = sock_recv_fds(sv[1], buf, sizeof(buf), fds, 2, &nfds);
	CHECK(n == 0 && nfds == 0, "EOF");
	close(sv[1]);
	shm_arena_close(&a);
}

int main(void)
{
	test_transport();
	test_header();
	test_create();
	test_append();
	test_attend();
	test_index();
	test_fetch();
	test_small();
	test_arena();
	return check_exit();
}
