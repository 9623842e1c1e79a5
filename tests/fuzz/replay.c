/*
 * Runs a fuzz target without libFuzzer (gcc builds): on the files named on
 * the command line, or else on inputs made by mutating valid encodings of
 * every message (bit flips, truncations, length-field overwrites), a fixed
 * number of times from a printed seed.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../check.h"
#include "proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void seeds(struct wbuf *out, int which)
{
	uint8_t q[64] = { 0 };
	switch (which % 8) {
	case 0: msg_hello_req_encode(out, &(struct msg_hello_req){ 1, 0 }); break;
	case 1: msg_create_req_encode(out, &(struct msg_create_req){ "abc", 3, { 2, 2, 4, 8, 2, 1e4f, 0 } }); break;
	case 2: msg_append_req_encode(out, &(struct msg_append_req){ .ctx = 1, .layer_count = 1, .n_tokens = 1,
								     .data = q, .data_len = 64 }); break;
	case 3: msg_attend_req_encode(out, &(struct msg_attend_req){ .ctx = 1, .q = q, .q_len = 64 }); break;
	case 4: msg_fetch_req_encode(out, &(struct msg_fetch_req){ .ctx = 1, .n_ids = 2, .ids = q }); break;
	case 5: msg_ctxref_encode(out, &(struct proto_ctxref){ 0, "name", 4 }); break;
	case 6: msg_error_encode(out, "some error"); break;
	default: msg_list_req_encode(out, &(struct msg_list_req){ 0, 10 }); break;
	}
}

int main(int argc, char **argv)
{
	if (argc > 1) {
		for (int i = 1; i < argc; i++) {
			FILE *f = fopen(argv[i], "rb");
			if (!f)
				continue;
			static uint8_t buf[1 << 20];
			size_t n = fread(buf, 1, sizeof(buf), f);
			fclose(f);
			LLVMFuzzerTestOneInput(buf, n);
		}
		return 0;
	}
	uint64_t s = check_seed();
	const int runs = 200000;
	for (int i = 0; i < runs; i++) {
		struct wbuf b;
		wbuf_init(&b);
		wbuf_u32(&b, (uint32_t)(check_rand(&s) % 16));   /* decoder selector in byte 0 */
		b.len = 1;
		seeds(&b, (int)(check_rand(&s) % 8));
		int flips = (int)(check_rand(&s) % 4);
		for (int k = 0; k < flips && b.len > 1; k++)
			b.data[1 + check_rand(&s) % (b.len - 1)] ^= (uint8_t)(1u << (check_rand(&s) % 8));
		if (check_rand(&s) % 3 == 0 && b.len > 1)
			b.len = 1 + check_rand(&s) % (b.len - 1);
		if (check_rand(&s) % 5 == 0 && b.len > 5) {
			uint32_t big = (uint32_t)check_rand(&s);
			memcpy(b.data + 1 + check_rand(&s) % (b.len - 4), &big, 4);
		}
		LLVMFuzzerTestOneInput(b.data, b.len);
		wbuf_free(&b);
	}
	printf("%d inputs, no crash\n", runs);
	return 0;
}
