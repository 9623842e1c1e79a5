/*
 * Fuzz target for the safetensors reader: any bytes are either refused with
 * a message or give tensors that lie inside the buffer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
size_t fuzz_seed(unsigned i, uint8_t *buf, size_t cap);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct st_file *f;
	char err[256];
	if (st_open_mem(data, size, "fuzz", &f, err, sizeof(err)) != 0)
		return 0;
	for (size_t i = 0; i < st_tensor_count(f); i++) {
		const struct st_tensor *t = st_tensor_at(f, i);
		const uint8_t *b = t->data;
		if (b < data || t->nbytes > size || b + t->nbytes > data + size)
			abort();
		volatile uint8_t sink = 0;
		for (uint64_t k = 0; k < t->nbytes; k += 4096)
			sink ^= b[k];
		(void)sink;
	}
	for (size_t i = 0; i < st_meta_count(f); i++) {
		const char *k, *v;
		if (st_meta_at(f, i, &k, &v) == 0 && (!k || !v))
			abort();
	}
	st_close(f);
	return 0;
}

size_t fuzz_seed(unsigned i, uint8_t *buf, size_t cap)
{
	static const char *headers[] = {
		"{\"k\":{\"dtype\":\"BF16\",\"shape\":[2,4],\"data_offsets\":[0,16]},"
		"\"__metadata__\":{\"rope_theta\":\"10000\"}}",
		"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		"\"b\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
		"{}",
	};
	const char *h = headers[i % 3];
	size_t hl = strlen(h), data = i % 3 == 0 ? 16 : i % 3 == 1 ? 12 : 0;
	if (8 + hl + data > cap)
		return 0;
	uint64_t n = hl;
	for (int b = 0; b < 8; b++)
		buf[b] = (uint8_t)(n >> (8 * b));
	memcpy(buf + 8, h, hl);
	memset(buf + 8 + hl, 0x3f, data);
	return 8 + hl + data;
}
